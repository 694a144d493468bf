"""Callbacks that every lmforge run gets: exact resumption and throughput measurement."""

from __future__ import annotations

import random
import time
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch


class RandomState(pl.Callback):
    """Saves the random generators' states in checkpoints and restores them on resume.

    Dropout draws from the global generators; restoring them makes a resumed run continue
    with exactly the random numbers the uninterrupted run would have used.
    """

    def state_dict(self) -> dict[str, Any]:
        # Only tensors and plain Python values, so checkpoints load with weights_only=True.
        _, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), cached],
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(state_dict["python"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class TrainThroughput(pl.Callback):
    """Counts training samples and the seconds spent on training batches (validation excluded).

    Time runs from the start of each training epoch through every batch end, so data loading,
    forward, backward and the optimizer step count; the validation at epoch end does not.
    """

    def __init__(self) -> None:
        self.samples = 0
        self.seconds = 0.0
        self._mark: float | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._mark is not None:
            self.seconds += now - self._mark
        self._mark = now
        self.samples += int(batch["input_ids"].shape[0]) * trainer.world_size

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Logged (not only kept here) so they reach the main process under spawned DDP too;
        # the progress counters go to callback_metrics only, not to the loggers.
        if self.seconds:
            pl_module.log("train/samples_per_sec", self.samples / self.seconds, rank_zero_only=True)
        pl_module.log(
            "progress/epochs", float(trainer.current_epoch + 1), logger=False, rank_zero_only=True
        )
        pl_module.log(
            "progress/global_step", float(trainer.global_step), logger=False, rank_zero_only=True
        )

    @property
    def samples_per_second(self) -> float | None:
        return self.samples / self.seconds if self.seconds else None


def peak_memory() -> dict[str, float | None]:
    """Peak resident memory of this process and peak CUDA memory allocated, in MiB."""
    import resource

    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"rss_megabytes": round(rss_kib / 1024, 1), "cuda_megabytes": cuda}
