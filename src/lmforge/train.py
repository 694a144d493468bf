"""Training: compose the datamodule, task module and trainer, fit, test the best checkpoint.

`train(cfg)` is the whole recipe; `lmforge-train` (lmforge.cli) wraps it with Hydra.
"""

from __future__ import annotations

import copy
import json
import logging
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from lmforge.baselines import run_baselines
from lmforge.callbacks import (
    CompileModel,
    FiniteLoss,
    GracefulStop,
    MatmulPrecision,
    RandomState,
    TrainThroughput,
    peak_memory,
)
from lmforge.checkpoints import read_checkpoint, use_atomic_checkpoints
from lmforge.comparison import (
    before_summary,
    build_comparison,
    describe_start,
    predict_labels,
    predict_test_split,
    run_test_with_predictions,
    write_comparison,
    write_test_predictions,
)
from lmforge.config import validate_training_config
from lmforge.data import TextDataModule, prepare_datamodule
from lmforge.errors import RunInterrupted
from lmforge.loggers import publish_run_results
from lmforge.precision import matmul_precision, resolve_matmul_precision, settle_precision
from lmforge.report import plot_run_curves
from lmforge.reproducibility import record_reproducibility
from lmforge.rundir import (
    BEFORE_FILE,
    LABELS_FILE,
    LAST_CHECKPOINT,
    METRICS_FILE,
    TOKENIZER_DIR,
    record_config,
    write_json,
)
from lmforge.tasks import TaskModule

log = logging.getLogger(__name__)


def train(
    cfg: DictConfig, ckpt_path: str | None = None, callbacks: Sequence[pl.Callback] = ()
) -> float | None:
    """Fit and test one run; return the value of `cfg.optimized_metric` (for sweepers).

    Args:
        cfg: a composed training config (conf/train.yaml).
        ckpt_path: a checkpoint to resume from (set by `resume=<run dir>`).
        callbacks: extra callbacks, added to those of the config.
    """
    validate_training_config(cfg)
    settle_precision(cfg.trainer)
    setting = cfg.get("float32_matmul_precision")
    precision = resolve_matmul_precision(setting, cfg.trainer.get("accelerator"))
    if setting == "auto" and precision:
        log.info(
            "float32 matmuls: %s precision (float32_matmul_precision=auto on a CPU with bfloat16 "
            "instructions: oneDNN's bfloat16 math mode; =highest keeps plain float32).",
            precision,
        )
    with matmul_precision(precision):
        return _run(cfg, ckpt_path, callbacks, precision)


def _run(
    cfg: DictConfig,
    ckpt_path: str | None,
    callbacks: Sequence[pl.Callback],
    precision: str | None,
) -> float | None:
    started = time.perf_counter()
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = prepare_datamodule(cfg.data)
    module = _build_module(cfg, datamodule)
    throughput = TrainThroughput()
    stop = GracefulStop(run_dir / LAST_CHECKPOINT)
    extra = [RandomState(), throughput, stop, FiniteLoss(), *callbacks]
    if precision:
        # Spawned DDP workers start with torch's default.
        extra.append(MatmulPrecision(precision))
    if cfg.get("compile") and cfg.compile.enabled:
        options = {k: v for k, v in cfg.compile.items() if k != "enabled"}
        extra.append(CompileModel(**options))
    trainer = _build_trainer(cfg, extra)
    _record_start(cfg, run_dir, datamodule)

    resumed = _resume_point(ckpt_path, datamodule)
    before = _evaluate_before(cfg, run_dir, module, datamodule) if cfg.evaluate_before else None
    # Before fit: the frozen probe reads the backbone the run starts from.
    device = trainer.strategy.root_device
    baselines = run_baselines(cfg.compare.baselines, module, datamodule, device)
    samples_per_second = None
    progress = {"epochs_completed": 0, "global_step": 0}
    try:
        if cfg.train:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
            # Spawned DDP workers measured it in their own processes and logged it back.
            logged = trainer.callback_metrics
            samples_per_second = throughput.samples_per_second or _scalar(
                logged.get("train/samples_per_sec")
            )
            progress = {
                "epochs_completed": trainer.current_epoch or int(logged.get("progress/epochs", 0)),
                "global_step": trainer.global_step or int(logged.get("progress/global_step", 0)),
            }
        after, predicted = _test(cfg, trainer, module, datamodule) if cfg.test else ({}, None)
    except SIGTERMException as err:
        raise _stopped(stop, run_dir) from err

    best = _best_validation(cfg, trainer)
    # The test pass's predictions serve the confusion matrix, the flipped examples and
    # test_predictions.jsonl (classification only).
    predictions = (
        predict_test_split(module, datamodule, device, predicted) if after.get("test") else None
    )
    comparison = build_comparison(
        module,
        datamodule,
        before,
        after,
        baselines,
        checkpoint=(best or {}).get("checkpoint"),
        max_flipped=cfg.compare.max_flipped,
        predictions=predictions,
    )
    metrics = {
        "task": module.task_name,
        "test": after.get("test", {}),
        "validation": after.get("validation", {}),
        "before_training": before_summary(before),
        "comparison": comparison,
        "confusion_matrix": predictions.confusion_matrix() if predictions else None,
        "best_validation": best,
        "optimized_metric": cfg.optimized_metric,
        "wall_time_seconds": round(time.perf_counter() - started, 2),
        "train_samples_per_second": samples_per_second,
        "precision": str(cfg.trainer.precision),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "peak_memory": peak_memory(),
        **progress,
        "parameters": module.parameter_counts(),
        "finetune": module.finetune.describe(),
        "data": {split: len(ds) for split, ds in datamodule.splits.items()},
        "tokenization_cache_hit": datamodule.cache_hit,
        "data_checks": datamodule.data_report,
        "resumed_from": resumed,
    }
    path = write_json(run_dir, METRICS_FILE, metrics)
    write_comparison(run_dir, comparison)
    plot_run_curves(run_dir, cfg.optimized_metric)
    if predictions:
        write_test_predictions(run_dir, predictions)
    publish_run_results(trainer.loggers, run_dir, metrics)
    log.info("Test metrics: %s", json.dumps(metrics["test"]))
    log.info("Run finished in %.1f s; metrics in %s", metrics["wall_time_seconds"], path)
    return best["value"] if best else None


def _build_module(cfg: DictConfig, datamodule: TextDataModule) -> TaskModule:
    task_inputs: dict[str, Any] = {}
    if hasattr(datamodule, "label_names"):
        task_inputs["label_names"] = datamodule.label_names
    module: TaskModule = instantiate(
        cfg.model,
        _convert_="all",
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        finetune=instantiate(cfg.finetune) if cfg.get("finetune") else None,
        distill=instantiate(cfg.distill) if cfg.distill.teacher else None,
        **task_inputs,
    )
    counts = module.parameter_counts()
    log.info(
        "Parameters: %s trainable of %s (%.2f%%)",
        f"{counts['trainable']:,}",
        f"{counts['total']:,}",
        counts["trainable_percent"],
    )
    return module


def _instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every entry of a callbacks/logger group (entries set to null are skipped)."""
    if not group:
        return []
    return [instantiate(item) for item in group.values() if item is not None]


def _build_trainer(cfg: DictConfig, extra_callbacks: list[pl.Callback]) -> pl.Trainer:
    callbacks = _instantiate_group(cfg.get("callbacks")) + list(extra_callbacks)
    loggers = _instantiate_group(cfg.get("logger"))
    if not loggers:
        # The lr monitor writes to loggers only; with logger=none Lightning would refuse to start.
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    use_atomic_checkpoints(trainer.strategy)
    if loggers:
        for logger in loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return trainer


def _record_start(cfg: DictConfig, run_dir: Path, datamodule: TextDataModule) -> None:
    record_config(run_dir, cfg)
    record_reproducibility(run_dir, cfg, datamodule.data_fingerprints)
    if not (run_dir / TOKENIZER_DIR).exists():
        datamodule.tokenizer.save_pretrained(run_dir / TOKENIZER_DIR)
    if hasattr(datamodule, "label_names") and not (run_dir / LABELS_FILE).exists():
        names = datamodule.label_names
        write_json(run_dir, LABELS_FILE, {"id2label": dict(enumerate(names))})


def _stopped(stop: GracefulStop, run_dir: Path) -> RunInterrupted:
    """The error a run stopped by SIGTERM/Ctrl-C ends with: where it stopped, how to go on."""
    where = stop.saved or {}
    return RunInterrupted(
        f"stopped by {signal.Signals(stop.signal_number or signal.SIGTERM).name} at epoch "
        f"{where.get('epoch', '?')}, optimizer step {where.get('global_step', '?')}; the state "
        f"is saved in {stop.checkpoint_path}. Continue the run with: "
        f"lmforge-train resume={run_dir}",
        signal_number=stop.signal_number or signal.SIGTERM,
    )


def _resume_point(ckpt_path: str | None, datamodule: TextDataModule) -> dict[str, Any] | None:
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


def _test(
    cfg: DictConfig, trainer: pl.Trainer, module: TaskModule, datamodule: TextDataModule
) -> tuple[dict[str, dict[str, float]], list[Any] | None]:
    """Evaluate the best checkpoint (the final weights if none was kept) on the validation and
    test splits; the module holds those weights afterwards. Also returns the test pass's
    predicted labels (None where `run_test_with_predictions` could not take them).

    After a multi-process fit the evaluation runs in this process on one device, so every
    example counts exactly once (sharding pads the last batches with repeats).
    """
    callback = trainer.checkpoint_callback
    best = getattr(callback, "best_model_path", "") if callback else ""
    if cfg.train and not best:
        log.warning("No best checkpoint was saved; testing the final weights.")
    if trainer.world_size > 1:
        trainer = _single_process_trainer(cfg, trainer.loggers)
    checkpoint = best or None
    validation = _values(
        trainer.validate(module, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)
    )
    test, predicted = run_test_with_predictions(trainer, module, datamodule, ckpt_path=checkpoint)
    return {"validation": validation, "test": test}, predicted


def _single_process_trainer(
    cfg: DictConfig, loggers: list | None = None, **options: Any
) -> pl.Trainer:
    """A one-device trainer of the run's kind, for evaluations outside `fit`."""
    return instantiate(
        cfg.trainer,
        devices=1,
        num_nodes=1,
        strategy="auto",
        callbacks=[],
        logger=loggers or False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )


def _evaluate_before(
    cfg: DictConfig, run_dir: Path, module: TaskModule, datamodule: TextDataModule
) -> dict[str, Any]:
    """Evaluate the untouched starting model on validation and test, so the gain of
    fine-tuning is one number away; keep its test predictions for the flipped examples.

    Written to before_training.json at once, so a resumed run keeps the first measurement.
    """
    path = run_dir / BEFORE_FILE
    if path.is_file():
        return json.loads(path.read_text())
    # A shallow copy of the datamodule takes the evaluation trainer's references, which a
    # spawned DDP fit could not unpickle; splits and tokenizer are shared, not copied.
    # Not in inference mode: metric states it resets are updated in place by fit's validation.
    trainer = _single_process_trainer(cfg, inference_mode=False)
    data = copy.copy(datamodule)
    validation = _values(trainer.validate(module, datamodule=data, verbose=False))
    test, predicted = run_test_with_predictions(trainer, module, data)
    record = {"validation": validation, "test": test, **describe_start(module.start)}
    if cfg.compare.max_flipped:
        if predicted is None:
            predicted = predict_labels(module, datamodule, "test", trainer.strategy.root_device)
        record["predictions"] = {"test": predicted}
    write_json(run_dir, BEFORE_FILE, record)
    log.info("Before training: %s", json.dumps(record["test"]))
    return record


def _best_validation(cfg: DictConfig, trainer: pl.Trainer) -> dict[str, Any] | None:
    callback = trainer.checkpoint_callback
    score = getattr(callback, "best_model_score", None) if callback else None
    if score is None:
        score = trainer.callback_metrics.get(cfg.optimized_metric)
    if score is None:
        return None
    path = getattr(callback, "best_model_path", "") if callback else ""
    size = Path(path).stat().st_size if path and Path(path).is_file() else None
    return {
        "metric": cfg.optimized_metric,
        "value": _scalar(score),
        "checkpoint": path or None,
        # PEFT checkpoints hold adapters and head only: the size shows it.
        "checkpoint_megabytes": round(size / 2**20, 3) if size else None,
    }


def _values(results: list[dict[str, Any]]) -> dict[str, float]:
    """The metrics of a `trainer.validate` / `trainer.test` call as plain floats."""
    return {k: _scalar(v) for k, v in (results[0] if results else {}).items()}


def _scalar(value: Any) -> float | None:
    if value is None:
        return None
    return float(value.item() if isinstance(value, torch.Tensor) else value)
