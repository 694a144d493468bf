"""Build the shipped multiple-choice data set: which one-line summary matches this Debian
package's description?

Reads lmforge's shipped summarization data (`src/lmforge/resources/debian_summaries/`: each
package's long description and its one-line synopsis, both written by Debian maintainers) and
the archive section of each package from Debian 12's package index, then writes one question
per package, keeping that data set's train/validation/test split:

    sudo apt-get update        # bookworm main in the apt sources
    python scripts/build_debian_multiple_choice_dataset.py \
        --out src/lmforge/resources/debian_multiple_choice

Rules (deterministic: the same input gives byte-identical files):
- The question is the package's long description (`question`); the right choice is its synopsis.
- Each row has 3, 4 or 5 choices (drawn per row with the seed), so the number of choices
  varies. The wrong choices are synopses of other packages of the same split and the same
  archive section; where the section has too few, packages of any section fill up. Among those,
  the synopses sharing the most words with the description are taken (ties in a seeded order):
  adversarial to the word-overlap baseline, which picks the right synopsis of a randomly drawn
  set 93% of the time. No choice repeats another's text (compared lower-cased).
- The right choice's position is drawn uniformly per row; `label` is its 0-based index.
"""

from __future__ import annotations

import argparse
import glob
import json
import random
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

from lmforge.tasks.multiple_choice.baselines import overlap_credit, words

SPLITS = ("train", "validation", "test")
CHOICE_COUNTS = (3, 4, 5)
SOURCE = Path(__file__).resolve().parents[1] / "src/lmforge/resources/debian_summaries"


def sections_by_package() -> dict[str, str]:
    """Package name -> archive section (without its component) from the bookworm main index."""
    found = glob.glob("/var/lib/apt/lists/*debian_dists_bookworm_main_binary-amd64_Packages*")
    if not found:
        raise SystemExit(
            "No bookworm main package index in /var/lib/apt/lists: run apt-get update."
        )
    text = subprocess.run(
        ["/usr/lib/apt/apt-helper", "cat-file", found[0]],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    sections = {}
    for block in text.split("\n\n"):
        fields = dict(
            line.split(":", 1) for line in block.splitlines() if ":" in line and line[:1] != " "
        )
        if "Package" in fields:
            sections[fields["Package"].strip()] = fields.get("Section", "").strip().split("/")[-1]
    return sections


def build_split(
    rows: list[dict], sections: dict[str, str], rng: random.Random, counted: list[int]
) -> list[dict]:
    """The questions of one split; `counted[0]` grows by the distractors from the same
    section."""
    by_section: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        by_section[sections.get(row["package"], "unknown")].append(index)
    synopsis_words = [words(row["synopsis"]) for row in rows]
    out = []
    same_section = counted  # distractors drawn from the package's own section (a running sum)
    for index, row in enumerate(rows):
        section = sections.get(row["package"], "unknown")
        wanted = rng.choice(CHOICE_COUNTS) - 1
        seen = {row["synopsis"].strip().lower()}
        wrong: list[str] = []
        asked = words(row["description"])
        for pool in (by_section[section], range(len(rows))):
            if pool is not by_section[section]:
                same_section[0] += len(wrong[:wanted])
            candidates = [i for i in pool if i != index]
            rng.shuffle(candidates)  # ties in overlap fall in a seeded order
            candidates.sort(key=lambda i: -len(asked & synopsis_words[i]))
            for other in candidates:
                text = rows[other]["synopsis"].strip()
                if len(wrong) < wanted and text.lower() not in seen:
                    wrong.append(text)
                    seen.add(text.lower())
        label = rng.randrange(wanted + 1)
        choices = [*wrong[:label], row["synopsis"].strip(), *wrong[label:]]
        out.append(
            {
                "package": row["package"],
                "section": section,
                "question": row["description"],
                "choices": choices,
                "label": label,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sections = sections_by_package()
    args.out.mkdir(parents=True, exist_ok=True)
    for number, split in enumerate(SPLITS):
        with open(args.source / f"{split}.jsonl", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        from_section = [0]
        built = build_split(rows, sections, random.Random(args.seed * 10 + number), from_section)
        with open(args.out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in built:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        counts = Counter(len(r["choices"]) for r in built)
        positions = Counter(r["label"] for r in built)
        wrong = sum(len(r["choices"]) - 1 for r in built)
        chance = sum(1 / len(r["choices"]) for r in built) / len(built)
        overlap = sum(overlap_credit(r["question"], r["choices"], r["label"]) for r in built) / len(
            built
        )
        print(
            f"{split}: {len(built)} rows; choices {dict(sorted(counts.items()))}; answer "
            f"positions {dict(sorted(positions.items()))}; chance accuracy {chance:.3f}; "
            f"word-overlap accuracy {overlap:.3f}; "
            f"wrong choices from the same section {from_section[0]} of {wrong}; "
            f"sections {len({r['section'] for r in built})}"
        )


if __name__ == "__main__":
    main()
