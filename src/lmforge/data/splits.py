"""The data splits of a run and the stages that read them, named once.

A split is the data (`train`, `validation`, `test`); a stage is the loop reading it and the
prefix of its metric keys (`train/loss`, `val/acc`, `test/f1`).
"""

from __future__ import annotations

from typing import Literal

Stage = Literal["train", "val", "test"]
STAGES: tuple[Stage, ...] = ("train", "val", "test")
SPLITS = ("train", "validation", "test")
SPLIT_OF_STAGE: dict[str, str] = dict(zip(STAGES, SPLITS, strict=True))
STAGE_OF_SPLIT: dict[str, Stage] = dict(zip(SPLITS, STAGES, strict=True))
# The splits a run evaluates on (the before/after comparison, baselines), and their stages.
EVALUATED: dict[str, Stage] = {split: STAGE_OF_SPLIT[split] for split in SPLITS[1:]}
