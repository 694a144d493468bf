"""`lmforge-check`: validate the config and the data as `lmforge-train` would, without training.

It composes conf/train.yaml exactly like `lmforge-train` (every override works), runs the data
preparation and checks (the tokenizer loads, for truncation; no model weights do), prints a
summary and exits 0 when the data is usable, 1 with the error otherwise. Its log lands in
`outputs/check/runs/<time>/` (task_name=check); the tokenized data is cached as a training run
would cache it, so the next `lmforge-train` on the same data starts from the cache.

This module imports no torch, transformers or lightning at import time, so `--help` is fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import hydra
from omegaconf import DictConfig

from lmforge.cli import check_arguments, user_errors
from lmforge.config.resources import config_dir
from lmforge.config.validation import validate_training_config

SPLIT_ORDER = ("train", "validation", "test")


def check_data(cfg: DictConfig) -> dict[str, Any]:
    """Build the configured datamodule, prepare and check its data; return its data report."""
    from lmforge.data.datamodule import prepare_datamodule

    return prepare_datamodule(cfg.data).data_report


def print_summary(report: Mapping[str, Any]) -> None:
    """The data report as tables: one row per split, then the label (or tag) counts."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 100))
    splits = {s: report["splits"][s] for s in SPLIT_ORDER if s in report["splits"]}
    limit = report["length_limit"]
    table = Table(title="Data check", title_justify="left")
    columns = ("split", "rows", "examples", "used", "dropped empty", "truncated", "also in train")
    for column in columns:
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, info in splits.items():
        duplicates = report["duplicates_with_train"].get(split)
        table.add_row(
            split,
            str(info["rows"]),
            str(info["examples"]),
            str(info.get("used", info["examples"])),
            str(info["dropped_empty"]["count"]),
            f"{100 * info['truncated_share']:.1f}%",
            str(duplicates["count"]) if duplicates else "-",
        )
    console.print(table)
    console.print(
        f"examples: model inputs (language modelling: blocks); used: after the max_*_samples "
        f"caps; truncated: examples cut at {limit['key']}={limit['value']} tokens",
        highlight=False,
    )
    for split, info in splits.items():
        console.print(f"{split}: {info['source']}", soft_wrap=True, highlight=False)
    if any(info.get("labels") for info in splits.values()):
        console.print("Labels per split (examples per label; words per tag for NER):")
        labels = Table()
        labels.add_column("label")
        for split in splits:
            labels.add_column(split, justify="right")
        names = next(info["labels"] for info in splits.values() if info.get("labels"))
        for name in names:
            counts = [str((info.get("labels") or {}).get(name, 0)) for info in splits.values()]
            labels.add_row(name, *counts)
        console.print(labels)
    for note in report.get("notes", []):
        console.print(note, soft_wrap=True, highlight=False)
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True, highlight=False)
    console.print(f"The data is usable ({len(report['warnings'])} warning(s)).", highlight=False)


def run_check(cfg: DictConfig) -> None:
    """The body of `lmforge-check`."""
    with user_errors():
        validate_training_config(cfg)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        print_summary(check_data(cfg))


def main() -> None:
    """`lmforge-check`: the data checks of conf/train.yaml, without training."""
    # Its run directory and log go under outputs/check/, apart from training runs.
    if not any(arg.startswith("task_name=") for arg in sys.argv[1:]):
        sys.argv.insert(1, "task_name=check")
    check_arguments("train")
    hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")(run_check)()
