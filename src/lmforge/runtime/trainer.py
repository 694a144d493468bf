"""The Lightning trainer of a run: its callbacks and loggers, fitting with a graceful stop,
resuming mid-epoch, and one-process trainers for the evaluations outside `fit`."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from lmforge.errors import RunInterrupted
from lmforge.runtime.callbacks import (
    CompileModel,
    FiniteLoss,
    GracefulStop,
    MatmulPrecision,
    RandomState,
    TrainThroughput,
    ValidateAtMaxSteps,
)
from lmforge.runtime.checkpoints import read_checkpoint, use_atomic_checkpoints
from lmforge.runtime.rundir import LAST_CHECKPOINT
from lmforge.runtime.trials import TrialReporter, trial_reporter

log = logging.getLogger(__name__)


@dataclass
class RunTrainer:
    """The trainer and the callbacks whose findings the run record reads."""

    trainer: pl.Trainer
    throughput: TrainThroughput
    stop: GracefulStop
    # The callback of a sweep trial that reports to its study (None outside pruned sweeps).
    reporter: TrialReporter | None = None
    samples_per_second: float | None = None
    # Model FLOPs per second of training, all processes together (lmforge.runtime.flops).
    flops_per_second: float | None = None
    progress: dict[str, int] = field(
        default_factory=lambda: {"epochs_completed": 0, "global_step": 0}
    )

    @property
    def device(self) -> torch.device:
        return self.trainer.strategy.root_device


def streaming_options(cfg: DictConfig) -> dict[str, Any]:
    """Trainer options of a run whose training data is streamed (`data.streaming`): the stream
    never ends (lmforge.data.streaming), so no epoch does either: training stops at
    `trainer.max_steps`, validation runs every `trainer.val_check_interval` steps (default: a
    tenth of the steps) and no minimum of epochs holds it back."""
    if not cfg.get("data") or not cfg.data.get("streaming"):
        return {}
    max_steps = int(cfg.trainer.get("max_steps") or -1)
    interval = cfg.trainer.get("val_check_interval")
    if interval is None:
        interval = max(1, max_steps // 10)
    return {
        "val_check_interval": int(interval),
        "check_val_every_n_epoch": None,
        "min_epochs": None,
        "max_epochs": -1,
    }


def build_trainer(
    cfg: DictConfig, run_dir: Path, callbacks: Sequence[pl.Callback], matmul: str | None
) -> RunTrainer:
    """The trainer of `cfg.trainer` with the config's callbacks and loggers, lmforge's own
    callbacks (exact resume, throughput, graceful stop, finite loss) and `callbacks`."""
    throughput = TrainThroughput()
    stop = GracefulStop(run_dir / LAST_CHECKPOINT)
    extra: list[pl.Callback] = [
        RandomState(),
        throughput,
        stop,
        FiniteLoss(),
        ValidateAtMaxSteps(),
        *callbacks,
    ]
    reporter = trial_reporter(cfg)  # a trial of a pruned sweep reports to its study
    if reporter is not None:
        extra.append(reporter)
    if matmul:
        extra.append(MatmulPrecision(matmul))  # spawned DDP workers start with torch's default
    if cfg.get("compile") and cfg.compile.enabled:
        options = {k: v for k, v in cfg.compile.items() if k != "enabled"}
        extra.append(CompileModel(**options))
    configured = _instantiate_group(cfg.get("callbacks")) + extra
    loggers = _instantiate_group(cfg.get("logger"))
    if not loggers:
        # The lr monitor writes to loggers only; with logger=none Lightning would refuse to start.
        configured = [c for c in configured if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    if cfg.trainer.get("enable_progress_bar") is False:
        # Lightning refuses a progress-bar callback with the bar turned off; the user asked for
        # no bar, so the callbacks group's bar goes.
        configured = [c for c in configured if not isinstance(c, pl.callbacks.ProgressBar)]
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        callbacks=configured,
        logger=loggers or False,
        **streaming_options(cfg),
    )
    use_atomic_checkpoints(trainer.strategy)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return RunTrainer(trainer, throughput, stop, reporter)


def _instantiate_group(group: DictConfig | None) -> list:
    """Every entry of a callbacks/logger group (entries set to null are skipped)."""
    if not group:
        return []
    return [instantiate(item) for item in group.values() if item is not None]


@contextmanager
def stop_on_signal(run: RunTrainer) -> Iterator[None]:
    """A SIGTERM or Ctrl-C inside ends the run with the state saved and how to resume it."""
    try:
        yield
    except SIGTERMException as err:
        raise stopped(run) from err


def fit(
    run: RunTrainer, module: pl.LightningModule, datamodule: Any, ckpt_path: str | None
) -> None:
    """`trainer.fit`, then what the run record reads of it: throughput and progress."""
    trainer = run.trainer
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    # Spawned DDP workers measured it in their own processes and logged it back.
    logged = trainer.callback_metrics
    run.samples_per_second = run.throughput.samples_per_second or scalar(
        logged.get("train/samples_per_sec")
    )
    run.flops_per_second = run.throughput.flops_per_second or scalar(
        logged.get("train/model_flops_per_sec")
    )
    run.progress = {
        "epochs_completed": trainer.current_epoch or int(logged.get("progress/epochs", 0)),
        "global_step": trainer.global_step or int(logged.get("progress/global_step", 0)),
    }


def join_fit(
    cfg: DictConfig, run: RunTrainer, module: pl.LightningModule, datamodule: Any, ckpt: str | None
) -> None:
    """The part of a run a rank > 0 takes when the cluster started every rank itself (SLURM's
    tasks, torchrun): the fit, from the same point as rank 0. Rank 0 alone evaluates before
    and after, runs the baselines and writes the run record, so the run has one of each."""
    resume_point(ckpt, datamodule)
    with stop_on_signal(run):
        if cfg.train:
            fit(run, module, datamodule, ckpt)


def stopped(run: RunTrainer) -> RunInterrupted:
    """The error a run stopped by SIGTERM/Ctrl-C ends with: where it stopped, how to go on."""
    stop = run.stop
    where = stop.saved or {}
    run_dir = stop.checkpoint_path.parent.parent
    return RunInterrupted(
        f"stopped by {signal.Signals(stop.signal_number or signal.SIGTERM).name} at epoch "
        f"{where.get('epoch', '?')}, optimizer step {where.get('global_step', '?')}; the state "
        f"is saved in {stop.checkpoint_path}. Continue the run with: "
        f"lmforge-train resume={run_dir}",
        signal_number=stop.signal_number or signal.SIGTERM,
    )


def resume_point(ckpt_path: str | None, datamodule: Any) -> dict[str, Any] | None:
    """Where a resumed run starts: the checkpoint's epoch and optimizer step; a checkpoint
    saved mid-epoch also tells the datamodule which training batches that epoch has done."""
    if not ckpt_path:
        return None
    checkpoint = read_checkpoint(ckpt_path)
    point = {
        "checkpoint": str(ckpt_path),
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
    }
    # Read here rather than left to Lightning, which skips handing it back to the loader when
    # the loader was built early (for estimated_stepping_batches, as the lr schedule needs).
    fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})
    loaders = fit_loop.get("state_dict", {}).get("combined_loader") or []
    if loaders:
        datamodule.resume_point = (loaders[0]["epoch"], loaders[0]["batches_done"])
        point["batches_done_in_epoch"] = loaders[0]["batches_done"]
    log.info("Resuming at epoch %s, step %s", point["epoch"], point["global_step"])
    return point


def single_process_trainer(
    cfg: DictConfig, loggers: list | None = None, **options: Any
) -> pl.Trainer:
    """A one-device trainer of the run's kind, for evaluations outside `fit`. It ignores any
    cluster around the run (a SLURM job's tasks): one process evaluates alone. The process
    group of a fit whose ranks the cluster started is closed first: Lightning's barriers would
    otherwise wait for ranks that have finished."""
    from lightning.fabric.plugins.environments.lightning import LightningEnvironment

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()

    return instantiate(
        cfg.trainer,
        devices=1,
        num_nodes=1,
        strategy="auto",
        plugins=[LightningEnvironment()],
        callbacks=[],
        logger=loggers or False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )


def scalar(value: Any) -> float | None:
    """A logged value (tensor or number) as a float."""
    if value is None:
        return None
    return float(value.item() if isinstance(value, torch.Tensor) else value)
