"""Build the shipped topic-classification data set from Debian's package descriptions.

Each example is one Debian package (bookworm, main): its text is the package's English
description (synopsis and long description, written by its maintainers), its label the archive
section the package is filed under. Run on a Debian machine after
`apt-get -o Acquire::Languages=en update`:

    python scripts/build_debian_packages_dataset.py --out src/lmforge/resources/debian_packages

Packages of one source package share wording, so only one binary per source is kept; helper
packages (-dev, -doc, -data, ...) and libraries are left out because their text names the
parent program rather than describing a topic.
"""

from __future__ import annotations

import argparse
import csv
import glob
import random
import re
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

SECTIONS = [
    "games",
    "sound",
    "video",
    "graphics",
    "science",
    "math",
    "mail",
    "database",
    "electronics",
    "hamradio",
    "editors",
    "vcs",
]
HELPER_SUFFIXES = (
    "-dev",
    "-doc",
    "-dbg",
    "-dbgsym",
    "-data",
    "-common",
    "-l10n",
    "-examples",
    "-tests",
    "-plugins",
    "-dbgsym",
    "-locales",
    "-i18n",
)


def read_stanzas(path: str) -> list[dict[str, str]]:
    """Parse an apt list file (lz4 or plain) into a list of field dicts."""
    text = subprocess.run(
        ["/usr/lib/apt/apt-helper", "cat-file", path], check=True, capture_output=True, text=True
    ).stdout
    stanzas = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and key:
                fields[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            stanzas.append(fields)
    return stanzas


def read_bookworm_lists() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The package index and the English translation index of Debian 12 main (amd64)."""
    lists = "/var/lib/apt/lists/"
    packages = glob.glob(lists + "*debian_dists_bookworm_main_binary-amd64_Packages*")
    translations = glob.glob(lists + "*debian_dists_bookworm_main_i18n_Translation-en*")
    if not packages or not translations:
        raise SystemExit("Run `apt-get -o Acquire::Languages=en update` on Debian 12 first.")
    return read_stanzas(packages[0]), read_stanzas(translations[0])


def clean_description(raw: str) -> str:
    """Join the synopsis and the long description into one paragraph of plain text."""
    synopsis, _, body = raw.partition("\n")
    lines = []
    for line in body.splitlines():
        line = line.strip()
        if line == ".":
            continue
        lines.append(line)
    long_text = re.sub(r"\s+", " ", " ".join(lines)).strip()
    synopsis = synopsis.strip()
    return f"{synopsis[:1].upper()}{synopsis[1:]}. {long_text}".strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-class", type=int, default=300, help="cap per section")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    packages, translations = read_bookworm_lists()
    long_by_md5 = {t["Description-md5"]: t["Description-en"] for t in translations}

    by_source: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for pkg in packages:
        section = pkg.get("Section", "").split("/")[-1]
        name = pkg["Package"]
        if section not in SECTIONS or name.startswith("lib") or name.endswith(HELPER_SUFFIXES):
            continue
        md5 = pkg.get("Description-md5")
        if md5 not in long_by_md5:
            continue
        source = pkg.get("Source", name).split(" ")[0]
        by_source[(section, source)].append({"name": name, "text": long_by_md5[md5]})

    rows, seen = [], set()
    for (section, source), binaries in sorted(by_source.items()):
        # Prefer the binary named after its source package: it describes the program itself.
        binaries.sort(key=lambda b: (b["name"] != source, len(b["name"]), b["name"]))
        text = clean_description(binaries[0]["text"])
        if len(text.split()) < 12 or text in seen:
            continue
        seen.add(text)
        rows.append({"package": binaries[0]["name"], "text": text, "label": section})

    rng = random.Random(args.seed)
    rng.shuffle(rows)
    per_class: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        if len(per_class[row["label"]]) < args.per_class:
            per_class[row["label"]].append(row)
    print({k: len(v) for k, v in per_class.items()})

    # Stratified 70/10/20 split so every section appears in each split in proportion.
    splits: dict[str, list[dict[str, str]]] = {"train": [], "validation": [], "test": []}
    for label in sorted(per_class):
        items = per_class[label]
        n_val, n_test = round(0.1 * len(items)), round(0.2 * len(items))
        splits["validation"] += items[:n_val]
        splits["test"] += items[n_val : n_val + n_test]
        splits["train"] += items[n_val + n_test :]
    args.out.mkdir(parents=True, exist_ok=True)
    for split, items in splits.items():
        rng.shuffle(items)
        with open(args.out / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["package", "text", "label"])
            writer.writeheader()
            writer.writerows(items)
        print(split, len(items), Counter(i["label"] for i in items).most_common())


if __name__ == "__main__":
    main()
