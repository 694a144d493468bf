"""Build the shipped translation data set: English -> German Debian package descriptions.

Pairs come from Debian 12 (bookworm, main): the English descriptions (Translation-en) and their
translations by the Debian Description Translation Project (Translation-de), joined on
Description-md5. Each package gives its synopsis pair and, where both long descriptions are a
single sentence, that sentence pair. Run on a Debian machine after
`apt-get -o Acquire::Languages=en,de,fr update`:

    python scripts/build_debian_translations_dataset.py \
        --out src/lmforge/resources/debian_translations

`--lang fr` builds English -> French pairs the same way (not shipped).
"""

from __future__ import annotations

import argparse
import glob
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

from build_debian_packages_dataset import read_bookworm_lists, read_stanzas
from build_debian_summaries_dataset import (
    BULLET,
    binary_preference,
    description_paragraphs,
    release_info,
    split_by_source,
)


def read_translation(lang: str) -> list[dict[str, str]]:
    """The Translation-<lang> index of bookworm main."""
    paths = glob.glob(f"/var/lib/apt/lists/*debian_dists_bookworm_main_i18n_Translation-{lang}*")
    if not paths:
        raise SystemExit(f"Run `apt-get -o Acquire::Languages=en,{lang} update` first.")
    return read_stanzas(paths[0])


def one_sentence(raw: str) -> str | None:
    """The long description when it is one paragraph holding one sentence, else None."""
    paragraphs = description_paragraphs(raw)
    if not paragraphs or len(paragraphs) != 1:
        return None
    if any(BULLET.match(line.strip()) for line in raw.split("\n")[1:]):
        return None
    text = paragraphs[0]
    # One sentence: ends like one, and no sentence-like break (". ", "; ", ": ") inside.
    if not text.endswith((".", "!", "?")) or re.search(r"[.!?:;]\s", text[:-1]):
        return None
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lang", default="de", help="target language of the DDTP translation")
    parser.add_argument(
        "--sizes", type=int, nargs=3, default=[6000, 500, 500], metavar=("TRAIN", "VAL", "TEST")
    )
    parser.add_argument("--max-words", type=int, default=40, help="per side")
    parser.add_argument("--per-source", type=int, default=5, help="pairs kept per source")
    parser.add_argument("--synopses-only", action="store_true", help="no long-description pairs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    targets = dict(zip(("train", "validation", "test"), args.sizes, strict=True))
    lang = args.lang

    print(release_info())
    packages, translations = read_bookworm_lists()
    english = {t["Description-md5"]: t["Description-en"] for t in translations}
    source_by_md5: dict[str, str] = {}
    for pkg in sorted(packages, key=lambda p: p["Package"]):
        if "Description-md5" in pkg:
            source = pkg.get("Source", pkg["Package"]).split(" ")[0]
            source_by_md5.setdefault(pkg["Description-md5"], source)

    counts: Counter[str] = Counter()
    entries: list[tuple[str, str, str, str]] = []
    for entry in read_translation(lang):
        counts[f"Translation-{lang} entries"] += 1
        md5 = entry.get("Description-md5", "")
        if md5 not in english:
            counts["English description missing"] += 1
        elif md5 not in source_by_md5:
            counts["not in the amd64 package index"] += 1
        elif f"Description-{lang}" in entry:
            entries.append(
                (source_by_md5[md5], entry["Package"], md5, entry[f"Description-{lang}"])
            )
    entries.sort(key=lambda e: (e[0], binary_preference(e[1], e[0]), e[2]))

    seen: set[str] = set()
    by_source: dict[str, list[dict[str, str]]] = defaultdict(list)
    for source, _, md5, target_raw in entries:
        source_raw = english[md5]
        pairs = [("synopsis", source_raw.split("\n", 1)[0], target_raw.split("\n", 1)[0])]
        if not args.synopses_only:
            en_sentence, target_sentence = one_sentence(source_raw), one_sentence(target_raw)
            if en_sentence and target_sentence:
                pairs.append(("sentence", en_sentence, target_sentence))
        for kind, en, target in pairs:
            en, target = en.strip(), target.strip()
            if not en or not target:
                counts[f"{kind}: empty side"] += 1
            elif en == target:
                counts[f"{kind}: {lang} equals en"] += 1
            elif max(len(en.split()), len(target.split())) > args.max_words:
                counts[f"{kind}: over {args.max_words} words"] += 1
            elif en in seen:
                counts[f"{kind}: English side seen before"] += 1
            elif len(by_source[source]) >= args.per_source:
                counts[f"{kind}: over {args.per_source} per source package"] += 1
            else:
                seen.add(en)
                by_source[source].append({"kind": kind, "en": en, lang: target})
    for reason, n in counts.items():
        print(f"{reason}: {n}")
    kept = [row for rows in by_source.values() for row in rows]
    kinds = Counter(row["kind"] for row in kept)
    print(f"kept: {len(kept)} pairs {dict(kinds)}, {len(by_source)} sources")

    splits = split_by_source(by_source, targets, args.seed)

    args.out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation", "test"):
        rows = splits[split]
        with open(args.out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                pair = {"en": row["en"], lang: row[lang]}
                f.write(json.dumps({"translation": pair}, ensure_ascii=False) + "\n")
        n_words = [len(row["en"].split()) for row in rows]
        t_words = [len(row[lang].split()) for row in rows]
        numbers = sum(
            sorted(re.findall(r"\d+", row["en"])) != sorted(re.findall(r"\d+", row[lang]))
            for row in rows
        )
        print(
            f"{split}: {len(rows)} pairs {dict(Counter(row['kind'] for row in rows))}, "
            f"en {sum(n_words)} words (mean {sum(n_words) / len(rows):.1f}), "
            f"{lang} {sum(t_words)} words (mean {sum(t_words) / len(rows):.1f}), "
            f"numbers differ in {numbers}"
        )


if __name__ == "__main__":
    main()
