"""Build the shipped summarization data set: Debian package descriptions and their synopses.

Each example is one Debian 12 (bookworm, main) package: its English long description (the
source text) and its one-line synopsis (the summary), both written by the package's maintainers.
Run on a Debian machine after `apt-get -o Acquire::Languages=en,de,fr update`:

    python scripts/build_debian_summaries_dataset.py \
        --out src/lmforge/resources/debian_summaries

The filters, the counts each one removes and the statistics of the result are printed; the
README of the data set records them.
"""

from __future__ import annotations

import argparse
import glob
import json
import random
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from build_debian_packages_dataset import HELPER_SUFFIXES, read_bookworm_lists

# A list item opens with one of these markers (the same markers the NER corpus script splits on).
BULLET = re.compile(r"^([*+•-]|o\s)\s*")
# Helper binaries sort after the main one when choosing which binary of a source to keep.
HELPERS = (*HELPER_SUFFIXES, "-prof")
SPLITS = ("validation", "test", "train")


def description_paragraphs(raw: str) -> list[str] | None:
    """Return the paragraphs and list items of a long description, the synopsis left out.

    Debian's format: continuation lines start with a space, a line holding only "." separates
    paragraphs, lines indented by two or more spaces are shown verbatim. List items (lines
    opening with a bullet) become paragraphs of their own, bullet removed, and indented lines
    that follow an item continue it. Any other verbatim line (code, tables, ASCII art) makes
    the description unusable as plain prose: None is returned.
    """
    paragraphs: list[str] = []
    current: list[str] = []
    in_item = False
    for line in raw.split("\n")[1:]:
        stripped = line.strip()
        if stripped == ".":
            paragraphs.append(" ".join(current))
            current, in_item = [], False
        elif BULLET.match(stripped):
            paragraphs.append(" ".join(current))
            current, in_item = [BULLET.sub("", stripped)], True
        elif line.startswith("  ") and not in_item:
            return None
        else:
            current.append(stripped)
    paragraphs.append(" ".join(current))
    cleaned = (re.sub(r"\s+", " ", p).strip() for p in paragraphs)
    return [p for p in cleaned if p]


def release_info() -> str:
    """Version and date of the bookworm release file the apt lists were checked against."""
    paths = glob.glob("/var/lib/apt/lists/*debian_dists_bookworm_InRelease")
    if not paths:
        return "unknown"
    fields = dict(
        line.split(": ", 1)
        for line in Path(paths[0]).read_text(encoding="utf-8").splitlines()
        if line.startswith(("Version: ", "Date: "))
    )
    return f"Debian {fields.get('Version', '?')}, release file dated {fields.get('Date', '?')}"


def binary_preference(name: str, source: str) -> tuple[bool, bool, int, str]:
    """Sort key: the binary named after its source first, helper packages last."""
    return (name != source, name.endswith(HELPERS), len(name), name)


def split_by_source(
    by_source: dict[str, list[dict[str, str]]], targets: dict[str, int], seed: int
) -> dict[str, list[dict[str, str]]]:
    """Deal whole source packages, in a seeded random order, to validation, test, then train.

    A split takes sources until it holds its target number of rows (the last source may take
    it a few rows over); no source package has rows in two splits.
    """
    order = sorted(by_source)
    random.Random(seed).shuffle(order)
    splits: dict[str, list[dict[str, str]]] = {split: [] for split in SPLITS}
    for source in order:
        split = next((s for s in SPLITS if len(splits[s]) < targets[s]), None)
        if split is None:
            break
        splits[split] += by_source[source]
    return splits


def words(text: str) -> list[str]:
    """Lower-cased word tokens, punctuation dropped (for the overlap statistics)."""
    return re.findall(r"\w+", text.lower())


def describe(values: list[int]) -> str:
    """Mean, median, 10th/90th percentile and range of a list of word counts."""
    deciles = statistics.quantiles(values, n=10)
    return (
        f"mean {statistics.mean(values):.1f}, median {statistics.median(values):g}, "
        f"p10 {deciles[0]:g}, p90 {deciles[-1]:g}, min {min(values)}, max {max(values)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--sizes", type=int, nargs=3, default=[2000, 250, 250], metavar=("TRAIN", "VAL", "TEST")
    )
    parser.add_argument("--min-words", type=int, default=25, help="long description, at least")
    parser.add_argument("--max-words", type=int, default=250, help="long description, at most")
    parser.add_argument("--min-synopsis", type=int, default=2)
    parser.add_argument("--max-synopsis", type=int, default=15)
    parser.add_argument("--per-source", type=int, default=1, help="binaries kept per source")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    targets = dict(zip(("train", "validation", "test"), args.sizes, strict=True))

    print(release_info())
    packages, translations = read_bookworm_lists()
    english = {t["Description-md5"]: t["Description-en"] for t in translations}
    counts: Counter[str] = Counter(packages=len(packages))

    candidates: list[dict[str, str]] = []
    for pkg in packages:
        md5 = pkg.get("Description-md5", "")
        if md5 not in english:
            counts["no English description"] += 1
            continue
        raw = english[md5]
        paragraphs = description_paragraphs(raw)
        synopsis = raw.split("\n", 1)[0].strip()
        if paragraphs is None:
            counts["verbatim text (code, tables)"] += 1
            continue
        description = "\n".join(paragraphs)
        n_words, n_synopsis = len(description.split()), len(synopsis.split())
        if n_words < args.min_words:
            counts[f"description under {args.min_words} words"] += 1
        elif n_words > args.max_words:
            counts[f"description over {args.max_words} words"] += 1
        elif n_synopsis < args.min_synopsis:
            counts[f"synopsis under {args.min_synopsis} words"] += 1
        elif n_synopsis > args.max_synopsis:
            counts[f"synopsis over {args.max_synopsis} words"] += 1
        else:
            source = pkg.get("Source", pkg["Package"]).split(" ")[0]
            candidates.append(
                {
                    "package": pkg["Package"],
                    "source": source,
                    "description": description,
                    "synopsis": synopsis,
                }
            )
    candidates.sort(key=lambda r: (r["source"], binary_preference(r["package"], r["source"])))

    # Identical descriptions are kept once; then at most --per-source binaries per source
    # package, since binaries of one source (-dev, -doc, plugins, language packs) mostly share
    # the same boilerplate text.
    seen: set[str] = set()
    by_source: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in candidates:
        if row["description"] in seen:
            counts["duplicate description"] += 1
            continue
        seen.add(row["description"])
        if len(by_source[row["source"]]) >= args.per_source:
            counts[f"over {args.per_source} per source package"] += 1
            continue
        by_source[row["source"]].append(row)
    for reason, n in counts.items():
        print(f"{reason}: {n}")
    print(f"kept: {sum(len(v) for v in by_source.values())} rows, {len(by_source)} sources")

    splits = split_by_source(by_source, targets, args.seed)

    args.out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation", "test"):
        rows = splits[split]
        with open(args.out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{split}: {len(rows)} rows, {len({r['source'] for r in rows})} sources")
    rows = [row for split in SPLITS for row in splits[split]]
    print("description words:", describe([len(r["description"].split()) for r in rows]))
    print("synopsis words:", describe([len(r["synopsis"].split()) for r in rows]))
    covered = [set(words(r["synopsis"])) <= set(words(r["description"])) for r in rows]
    share = [
        len(set(words(r["synopsis"])) & set(words(r["description"])))
        / max(1, len(set(words(r["synopsis"]))))
        for r in rows
    ]
    print(f"synopses whose words all occur in the description: {sum(covered) / len(rows):.1%}")
    print(f"mean share of synopsis words found in the description: {statistics.mean(share):.1%}")
    multi = sum("\n" in r["description"] for r in rows)
    print(f"descriptions with more than one paragraph or list item: {multi / len(rows):.1%}")


if __name__ == "__main__":
    main()
