"""Finding runs and reading what they recorded, for reports: the run directories under a
folder, and of each its config, command-line overrides, metrics.json, the error line of a run
that failed, and its learning curves (csv/metrics.csv)."""

from __future__ import annotations

import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lmforge.errors import LmforgeError
from lmforge.runtime.record import RunMetrics, read_run_metrics
from lmforge.runtime.rundir import CONFIG_FILE, METRICS_FILE

log = logging.getLogger(__name__)


HYDRA_DIR = ".hydra"


OVERRIDES_FILE = ".hydra/overrides.yaml"


CURVES_CSV = "csv/metrics.csv"


# Train-loss column candidates in csv/metrics.csv, most detailed first.
TRAIN_LOSS_KEYS = ("train/loss_step", "train/loss", "train/loss_epoch")


VAL_LOSS_KEY = "val/loss"


# The override that only repeats a run with other random draws (reports group runs over it).
SEED_KEY = "seed"


NO_METRICS_REASON = "no metrics.json: the run failed or was interrupted"


# A log line that reports a failure: our own error lines, logging levels, Python exceptions.
ERROR_LINE = re.compile(
    r"lmforge: error:|\[(ERROR|CRITICAL)\]|\b(ERROR|CRITICAL)\b|^\s*Traceback|"
    r"\b[A-Za-z_]\w*(Error|Exception|Interrupt)\b|[Ii]nterrupted"
)


# Hydra's log line prefix: [time][logger][LEVEL] - message
LOG_PREFIX = re.compile(r"^\[[^\]]*\]\[[^\]]*\]\[\w+\] - ")


@dataclass
class Curves:
    """One run's logged curves; x values are epochs (fractions within an epoch)."""

    train_loss: tuple[list[float], list[float]]
    val_loss: tuple[list[float], list[float]]
    val_metric: tuple[list[float], list[float]]


@dataclass
class Run:
    """What the report knows about one run directory."""

    path: Path
    name: str
    overrides: dict[str, str]
    config: dict[str, Any]
    metrics: RunMetrics | None = None
    skip_reason: str | None = None
    value: float | None = None
    curves: Curves | None = None
    no_curve_reason: str | None = None

    @property
    def optimized_metric(self) -> str | None:
        if self.metrics and self.metrics["optimized_metric"]:
            return self.metrics["optimized_metric"]
        metric = self.config.get("optimized_metric")
        return str(metric) if metric else None


def find_run_dirs(root: Path, exclude: Path | None = None) -> list[Path]:
    """Run directories at or under `root` (holding config.yaml or .hydra/), in natural order.

    A run directory's own subdirectories are not searched (its .hydra/ holds a config.yaml too),
    nor are hidden directories or `exclude` (the report's own directory).
    """
    excluded = exclude.resolve() if exclude is not None else None
    found = []
    for current, dirs, _files in os.walk(root):
        here = Path(current)
        if is_run_dir(here):
            found.append(here)
            dirs.clear()
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".") and (here / d).resolve() != excluded]
    return sorted(found, key=lambda p: natural_key(str(p)))


def read_curves(run_dir: Path, metric: str) -> Curves | str:
    """A run's train loss, validation loss and validation `metric` from csv/metrics.csv, or the
    reason there are none.

    Rows of the evaluation after fit (the best checkpoint's validate/test) fall in an epoch
    without training rows and are left out. x is the epoch: step s of epoch e maps to
    e + (s - end of epoch e-1) / (steps of epoch e), so an end-of-epoch validation sits at e + 1
    and runs with different batch sizes share an axis.
    """
    path = Path(run_dir) / CURVES_CSV
    if not path.is_file():
        return f"no {CURVES_CSV} (the run logged without the CSV logger; logger=csv writes it)"
    import pandas as pd

    try:
        frame = pd.read_csv(path, on_bad_lines="skip")
    except (ValueError, OSError) as err:
        return f"{path} could not be read: {err}"
    if not {"epoch", "step"} <= set(frame.columns):
        return f"{path} has no epoch and step columns (not a Lightning CSV log)"
    for column in frame.columns:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    train_columns = [c for c in frame.columns if str(c).startswith("train/")]
    located = frame["epoch"].notna() & frame["step"].notna()
    train_rows: Any = (
        frame[located & frame[train_columns].notna().any(axis=1)] if train_columns else []
    )
    if len(train_rows) == 0:
        return f"{path} holds no training rows (train=false, or the run stopped before logging)"
    # The last step of each trained epoch, and of the epoch before it.
    ends = train_rows.groupby("epoch")["step"].max().sort_index()
    end = {float(e): float(s) for e, s in ends.items()}
    start = dict(zip(end, [-1.0, *list(end.values())[:-1]], strict=True))

    def to_epoch(epoch: float, step: float) -> float:
        span = end[epoch] - start[epoch]
        fraction = (step - start[epoch]) / span if span > 0 else 1.0
        return epoch + min(max(fraction, 0.0), 1.0)

    def series(column: str) -> tuple[list[float], list[float]]:
        if column not in frame.columns:
            return [], []
        rows = frame[located & frame[column].notna() & frame["epoch"].isin(list(end))]
        xs = [
            to_epoch(float(e), float(s)) for e, s in zip(rows["epoch"], rows["step"], strict=True)
        ]
        return xs, [float(v) for v in rows[column]]

    train_key = next((k for k in TRAIN_LOSS_KEYS if k in frame and frame[k].notna().any()), "")
    return Curves(
        train_loss=series(train_key) if train_key else ([], []),
        val_loss=series(VAL_LOSS_KEY),
        val_metric=series(metric) if metric != VAL_LOSS_KEY else ([], []),
    )


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() or (path / HYDRA_DIR).is_dir()


def is_training_run(run_dir: Path) -> bool:
    """False for the directories of lmforge-eval, -predict and -export, whose configs have no
    optimized_metric; a directory whose config cannot be read counts as a training run."""
    for path in (run_dir / CONFIG_FILE, run_dir / HYDRA_DIR / CONFIG_FILE):
        config = read_yaml(path)
        if isinstance(config, dict) and config:
            return "optimized_metric" in config
    return True


def natural_key(text: str) -> list[Any]:
    """Sort '10' after '9': digit runs compare as numbers."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text)]


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _parse_overrides(items: Any) -> dict[str, str]:
    """`key=value` overrides as a dict (`+key`, `++key` count as `key`; `~key` as removed)."""
    overrides: dict[str, str] = {}
    for item in items if isinstance(items, list) else []:
        text = str(item).strip()
        if text.startswith("~"):
            overrides[text[1:].partition("=")[0]] = "(removed)"
            continue
        key, sep, value = text.partition("=")
        if sep:
            overrides[key.lstrip("+")] = value
    return overrides


def load_run(run_dir: Path, root: Path) -> Run:
    relative = run_dir.relative_to(root).as_posix() if run_dir != root else run_dir.name
    config = read_yaml(run_dir / CONFIG_FILE)
    run = Run(
        path=run_dir,
        name=relative or str(run_dir),
        overrides=_parse_overrides(read_yaml(run_dir / OVERRIDES_FILE)),
        config=config if isinstance(config, dict) else {},
    )
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.is_file():
        run.skip_reason = _failure_reason(run_dir, run.config)
        return run
    try:
        run.metrics = read_run_metrics(metrics_path)
    except LmforgeError as err:
        run.skip_reason = str(err).replace(str(metrics_path), METRICS_FILE)
    return run


def _failure_reason(run_dir: Path, config: dict[str, Any]) -> str:
    """The last error line of the run's log file, else the generic reason."""
    task_name = config.get("task_name")
    logs = [run_dir / f"{task_name}.log"] if task_name else []
    logs += sorted(p for p in run_dir.glob("*.log") if p not in logs)
    for log_file in logs:
        if not log_file.is_file():
            continue
        try:
            lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in reversed(lines):
            if ERROR_LINE.search(line):
                message = LOG_PREFIX.sub("", line.strip())
                if len(message) > 300:
                    message = message[:297] + "..."
                return f"{message} (last error line of {log_file.name})"
    return NO_METRICS_REASON


def most_common_metric(runs: list[Run]) -> str:
    names = [r.optimized_metric for r in runs if r.optimized_metric]
    return Counter(names).most_common(1)[0][0] if names else VAL_LOSS_KEY


def number(value: Any) -> float | None:
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def overrides_text(run: Run, keys: list[str]) -> str:
    return " ".join(f"{k}={run.overrides[k]}" for k in keys if k in run.overrides)
