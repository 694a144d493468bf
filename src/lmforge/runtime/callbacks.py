"""Callbacks that every lmforge run gets: exact resumption, a graceful stop on SIGTERM/Ctrl-C,
a guard against non-finite losses, and throughput measurement."""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lmforge.errors import LmforgeError

log = logging.getLogger(__name__)


class NonFiniteLoss(LmforgeError):
    """The training loss became NaN or infinite."""


class RandomState(pl.Callback):
    """Saves the random generators' states in checkpoints and restores them on resume.

    Dropout draws from the global generators; restoring them makes a resumed run continue
    with exactly the random numbers the uninterrupted run would have used.
    """

    def state_dict(self) -> dict[str, Any]:
        # Only tensors and plain Python values, so checkpoints load with weights_only=True.
        # The legacy (MT19937) state tuple; the stub's default overload claims a dict.
        legacy_state = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
        _, keys, pos, has_gauss, cached = legacy_state
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
        self.flops = 0.0  # model FLOPs of the batches counted (lmforge.runtime.flops)
        self._mark: float | None = None
        self._model_flops: Any = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from lmforge.runtime.flops import ModelFlops

        model = getattr(pl_module, "model", None)
        self._model_flops = ModelFlops(model) if isinstance(model, torch.nn.Module) else None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        now = time.perf_counter()
        if self._mark is not None:
            self.seconds += now - self._mark
        self._mark = now
        ids = batch["input_ids"]
        self.samples += int(ids.shape[0]) * trainer.world_size
        if self._model_flops is not None:
            # (rows, positions); multiple choice's (rows, choices, positions) as rows x choices
            positions = int(ids.shape[-1])
            rows = int(ids.numel()) // max(positions, 1)
            self.flops += self._model_flops.per_batch(rows, positions) * trainer.world_size

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Logged (not only kept here) so they reach the main process under spawned DDP too;
        # the progress counters go to callback_metrics only, not to the loggers.
        if self.seconds:
            pl_module.log("train/samples_per_sec", self.samples / self.seconds, rank_zero_only=True)
            if self.flops:
                pl_module.log(
                    "train/model_flops_per_sec", self.flops / self.seconds, rank_zero_only=True
                )
        pl_module.log(
            "progress/epochs", float(trainer.current_epoch + 1), logger=False, rank_zero_only=True
        )
        pl_module.log(
            "progress/global_step", float(trainer.global_step), logger=False, rank_zero_only=True
        )

    @property
    def samples_per_second(self) -> float | None:
        return self.samples / self.seconds if self.seconds else None

    @property
    def flops_per_second(self) -> float | None:
        return self.flops / self.seconds if self.seconds and self.flops else None


def peak_memory() -> dict[str, float | None]:
    """Peak resident memory of this process and peak CUDA memory allocated, in MiB."""
    import resource

    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"rss_megabytes": round(rss_kib / 1024, 1), "cuda_megabytes": cuda}


class GracefulStop(pl.Callback):
    """SIGTERM or Ctrl-C during fit: finish the current batch, save a resumable checkpoint, stop.

    Lightning already turns SIGTERM into a stop at the next batch boundary (its signal
    connector); this callback makes the first Ctrl-C do the same (a second one stops at once)
    and saves the state at that boundary to `checkpoint_path`, which `resume=<run dir>`
    continues from, mid-epoch included (see `ResumableDataLoader`).
    """

    def __init__(self, checkpoint_path: str | Path) -> None:
        self.checkpoint_path = Path(checkpoint_path)
        self.signal_number: int | None = None
        self.saved: dict[str, int] | None = None
        self._previous_handler: Any = None
        self._trainer: pl.Trainer | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trainer = trainer
        # Signal handlers can only be set from the main thread.
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._on_interrupt)

    def _on_interrupt(self, signum: int, frame: Any) -> None:
        if self.signal_number is not None or self._trainer is None:
            raise KeyboardInterrupt
        self.signal_number = signum
        log.warning(
            "Ctrl-C: stopping after this batch and saving a checkpoint to resume from "
            "(press Ctrl-C again to stop at once, without one)."
        )
        # The flag Lightning's own SIGTERM handler sets: the loops stop at the next boundary.
        self._trainer._signal_connector.received_sigterm = True

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore_handler()
        if not isinstance(exception, SIGTERMException):
            return
        if self.signal_number is None:
            self.signal_number = signal.SIGTERM
        trainer.save_checkpoint(self.checkpoint_path)
        self.saved = {"epoch": trainer.current_epoch, "global_step": trainer.global_step}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_handler()

    def _restore_handler(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None


class FiniteLoss(pl.Callback):
    """Stops training at the first NaN or infinite loss, before it reaches the weights.

    Checked before backward, so the step that produced it never updates the model and the
    checkpoints already written (`last.ckpt`, `best.ckpt`) stay the last good ones.
    """

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        if bool(torch.isfinite(loss).all()):
            return
        epoch_loop = trainer.fit_loop.epoch_loop
        raise NonFiniteLoss(
            f"The training loss became {loss.detach().float().item()} at epoch "
            f"{trainer.current_epoch}, optimizer step {trainer.global_step}, batch "
            f"{epoch_loop.batch_idx} of the epoch; training stopped before that step changed "
            "the weights, and the checkpoints written so far were kept (checkpoints/last.ckpt "
            "is the last good state). Usual causes: a learning rate too high for this model "
            "(lower optimizer.lr or raise scheduler.warmup_ratio), float16 overflow "
            "(trainer.precision=bf16-mixed or 32-true), or labels outside the model's range."
        )


class ValidateAtMaxSteps(pl.Callback):
    """Validates after the last step when `trainer.max_steps` ends training between two
    scheduled validations (mid-epoch), so the last weights are scored, the best checkpoint
    and early stopping have their metric, and a run shorter than one epoch is validated at
    all (Lightning validates only on its own schedule, and early stopping then fails for a
    metric that was never logged). Lightning validates when a callback asks to stop."""

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        if trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step:
            # Training ends here whatever min_epochs/min_steps say (max_steps wins in
            # Lightning); cleared so that the stop request is honoured with a validation.
            trainer.fit_loop.min_epochs = None
            trainer.fit_loop.epoch_loop.min_steps = None
            trainer.should_stop = True


class CompileModel(pl.Callback):
    """`torch.compile` the task's Hugging Face model when fitting starts (`compile.enabled`).

    Compiled in place (`nn.Module.compile`), so parameter names, checkpoints and exports stay
    as they are, and in the process that trains: a spawned DDP worker compiles its own copy.
    The first training and first validation steps pause while the graphs compile; a batch
    shape not seen before may compile again, which `dynamic=None` limits by switching to
    shape-generic graphs after the first change.

    Args:
        backend: a torch.compile backend (`inductor`; `eager` only traces: for checking).
        mode: `default`, `reduce-overhead` (CUDA graphs) or `max-autotune`; None: default.
        dynamic: None (decide after the first shape change), true or false.
        fullgraph: fail on a graph break instead of running that part uncompiled.
    """

    def __init__(
        self,
        backend: str = "inductor",
        mode: str | None = None,
        dynamic: bool | None = None,
        fullgraph: bool = False,
    ) -> None:
        self.options: dict[str, Any] = {
            "backend": backend,
            "mode": mode,
            "dynamic": dynamic,
            "fullgraph": fullgraph,
        }

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        cast(torch.nn.Module, pl_module.model).compile(**self.options)  # a task module's model
        log.info(
            "torch.compile: backend %s, mode %s; the first training and validation steps "
            "pause while it compiles.",
            self.options["backend"],
            self.options["mode"] or "default",
        )


class MatmulPrecision(pl.Callback):
    """Sets the float32 matmul precision in each process that trains (`matmul_precision` sets
    it in the run's own process; spawned DDP workers start with torch's default)."""

    def __init__(self, precision: str) -> None:
        self.precision = precision

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        torch.set_float32_matmul_precision(self.precision)


class ProgressBar(pl.callbacks.RichProgressBar):
    """Lightning's rich progress bar, except for runs bounded by steps alone (streamed data,
    where Lightning sets max_epochs=-1): there it would title the bar "Epoch 0/-2"; this one
    names the epoch and the run's step budget instead."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_epochs is None or trainer.max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        description = f"Epoch {current_epoch}"
        if trainer.max_steps > 0:
            description += f" (max_steps {trainer.max_steps})"
        # As Lightning's: as wide as the validation title, so the bars do not flicker.
        return f"{description:{len(self.validation_description)}}"
