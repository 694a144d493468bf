"""What a training run leaves in its directory, built in one place: the records written when
it starts (config, reproducibility, tokenizer, labels) and those written when it ends
(metrics.json, comparison.md, test predictions, learning curves), also sent to the loggers."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import DictConfig

from lmforge.evaluation.comparison import (
    before_summary,
    build_comparison,
    predict_test_split,
    scored_examples,
    write_comparison,
    write_test_predictions,
    write_test_records,
)
from lmforge.evaluation.testing import best_validation
from lmforge.reporting.plots import plot_run_curves
from lmforge.runtime.callbacks import peak_memory
from lmforge.runtime.flops import arithmetic_of, efficiency_record
from lmforge.runtime.loggers import publish_run_results
from lmforge.runtime.precision import PrecisionChoice
from lmforge.runtime.record import ParameterCounts, RunMetrics, write_run_metrics
from lmforge.runtime.reproducibility import record_reproducibility
from lmforge.runtime.rundir import LABELS_FILE, TOKENIZER_DIR, record_config, write_json
from lmforge.runtime.trainer import RunTrainer

log = logging.getLogger(__name__)


def record_start(cfg: DictConfig, run_dir: Path, datamodule: Any, module: Any) -> None:
    """The resolved config, the reproducibility record, the tokenizer and the label map."""
    record_config(run_dir, cfg)
    record_reproducibility(run_dir, cfg, datamodule.data_fingerprints)
    if not (run_dir / TOKENIZER_DIR).exists():
        datamodule.tokenizer.save_pretrained(run_dir / TOKENIZER_DIR)
    labels = module.run_settings().get("labels")
    if labels and not (run_dir / LABELS_FILE).exists():
        write_json(run_dir, LABELS_FILE, {"id2label": dict(enumerate(labels))})


def record_end(
    cfg: DictConfig,
    run_dir: Path,
    run: RunTrainer,
    module: Any,
    datamodule: Any,
    evaluations: dict[str, Any],
    started: float,
    precision: PrecisionChoice,
) -> RunMetrics:
    """metrics.json and the files beside it; returns the metrics record.

    Args:
        evaluations: `before` (the before-training record or None), `after` (validation and
            test metrics of the evaluated weights), `predicted` (the test pass's labels or
            None), `baselines` and `resumed` (where a resumed run started).
        precision: what the run computed in, and why.
    """
    after = evaluations["after"]
    best = best_validation(cfg, run)
    # The test pass's predictions serve the confusion matrix, the flipped examples and
    # test_predictions.jsonl (tasks with one label per example).
    predictions = (
        predict_test_split(module, datamodule, run.device, evaluations["predicted"])
        if after.get("test")
        else None
    )
    comparison = build_comparison(
        module,
        datamodule,
        evaluations["before"],
        after,
        evaluations["baselines"],
        checkpoint=best["checkpoint"] if best else None,
        max_flipped=cfg.compare.max_flipped,
        predictions=predictions,
        optimized_metric=str(cfg.optimized_metric or ""),
    )
    records = module.test_records() if after.get("test") and not predictions else None
    if records and (examples := scored_examples(records, module.example_metric)):
        comparison["examples"] = examples
    metrics: RunMetrics = {
        "task": module.task_name,
        "test": after.get("test", {}),
        "validation": after.get("validation", {}),
        "before_training": before_summary(evaluations["before"]),
        "comparison": comparison,
        "confusion_matrix": predictions.confusion_matrix() if predictions else None,
        "best_validation": best,
        "optimized_metric": cfg.optimized_metric,
        "wall_time_seconds": round(time.perf_counter() - started, 2),
        "train_samples_per_second": run.samples_per_second,
        "efficiency": efficiency_record(
            run.flops_per_second,
            run.device,
            arithmetic_of(str(cfg.trainer.precision), torch.get_float32_matmul_precision()),
            str(cfg.paths.cache_dir),
            devices=run.trainer.world_size,
        ),
        "precision": str(cfg.trainer.precision),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "precision_choice": precision.record(),
        "peak_memory": peak_memory(),
        "epochs_completed": run.progress["epochs_completed"],
        "global_step": run.progress["global_step"],
        "parameters": cast(ParameterCounts, module.parameter_counts()),
        "finetune": module.finetune.describe(),
        "data": {split: len(ds) for split, ds in datamodule.splits.items()},
        "tokenization_cache_hit": datamodule.cache_hit,
        "data_checks": datamodule.data_report,
        "resumed_from": evaluations["resumed"],
        "evaluation_details": module.evaluation_details(),
        "pruned": run.reporter.pruned if run.reporter is not None else None,
    }
    path = write_run_metrics(run_dir, metrics)
    write_comparison(run_dir, comparison)
    plot_run_curves(run_dir, cfg.optimized_metric)
    if predictions:
        write_test_predictions(run_dir, predictions)
    elif records:
        write_test_records(run_dir, records)
    publish_run_results(run.trainer.loggers, run_dir, metrics)
    if comparison["verdict"]:
        log.info("%s", comparison["verdict"])
    if efficiency := metrics["efficiency"]:
        log.info(
            "Training efficiency: %.1f GFLOP/s of model FLOPs, %.1f%% of the %.1f GFLOP/s "
            "peak (%s; MFU %.3f)",
            efficiency["model_flops_per_second"] / 1e9,
            100 * (efficiency["mfu"] or 0),
            efficiency["peak_flops_per_second"] / 1e9,
            efficiency["peak_source"],
            efficiency["mfu"] or 0,
        )
    log.info("Test metrics: %s", json.dumps(metrics["test"]))
    log.info("Run finished in %.1f s; metrics in %s", metrics["wall_time_seconds"], path)
    return metrics
