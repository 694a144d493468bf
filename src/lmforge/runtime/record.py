"""The run record: one typed definition of each file lmforge writes about a run, and the only
place that writes and reads them.

- `metrics.json` of a training run (`RunMetrics`) and of an evaluation (`EvalMetrics`);
- `lmforge.json` beside an export (`ExportSettings`): what running it needs besides the model.

Readers get every key of the definition: a record written by an older lmforge (or a partial
one) is completed with empty values, so code that reads it never guesses with `.get()` chains.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict, cast

from lmforge.errors import LmforgeError
from lmforge.runtime.rundir import EXPORT_SETTINGS_FILE, METRICS_FILE, write_json


class BestValidation(TypedDict):
    """The best validation score of the optimized metric and the checkpoint holding it."""

    metric: str
    value: float | None
    checkpoint: str | None
    checkpoint_megabytes: float | None


class ParameterCounts(TypedDict):
    trainable: int
    total: int
    trainable_percent: float


class RunMetrics(TypedDict):
    """metrics.json of a training run."""

    task: str
    test: dict[str, float | None]
    validation: dict[str, float | None]
    before_training: dict[str, Any] | None
    comparison: dict[str, Any]
    confusion_matrix: dict[str, Any] | None
    best_validation: BestValidation | None
    optimized_metric: str
    wall_time_seconds: float
    train_samples_per_second: float | None
    # Achieved model FLOP/s, the device's peak in the run's arithmetic, its source and the MFU.
    efficiency: dict[str, Any] | None
    precision: str
    float32_matmul_precision: str
    precision_choice: dict[str, Any] | None
    peak_memory: dict[str, float | None]
    epochs_completed: int
    global_step: int
    parameters: ParameterCounts | None
    finetune: dict[str, Any]
    data: dict[str, int]
    tokenization_cache_hit: bool | None
    data_checks: dict[str, Any]
    resumed_from: dict[str, Any] | None
    evaluation_details: dict[str, Any]
    # A sweep trial stopped by the sweep's pruner: the validation, epoch, step and value where.
    pruned: dict[str, Any] | None


class EvalMetrics(TypedDict):
    """metrics.json of `lmforge-eval`."""

    task: str
    checkpoint: str
    test_file: str | None
    examples: int
    test: dict[str, float]


class ExportSettings(TypedDict, total=False):
    """lmforge.json beside an export: the run's settings (labels, lengths, columns, templates,
    thresholds: the family's `run_settings`), then the export's own keys."""

    task: str
    format: str
    model_file: str | None
    inputs: list[str]
    outputs: list[str]
    auto_class: str
    pipeline_task: str
    model_type: str
    source_checkpoint: str
    lmforge_version: str
    # quantize=int8: the int8 graph's test metrics against the checkpoint's.
    quantization: dict[str, Any]
    # Run settings every family may have; a family adds its own.
    labels: list[str]
    max_length: int
    multi_label: bool


# What a reader fills in for a key an older or partial metrics.json lacks.
_RUN_DEFAULTS: dict[str, Any] = {
    "task": "",
    "test": {},
    "validation": {},
    "before_training": None,
    "comparison": {},
    "confusion_matrix": None,
    "best_validation": None,
    "optimized_metric": "",
    "wall_time_seconds": None,
    "train_samples_per_second": None,
    "efficiency": None,
    "precision": "",
    "float32_matmul_precision": "",
    "precision_choice": None,
    "peak_memory": {},
    "epochs_completed": 0,
    "global_step": 0,
    "parameters": None,
    "finetune": {},
    "data": {},
    "tokenization_cache_hit": None,
    "data_checks": {},
    "resumed_from": None,
    "evaluation_details": {},
}


def write_run_metrics(run_dir: Path, metrics: RunMetrics | EvalMetrics) -> Path:
    """Write a run's metrics.json (never over an existing one)."""
    return write_json(run_dir, METRICS_FILE, metrics)


def read_run_metrics(path: Path) -> RunMetrics:
    """A training run's metrics.json, every key present.

    Raises:
        LmforgeError: the file cannot be read, is not JSON, or holds no test or validation
            metrics (not a training run's record).
    """
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise LmforgeError(f"{path} could not be read: {err}") from err
    if not isinstance(payload, dict) or not ("test" in payload or "validation" in payload):
        raise LmforgeError(f"{path} holds no test or validation metrics (not a training run)")
    record = {**_RUN_DEFAULTS, **payload}
    # Sections an older record wrote as null read as empty.
    for key, empty in _RUN_DEFAULTS.items():
        if isinstance(empty, dict) and not isinstance(record[key], dict):
            record[key] = {}
    return cast(RunMetrics, record)


def write_export_settings(folder: Path, settings: ExportSettings) -> Path:
    """Write lmforge.json beside an exported model."""
    return write_json(folder, EXPORT_SETTINGS_FILE, settings)


def read_export_settings(folder: Path, key: str) -> ExportSettings:
    """The lmforge.json of an exported folder (empty when there is none); `key` names the
    setting that pointed at the folder in errors (`model_dir='...'`)."""
    path = folder / EXPORT_SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise LmforgeError(f"{key}: {path} is not valid JSON: {err}") from err
    if not isinstance(settings, dict):
        raise LmforgeError(f"{key}: {path} should hold a JSON object.")
    return cast(ExportSettings, settings)
