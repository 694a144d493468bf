"""Shared by the chat, answer-score and preference tests: data files, a datamodule over one
file, and a tiny capped run of a shipped causal-LM experiment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import open_dict

from lmforge.config.resources import embedded_model_path
from lmforge.train import train
from tests.helpers import TINY_GPT2, compose_config

# A 2-layer GPT-2, short sequences, a few examples, one quiet float32 epoch.
TINY_LM_RUN = [
    *TINY_GPT2,
    "data.max_length=64",
    "data.max_eval_samples=16",
    "data.max_test_samples=16",
    "trainer.max_epochs=1",
    "trainer.precision=32-true",
    "trainer.enable_progress_bar=false",
    "callbacks.rich_progress_bar=null",
    "logger=csv",
]


def tiny_run(root: Path, experiment: str, *overrides: str) -> Path:
    """Train `experiment` capped into `root`; return its run directory."""
    cfg = compose_config([f"experiment={experiment}", *TINY_LM_RUN, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "run")
        cfg.paths.cache_dir = str(root / "cache")
    train(cfg)
    return root / "run"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def one_file_datamodule(datamodule_class: Any, tmp_path: Path, rows: list[dict], **options) -> Any:
    """A datamodule whose three splits are `rows` (the embedded tokenizer unless `options`
    name another), set up."""
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    datamodule = datamodule_class(
        train_file=str(path),
        validation_file=str(path),
        test_file=str(path),
        cache_dir=str(tmp_path / "cache"),
        **{"tokenizer": embedded_model_path(), **options},
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule
