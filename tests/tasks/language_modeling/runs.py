"""A tiny capped run of a shipped causal-LM experiment, shared by the chat and preference tests."""

from __future__ import annotations

from pathlib import Path

from omegaconf import open_dict

from lmforge.train import train
from tests.conftest import TINY_GPT2, compose_config

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
