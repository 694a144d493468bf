"""Build the shipped language-modelling corpus: English Debian package descriptions.

One description per line (synopsis and long description joined), one package per source
package, from every section of Debian 12 "bookworm" main. Run on a Debian machine after
`apt-get -o Acquire::Languages=en update`:

    python scripts/build_debian_descriptions_corpus.py \
        --out src/lmforge/resources/debian_descriptions
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from build_debian_packages_dataset import HELPER_SUFFIXES, clean_description, read_bookworm_lists


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--documents", type=int, default=6000, help="how many descriptions")
    parser.add_argument("--min-words", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    packages, translations = read_bookworm_lists()
    long_by_md5 = {t["Description-md5"]: t["Description-en"] for t in translations}

    by_source: dict[str, str] = {}
    for pkg in sorted(packages, key=lambda p: p["Package"]):
        name = pkg["Package"]
        if name.startswith("lib") or name.endswith(HELPER_SUFFIXES):
            continue
        source = pkg.get("Source", name).split(" ")[0]
        md5 = pkg.get("Description-md5")
        if source in by_source or md5 not in long_by_md5:
            continue
        text = clean_description(long_by_md5[md5])
        if len(text.split()) >= args.min_words:
            by_source[source] = text

    documents = sorted(set(by_source.values()))
    random.Random(args.seed).shuffle(documents)
    documents = documents[: args.documents]
    n_eval = len(documents) // 20
    splits = {
        "validation": documents[:n_eval],
        "test": documents[n_eval : 2 * n_eval],
        "train": documents[2 * n_eval :],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for split, docs in splits.items():
        (args.out / f"{split}.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
        words = sum(len(d.split()) for d in docs)
        print(f"{split}: {len(docs)} documents, {words} words")


if __name__ == "__main__":
    main()
