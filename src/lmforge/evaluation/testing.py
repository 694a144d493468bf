"""The evaluations around fit: the untouched start before training, the best checkpoint after."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lmforge.evaluation.comparison import describe_start, predict_labels, run_test_with_predictions
from lmforge.runtime.record import BestValidation
from lmforge.runtime.rundir import BEFORE_FILE, write_json
from lmforge.runtime.trainer import RunTrainer, scalar, single_process_trainer

log = logging.getLogger(__name__)


def evaluate_before(cfg: DictConfig, run_dir: Path, module: Any, datamodule: Any) -> dict[str, Any]:
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
    trainer = single_process_trainer(cfg, inference_mode=False)
    data = copy.copy(datamodule)
    validation = values_of(trainer.validate(module, datamodule=data, verbose=False))
    test, predicted = run_test_with_predictions(trainer, module, data)
    record = {"validation": validation, "test": test, **describe_start(module.start)}
    if cfg.compare.max_flipped:
        if predicted is None:
            predicted = predict_labels(module, datamodule, "test", trainer.strategy.root_device)
        record["predictions"] = {"test": predicted}
    write_json(run_dir, BEFORE_FILE, record)
    log.info("Before training: %s", json.dumps(record["test"]))
    return record


def evaluate_best(
    cfg: DictConfig, run: RunTrainer, module: Any, datamodule: Any
) -> tuple[dict[str, Mapping[str, float | None]], list[Any] | None]:
    """Evaluate the best checkpoint (the final weights if none was kept) on the validation and
    test splits; the module holds those weights afterwards. Also returns the test pass's
    predicted labels (None where `run_test_with_predictions` could not take them).

    After a multi-process fit the evaluation runs in this process on one device, so every
    example counts exactly once (sharding pads the last batches with repeats).
    """
    trainer = run.trainer
    callback = trainer.checkpoint_callback
    best = getattr(callback, "best_model_path", "") if callback else ""
    if cfg.train and not best:
        log.warning("No best checkpoint was saved; testing the final weights.")
    if trainer.world_size > 1:
        trainer = single_process_trainer(cfg, trainer.loggers)
    checkpoint = best or None
    validation = values_of(
        trainer.validate(module, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)
    )
    test, predicted = run_test_with_predictions(trainer, module, datamodule, ckpt_path=checkpoint)
    return {"validation": validation, "test": test}, predicted


def best_validation(cfg: DictConfig, run: RunTrainer) -> BestValidation | None:
    """The best validation score of the optimized metric and the checkpoint that holds it."""
    callback = run.trainer.checkpoint_callback
    score = getattr(callback, "best_model_score", None) if callback else None
    if score is None:
        score = run.trainer.callback_metrics.get(cfg.optimized_metric)
    if score is None:
        return None
    path = getattr(callback, "best_model_path", "") if callback else ""
    size = Path(path).stat().st_size if path and Path(path).is_file() else None
    return {
        "metric": cfg.optimized_metric,
        "value": scalar(score),
        "checkpoint": path or None,
        # PEFT checkpoints hold adapters and head only: the size shows it.
        "checkpoint_megabytes": round(size / 2**20, 3) if size else None,
    }


def values_of(results: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """The metrics of a `trainer.validate` / `trainer.test` call as plain floats."""
    return {k: scalar(v) for k, v in (results[0] if results else {}).items()}
