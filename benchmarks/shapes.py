"""The benchmark's two data shapes, built from the Debian package topics lmforge ships.

- `long`: every example is longer than `max_length` tokens, so each is truncated to exactly
  `max_length` and padding plays no role: the comparison measures framework overhead only. An
  example joins consecutive descriptions of one label (in file order) until it passes
  `max_length` tokens; a label's leftover that never gets there is dropped.
- `short`: texts of varied length, where padding matters: the synopsis of a description plus
  0 to 3 of its next sentences (drawn with a fixed seed), cut back by sentences (a run-on
  synopsis: by tokens) to fit in `max_length` tokens, so no short text is truncated.

Both are deterministic (they depend on the shipped files, the tokenizer and `max_length` only,
never on a contender's seed), shuffled with a fixed seed so that a `--limit-*` prefix mixes the
labels, and written as CSV (`text`, `label`) that every contender reads.
"""

from __future__ import annotations

import csv
import json
import random
import re
import statistics
from pathlib import Path

SHAPES = ("long", "short")
SPLITS = ("train", "validation", "test")
# Fixed: the data must not change with the contenders' seeds.
DATA_SEED = 0
MAX_EXTRA_SENTENCES = 3
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


def _read_rows(split: str) -> list[dict[str, str]]:
    from lmforge.config.resources import shipped_data

    with open(shipped_data(f"debian_packages/{split}.csv"), newline="") as handle:
        return [{"text": row["text"], "label": row["label"]} for row in csv.DictReader(handle)]


def _token_counts(tokenizer, texts: list[str]) -> list[int]:
    """Tokens per text without the special tokens ([CLS], [SEP]) the model adds."""
    if not texts:
        return []
    encoded = tokenizer(texts, add_special_tokens=False, truncation=False)
    return [len(ids) for ids in encoded["input_ids"]]


def _long_rows(rows: list[dict[str, str]], tokenizer, max_length: int) -> list[dict[str, str]]:
    counts = _token_counts(tokenizer, [row["text"] for row in rows])
    open_parts: dict[str, tuple[list[str], int]] = {}
    joined = []
    for row, count in zip(rows, counts, strict=True):
        parts, total = open_parts.get(row["label"], ([], 0))
        parts, total = [*parts, row["text"]], total + count
        if total > max_length:
            joined.append({"text": " ".join(parts), "label": row["label"]})
            parts, total = [], 0
        open_parts[row["label"]] = (parts, total)
    return joined


def _short_rows(rows: list[dict[str, str]], tokenizer, max_length: int) -> list[dict[str, str]]:
    generator = random.Random(DATA_SEED)
    # Room for [CLS] and [SEP], so no short text is truncated.
    room = max_length - 2
    shortened = []
    for row in rows:
        sentences = SENTENCE_END.split(row["text"].strip())
        keep = 1 + generator.randint(0, MAX_EXTRA_SENTENCES)
        text = " ".join(sentences[:keep])
        while keep > 1 and _token_counts(tokenizer, [text])[0] > room:
            keep -= 1
            text = " ".join(sentences[:keep])
        if _token_counts(tokenizer, [text])[0] > room:
            # One run-on "sentence": cut it at the end of its last token that fits.
            offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)[
                "offset_mapping"
            ]
            text = text[: offsets[room - 1][1]]
        shortened.append({"text": text, "label": row["label"]})
    return shortened


def _length_summary(tokenizer, rows: list[dict[str, str]]) -> dict[str, float]:
    counts = _token_counts(tokenizer, [row["text"] for row in rows])
    if not counts:
        return {"rows": 0}
    return {
        "rows": len(rows),
        "tokens_min": min(counts),
        "tokens_median": statistics.median(counts),
        "tokens_mean": round(statistics.mean(counts), 1),
        "tokens_max": max(counts),
    }


def prepare_shape(
    shape: str,
    max_length: int,
    out_dir: Path,
    limits: dict[str, int | None],
) -> dict[str, object]:
    """Write `<out_dir>/<shape>-<max_length>[-limits]/{train,validation,test}.csv`.

    Returns the file paths and the token-length summary of each split (also written as
    `stats.json` beside the files). Files already there are rebuilt: building takes seconds.
    """
    import transformers
    from transformers import AutoTokenizer

    from lmforge.config.resources import embedded_model_path

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path())
    transformers.logging.set_verbosity_error()  # "sequence longer than the model" is expected
    suffix = "".join(f"-{split}{limits[split]}" for split in SPLITS if limits.get(split))
    folder = out_dir / f"{shape}-{max_length}{suffix}"
    folder.mkdir(parents=True, exist_ok=True)
    build = _long_rows if shape == "long" else _short_rows
    files, stats = {}, {}
    train_labels: set[str] = set()
    for split in SPLITS:  # train first: a capped train split decides the labels
        rows = build(_read_rows(split), tokenizer, max_length)
        random.Random(DATA_SEED).shuffle(rows)
        if split != "train" and limits.get("train"):
            # Every contender refuses (or cannot score) labels that training never saw.
            rows = [row for row in rows if row["label"] in train_labels]
        if limits.get(split):
            rows = rows[: limits[split]]
        if split == "train":
            train_labels = {row["label"] for row in rows}
        path = folder / f"{split}.csv"
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(rows)
        files[split] = str(path.resolve())
        stats[split] = _length_summary(tokenizer, rows)
    (folder / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return {"shape": shape, "max_length": max_length, "files": files, "stats": stats}
