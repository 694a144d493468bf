"""Data checks before training: empty rows, label counts, truncation, overlap between splits.

Problems that make a run meaningless (no rows left, a bad label) raise `LmforgeError` where the
task datamodules find them; this module handles what is only worth a warning, and builds the
report (`TextDataModule.data_report`) that the log, `lmforge-check` and metrics.json show.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import datasets

from lmforge.errors import LmforgeError

log = logging.getLogger(__name__)

# Warn when more than this share of a split is cut at max_length: its labels may hinge on text
# the model never sees.
HEAVY_TRUNCATION = 0.2
# Rows and texts quoted in messages and the report; enough to find them, short enough to read.
SHOWN = 5
QUOTED_CHARS = 80


def row_numbers(indices: Sequence[int], limit: int = SHOWN) -> str:
    """0-based row indices as the 1-based numbers a user sees, the first `limit` of them."""
    shown = ", ".join(str(i + 1) for i in indices[:limit])
    return shown + (f" and {len(indices) - limit} more" if len(indices) > limit else "")


def drop_empty_rows(
    dataset: datasets.Dataset,
    empty: Sequence[int],
    *,
    split: str,
    source: str,
    what: str,
    drop: bool,
) -> tuple[datasets.Dataset, dict[str, Any]]:
    """Drop the rows at `empty` (0-based) and say which; fail when none would be left, or when
    `drop` (data.drop_empty) is off.

    Returns the kept rows and `{"count", "rows"}` (the first few 1-based row numbers).
    """
    record = {"count": len(empty), "rows": [i + 1 for i in empty[:SHOWN]]}
    if not empty:
        return dataset, record
    rows = f"row(s) {row_numbers(empty)} (1-based, a csv header line not counted)"
    if len(empty) == len(dataset):
        raise LmforgeError(
            f"The {split} split ({source}) has no usable rows: all {len(dataset)} have {what}. "
            "Expected at least one row with text; check the file and the configured column."
        )
    if not drop:
        raise LmforgeError(
            f"The {split} split ({source}) has {len(empty)} row(s) with {what}: {rows}. "
            "Expected text in every row; fill or remove them, or set data.drop_empty=true to "
            "drop them with a warning."
        )
    empty_set = set(empty)
    kept = dataset.select([i for i in range(len(dataset)) if i not in empty_set])
    record["what"] = what
    return kept, record


def normalise(text: str) -> str:
    """Text as the duplicate check compares it: runs of whitespace made one space, ends trimmed."""
    return " ".join(text.split())


def find_duplicates(train_texts: Sequence[str], other_texts: Sequence[str]) -> dict[str, Any]:
    """How many rows of another split also occur in training (after `normalise`), with the
    first few of them quoted."""
    seen = {normalise(t) for t in train_texts}
    repeated = [t for t in (normalise(t) for t in other_texts) if t in seen]
    return {"count": len(repeated), "examples": [_quote(t) for t in repeated[:SHOWN]]}


def _quote(text: str) -> str:
    return text if len(text) <= QUOTED_CHARS else text[: QUOTED_CHARS - 3] + "..."


def build_report(
    splits: Mapping[str, Mapping[str, Any]],
    texts: Mapping[str, Sequence[str]] | None,
    length_key: str,
    max_length: int,
) -> dict[str, Any]:
    """The data checks as a plain (JSON-ready) dict, with the warnings they call for.

    Args:
        splits: per split `source`, `rows` (after dropping), `examples` (model inputs, e.g. LM
            blocks), `truncated`, `dropped_empty` (from `drop_empty_rows`), `labels` (counts or
            None).
        texts: the normalisable text of every row per split (None: no duplicate check).
        length_key: the config key of the length limit (`data.max_length`, `data.block_size`).
        max_length: its value.
    """
    report: dict[str, Any] = {
        "splits": {},
        "duplicates_with_train": {},
        "length_limit": {"key": length_key, "value": max_length},
        # What a family adds about its data beyond the shared checks (e.g. windows per
        # question): lines for the log and lmforge-check, not problems.
        "notes": [],
        "warnings": [],
    }
    warnings = report["warnings"]
    for split, info in splits.items():
        entry = dict(info)
        entry["truncated_share"] = round(info["truncated"] / max(info["examples"], 1), 4)
        report["splits"][split] = entry
        dropped = info["dropped_empty"]
        if dropped["count"]:
            warnings.append(
                f"{split}: dropped {dropped['count']} row(s) with {dropped['what']} "
                f"(row(s) {', '.join(map(str, dropped['rows']))}"
                f"{' ...' if dropped['count'] > len(dropped['rows']) else ''}; "
                f"{info['source']}); set data.drop_empty=false to fail on them instead."
            )
        if entry["truncated_share"] > HEAVY_TRUNCATION:
            warnings.append(
                f"{split}: {100 * entry['truncated_share']:.1f}% of the examples "
                f"({info['truncated']} of {info['examples']}) are longer than "
                f"{length_key}={max_length} tokens and were truncated; raise {length_key} if "
                "their ends matter (memory and time grow with it)."
            )
    trained = (splits.get("train") or {}).get("labels") or {}
    for split, info in splits.items():
        if split == "train" or not trained or not info.get("labels"):
            continue
        absent = [label for label, n in trained.items() if n and not info["labels"].get(label)]
        if absent:
            shown = ", ".join(f"{label!r} ({trained[label]} in train)" for label in absent[:10])
            warnings.append(
                f"{split}: no example of {len(absent)} label(s) that train has: {shown}"
                f"{' ...' if len(absent) > 10 else ''}; {split} scores say nothing about them. "
                "A label only in training (e.g. a class folder the other splits lack) may be "
                "one to leave out (data.folder_classes for folders)."
            )
    if texts is not None and "train" in texts:
        for split in (s for s in texts if s != "train"):
            found = find_duplicates(texts["train"], texts[split])
            report["duplicates_with_train"][split] = found
            if found["count"]:
                warnings.append(
                    f"{split}: {found['count']} of {len(texts[split])} examples also occur in "
                    f"train (same text after whitespace normalisation), e.g. "
                    f"{found['examples'][0]!r}; {split} scores will be optimistic. Remove them "
                    "from one of the files."
                )
    return report


def log_report(report: Mapping[str, Any]) -> None:
    """One info line per split, then each warning: the data checks in the run's log."""
    limit = report["length_limit"]
    for split, info in report["splits"].items():
        used = info.get("used", info["examples"])
        capped = f", {used} used (capped)" if used != info["examples"] else ""
        examples = f", {info['examples']} examples" if info["examples"] != info["rows"] else ""
        duplicates = report["duplicates_with_train"].get(split)
        log.info(
            "Data %s: %d rows%s%s from %s; %.1f%% truncated at %s=%d; %d dropped empty%s%s",
            split,
            info["rows"],
            examples,
            capped,
            info["source"],
            100 * info["truncated_share"],
            limit["key"],
            limit["value"],
            info["dropped_empty"]["count"],
            f"; {duplicates['count']} also in train" if duplicates else "",
            f"; labels {info['labels']}" if info.get("labels") else "",
        )
    for note in report.get("notes", []):
        log.info("Data %s", note)
    for warning in report["warnings"]:
        log.warning("Data check: %s", warning)
