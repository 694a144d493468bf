"""What one contender run is told (a JSON file written by compare.py) and what it reports back.

The raw loop and the HF Trainer script read the same `RunSpec`; lmforge gets the same values
as command-line overrides. Every timestamp is `time.time()` (seconds since the epoch), so the
parent can set them against the moment it started the process.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunSpec:
    """The settings every contender shares, plus where to write its result."""

    contender: str
    train_file: str
    validation_file: str
    test_file: str
    model_path: str
    max_length: int
    batch_size: int
    eval_batch_size: int
    lr: float
    weight_decay: float
    warmup_ratio: float
    # round(warmup_ratio * optimizer steps), as lmforge computes it; given to all contenders.
    warmup_steps: int
    gradient_clip: float
    epochs: int
    seed: int
    threads: int | None
    bf16: bool
    group_by_length: bool
    fused_adamw: bool
    run_dir: str
    result_file: str
    probe_file: str

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: str | Path) -> RunSpec:
        return cls(**json.loads(Path(path).read_text()))


@dataclass
class Marks:
    """Wall-clock marks of a run's phases (unix seconds), in the order they happen."""

    started: float = field(default_factory=time.time)
    imports_done: float | None = None
    data_ready: float | None = None
    model_ready: float | None = None
    train_done: float | None = None
    finished: float | None = None

    def mark(self, name: str) -> None:
        setattr(self, name, time.time())


def read_split(path: str) -> tuple[list[str], list[str]]:
    """Texts and labels of one prepared CSV (columns `text`, `label`)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [row["text"] for row in rows], [row["label"] for row in rows]


def write_result(spec: RunSpec, marks: Marks, **figures: Any) -> None:
    """The run's figures and phase marks, for compare.py."""
    marks.mark("finished")
    Path(spec.result_file).write_text(
        json.dumps({"marks": asdict(marks), **figures}, indent=2) + "\n"
    )


def set_threads(threads: int | None) -> None:
    """Use `threads` intra-op threads (the parent also sets OMP_NUM_THREADS to the same)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
