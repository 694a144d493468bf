"""Training: the recipe. Compose the data, the task module and the trainer; evaluate the start,
run the baselines, fit, test the best checkpoint and write the run record.

`train(cfg)` is the whole recipe; `lmforge-train` (lmforge.cli) wraps it with Hydra.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from lmforge.config.validation import process_rank, validate_training_config
from lmforge.data.datamodule import TextDataModule, prepare_datamodule
from lmforge.evaluation.baselines import run_baselines
from lmforge.evaluation.testing import evaluate_before, evaluate_best
from lmforge.run_record import record_end, record_start
from lmforge.runtime import trainer as runtime
from lmforge.runtime.precision import matmul_precision, settle_precision
from lmforge.runtime.trainer import build_trainer, fit, resume_point, stop_on_signal
from lmforge.tasks.base import TaskModule
from lmforge.tasks.runs import load_teacher

log = logging.getLogger(__name__)


def train(
    cfg: DictConfig, ckpt_path: str | None = None, callbacks: Sequence[pl.Callback] = ()
) -> float | None:
    """Fit and test one run; return the best value of `cfg.optimized_metric` (for sweepers).

    Args:
        cfg: a composed training config (conf/train.yaml).
        ckpt_path: a checkpoint to resume from (set by `resume=<run dir>`).
        callbacks: extra callbacks, added to those of the config.
    """
    started = time.perf_counter()
    validate_training_config(cfg)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # The data before the precision probe: a missing file or column is told at once, not
    # after the probe's seconds of measuring.
    datamodule = prepare_datamodule(cfg.data)
    precision = settle_precision(cfg)
    with matmul_precision(precision.matmul):
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        module = build_module(cfg, datamodule)
        run = build_trainer(cfg, run_dir, callbacks, precision.matmul)
        if process_rank() > 0:  # started by a cluster (SLURM, torchrun): it only trains
            runtime.join_fit(cfg, run, module, datamodule, ckpt_path)
            return None
        record_start(cfg, run_dir, datamodule, module)
        resumed = resume_point(ckpt_path, datamodule)
        before = evaluate_before(cfg, run_dir, module, datamodule) if cfg.evaluate_before else None
        # Before fit: the frozen probe reads the backbone the run starts from.
        baselines = run_baselines(cfg.compare.baselines, module, datamodule, run.device)
        with stop_on_signal(run):
            if cfg.train:
                fit(run, module, datamodule, ckpt_path)
            after, predicted = (
                evaluate_best(cfg, run, module, datamodule) if cfg.test else ({}, None)
            )
        evaluations = {
            "before": before,
            "after": after,
            "predicted": predicted,
            "baselines": baselines,
            "resumed": resumed,
        }
        metrics = record_end(cfg, run_dir, run, module, datamodule, evaluations, started, precision)
    best = metrics["best_validation"]
    return best["value"] if best else None


def build_module(cfg: DictConfig, datamodule: TextDataModule) -> TaskModule:
    """The task module of `cfg.model`, told what the data knows (label names, ...), with its
    optimizer, schedule, fine-tuning strategy and distillation teacher."""
    module: TaskModule = instantiate(
        cfg.model,
        _convert_="all",
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        finetune=instantiate(cfg.finetune) if cfg.get("finetune") else None,
        **datamodule.model_inputs(),
    )
    if cfg.distill.teacher:
        distill = instantiate(cfg.distill)
        distill.attach(module, load_teacher(distill.source, module.family))
    counts = module.parameter_counts()
    log.info(
        "Parameters: %s trainable of %s (%.2f%%)",
        f"{counts['trainable']:,}",
        f"{counts['total']:,}",
        counts["trainable_percent"],
    )
    return module
