"""Reports over finished runs: one table and a few plots for a run, a multirun or a sweep.

`lmforge-report <dir>` finds every run directory under `<dir>` (a directory holding
`config.yaml` or `.hydra/`), reads each run's `metrics.json`, `.hydra/overrides.yaml` and
`csv/metrics.csv`, and writes into `<dir>/report/`:

- `report.csv` and `report.md`: one row per finished run, best first by the optimized metric,
  with the overrides that differ between runs and every test and validation metric;
- `learning_curves.png`: train and validation loss and the validation metric per epoch;
- `metric_vs_<key>.png`: the optimized metric against each swept hyperparameter;
- `confusion_matrix.png`: the best run's test confusion matrix (single-label classification).

The report is derived data: it is written again in place, and no run's own file is touched.
`plot_run_curves` draws the same learning curves into one run's directory at the end of
training. Matplotlib is imported only when a plot is drawn, through its Agg canvas (no pyplot),
so it needs no screen and leaves the caller's backend alone.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lmforge.errors import LmforgeError
from lmforge.reporting.formatting import lower_is_better, markdown_cell
from lmforge.runtime.rundir import CONFIG_FILE, METRICS_FILE

if TYPE_CHECKING:
    from matplotlib.axes import Axes

log = logging.getLogger(__name__)

HYDRA_DIR = ".hydra"
OVERRIDES_FILE = ".hydra/overrides.yaml"
CURVES_CSV = "csv/metrics.csv"
CURVES_PNG = "learning_curves.png"
CONFUSION_PNG = "confusion_matrix.png"
REPORT_DIR = "report"
REPORT_CSV = "report.csv"
REPORT_MD = "report.md"
PARAM_PNG_PREFIX = "metric_vs_"

# Runs drawn in colour and named in the legend; the others are drawn in grey, unnamed.
MAX_LEGEND_RUNS = 10
# Above this many labels the confusion matrix cells carry no count.
MAX_ANNOTATED_LABELS = 15
# Train-loss column candidates in csv/metrics.csv, most detailed first.
TRAIN_LOSS_KEYS = ("train/loss_step", "train/loss", "train/loss_epoch")
VAL_LOSS_KEY = "val/loss"
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
    metrics: dict[str, Any] | None = None
    skip_reason: str | None = None
    value: float | None = None
    curves: Curves | None = None
    no_curve_reason: str | None = None

    @property
    def optimized_metric(self) -> str | None:
        if self.metrics and self.metrics.get("optimized_metric"):
            return str(self.metrics["optimized_metric"])
        metric = self.config.get("optimized_metric")
        return str(metric) if metric else None


@dataclass
class Report:
    """The paths a report wrote and what it found."""

    markdown: Path
    files: list[Path] = field(default_factory=list)
    finished: list[Run] = field(default_factory=list)
    skipped: list[Run] = field(default_factory=list)


def write_report(
    path: str | Path,
    out: str | Path | None = None,
    metric: str | None = None,
    mode: str | None = None,
) -> Path:
    """Write report.csv, report.md and the plots for the run(s) under `path`; return report.md.

    Args:
        path: a run directory, or a directory holding run directories (a multirun or sweep).
        out: where the report goes; default `<path>/report`. Written again when it exists.
        metric: the metric that sorts the runs (a key of metrics.json's test/validation, or a
            top-level number such as `wall_time_seconds`); default the runs' `optimized_metric`.
        mode: `max` or `min`; default the runs' `optimized_mode` for their own metric.
    """
    return build_report(path, out, metric, mode).markdown


def build_report(
    path: str | Path,
    out: str | Path | None = None,
    metric: str | None = None,
    mode: str | None = None,
) -> Report:
    """`write_report`, returning every file written and the runs found."""
    root = Path(path).expanduser()
    if not root.exists():
        raise LmforgeError(
            f"{root}: no such directory. Give a run directory (outputs/train/runs/<time>) or a "
            "directory of runs (outputs/train/multiruns/<time>, outputs/train/sweeps/<study>)."
        )
    if not root.is_dir():
        raise LmforgeError(
            f"{root} is a file; lmforge-report takes a run directory or a directory of runs."
        )
    if mode is not None and mode not in ("max", "min"):
        raise LmforgeError(f"mode={mode!r}: expected 'max' or 'min'.")
    out_dir = Path(out).expanduser() if out is not None else root / REPORT_DIR
    if _is_run_dir(out_dir):
        raise LmforgeError(
            f"--out {out_dir} is a run directory; the report would overwrite that run's "
            f"{CURVES_PNG}. Write it elsewhere (default: <dir>/{REPORT_DIR})."
        )

    runs = []
    for run_dir in find_run_dirs(root, exclude=out_dir):
        if _is_training_run(run_dir):
            runs.append(_load_run(run_dir, root))
        else:
            log.info("Ignored %s: not a training run (lmforge-eval, -predict, -export)", run_dir)
    if not runs:
        raise LmforgeError(
            f"{root} holds no lmforge run (expected a training run directory holding "
            f"{CONFIG_FILE} or {HYDRA_DIR}/, such as outputs/train/runs/<time>, or a directory "
            "of them, such as outputs/train/multiruns/<time>)."
        )
    finished = [r for r in runs if r.metrics is not None]
    skipped = [r for r in runs if r.metrics is None]
    for run in skipped:
        log.warning("Skipped %s: %s", run.name, run.skip_reason)

    metric, mode = _sort_metric(finished, metric, mode)
    for run in finished:
        run.value = _metric_value(run.metrics or {}, metric)
    finished.sort(key=lambda r: _sort_key(r, mode))
    swept = _differing_keys(runs)
    shown = swept if len(runs) > 1 else sorted(runs[0].overrides, key=_natural_key)

    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_old_report(out_dir)
    report = Report(markdown=out_dir / REPORT_MD, finished=finished, skipped=skipped)
    columns, rows = _table(finished, shown)
    report.files.append(_write_csv(out_dir / REPORT_CSV, columns, rows))
    best = next((r for r in finished if _is_number(r.value)), finished[0] if finished else None)
    plots, param_plots = _write_plots(finished, swept, metric, mode, best, out_dir)
    report.files += [*plots.values(), *param_plots.values()]

    text = _markdown(root, runs, finished, skipped, shown, metric, mode, columns, rows, best)
    text += _markdown_plots(plots, param_plots, finished, metric, best)
    report.markdown.write_text(text, encoding="utf-8")
    report.files.insert(0, report.markdown)
    return report


def _write_plots(
    finished: list[Run], swept: list[str], metric: str, mode: str, best: Run | None, out_dir: Path
) -> tuple[dict[str, Path], dict[str, Path]]:
    """Draw the learning curves, the metric against each swept key and the best run's
    confusion matrix; return the plots written (by kind, and by swept key)."""
    plots: dict[str, Path] = {}
    curve_metric = metric if metric.startswith("val/") else _most_common_metric(finished)
    for run in finished:
        curves = read_curves(run.path, curve_metric)
        if isinstance(curves, str):
            run.no_curve_reason = curves
            log.info("No learning curve for %s: %s", run.name, curves)
        else:
            run.curves = curves
    if any(r.curves for r in finished):
        plots["curves"] = _plot_report_curves(finished, swept, curve_metric, out_dir / CURVES_PNG)
    param_plots = {}
    for key in swept:
        plotted = _plot_metric_vs(finished, key, metric, mode, out_dir)
        if plotted:
            param_plots[key] = plotted
    confusion = (best.metrics or {}).get("confusion_matrix") if best else None
    if best and confusion:
        plotted = plot_confusion_matrix(
            confusion, out_dir / CONFUSION_PNG, title=f"run {best.name}"
        )
        if plotted:
            plots["confusion"] = plotted
    return plots, param_plots


def plot_run_curves(run_dir: str | Path, metric: str | None = None) -> Path | None:
    """Draw a finished run's learning curves into `<run_dir>/learning_curves.png`.

    Called at the end of training: it never raises (a failed plot is logged as a warning), and
    without csv/metrics.csv (a logger other than csv) it logs that there is no curve.

    Args:
        run_dir: the run directory.
        metric: the validation metric of the right panel; default the run's optimized_metric.
    """
    run_dir = Path(run_dir)
    try:
        if metric is None:
            metric = str(_read_yaml(run_dir / CONFIG_FILE).get("optimized_metric") or "val/loss")
        curves = read_curves(run_dir, metric)
        if isinstance(curves, str):
            log.info("No learning curve: %s", curves)
            return None
        path = run_dir / CURVES_PNG
        _plot_curves([("", "tab:blue", curves)], metric, path, title=f"Run {run_dir.name}")
        log.info("Learning curves in %s", path)
        return path
    except Exception as err:  # a plot must never fail the run it describes
        log.warning("Could not draw the learning curves of %s: %s", run_dir, err)
        return None


def find_run_dirs(root: Path, exclude: Path | None = None) -> list[Path]:
    """Run directories at or under `root` (holding config.yaml or .hydra/), in natural order.

    A run directory's own subdirectories are not searched (its .hydra/ holds a config.yaml too),
    nor are hidden directories or `exclude` (the report's own directory).
    """
    excluded = exclude.resolve() if exclude is not None else None
    found = []
    for current, dirs, _files in os.walk(root):
        here = Path(current)
        if _is_run_dir(here):
            found.append(here)
            dirs.clear()
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".") and (here / d).resolve() != excluded]
    return sorted(found, key=lambda p: _natural_key(str(p)))


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


def plot_confusion_matrix(confusion: dict[str, Any], path: Path, title: str = "") -> Path | None:
    """Draw metrics.json's `confusion_matrix` (rows gold, columns predicted), each row
    normalised to 1, counts written in the cells when there are few labels; None when it is
    malformed."""
    labels = [str(label) for label in confusion.get("labels") or []]
    matrix = confusion.get("matrix") or []
    n = len(labels)
    if n == 0 or len(matrix) != n or any(len(row) != n for row in matrix):
        log.info("The confusion matrix of %s is malformed; not drawn.", title or path)
        return None
    import numpy as np

    counts = np.array(matrix, dtype=float)  # (gold, predicted)
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    side = min(max(4.0, 0.55 * n + 2.5), 20.0)
    figure = _figure(side + 1.0, side)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the gold row")
    axes.set_xticks(range(n), labels, rotation=45, ha="right", rotation_mode="anchor")
    axes.set_yticks(range(n), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("gold")
    split = confusion.get("split") or "test"
    axes.set_title(f"Confusion matrix ({split}){': ' + title if title else ''}")
    if n <= MAX_ANNOTATED_LABELS:
        for i in range(n):
            for j in range(n):
                colour = "white" if share[i, j] > 0.5 else "black"
                text = f"{int(counts[i, j])}\n{share[i, j]:.0%}"
                axes.text(j, i, text, ha="center", va="center", color=colour, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def _is_run_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() or (path / HYDRA_DIR).is_dir()


def _is_training_run(run_dir: Path) -> bool:
    """False for the directories of lmforge-eval, -predict and -export, whose configs have no
    optimized_metric; a directory whose config cannot be read counts as a training run."""
    for path in (run_dir / CONFIG_FILE, run_dir / HYDRA_DIR / CONFIG_FILE):
        config = _read_yaml(path)
        if isinstance(config, dict) and config:
            return "optimized_metric" in config
    return True


def _natural_key(text: str) -> list[Any]:
    """Sort '10' after '9': digit runs compare as numbers."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text)]


def _read_yaml(path: Path) -> Any:
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


def _load_run(run_dir: Path, root: Path) -> Run:
    relative = run_dir.relative_to(root).as_posix() if run_dir != root else run_dir.name
    config = _read_yaml(run_dir / CONFIG_FILE)
    run = Run(
        path=run_dir,
        name=relative or str(run_dir),
        overrides=_parse_overrides(_read_yaml(run_dir / OVERRIDES_FILE)),
        config=config if isinstance(config, dict) else {},
    )
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.is_file():
        run.skip_reason = _failure_reason(run_dir, run.config)
        return run
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        run.skip_reason = f"{METRICS_FILE} could not be read: {err}"
        return run
    if not isinstance(metrics, dict) or not ("test" in metrics or "validation" in metrics):
        run.skip_reason = f"{METRICS_FILE} holds no test or validation metrics (not a training run)"
        return run
    run.metrics = metrics
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


def _most_common_metric(runs: list[Run]) -> str:
    names = [r.optimized_metric for r in runs if r.optimized_metric]
    return Counter(names).most_common(1)[0][0] if names else VAL_LOSS_KEY


def _sort_metric(runs: list[Run], metric: str | None, mode: str | None) -> tuple[str, str]:
    """The metric and mode that sort the runs: given, else the runs' own (the most common
    optimized_metric when runs of different tasks disagree)."""
    if not runs:
        return metric or VAL_LOSS_KEY, mode or "min"
    if metric is None:
        names = {r.optimized_metric for r in runs}
        metric = _most_common_metric(runs)
        if len(names) > 1:
            log.warning(
                "The runs optimize different metrics (%s); sorting by %s (choose with --metric).",
                ", ".join(sorted(str(n) for n in names)),
                metric,
            )
    elif all(_metric_value(r.metrics or {}, metric) is None for r in runs):
        known = sorted({k for r in runs for k in _metric_names(r.metrics or {})})
        raise LmforgeError(
            f"--metric {metric}: no finished run recorded it in {METRICS_FILE}. Expected one of: "
            f"{', '.join(known)}."
        )
    if mode is None:
        mode = _mode_of(runs, metric)
    return metric, mode


def _mode_of(runs: list[Run], metric: str) -> str:
    """The runs' optimized_mode for their own metric, else the comparison's direction, else
    min for losses, perplexity, times and memory, max for the rest."""
    for run in runs:
        if run.optimized_metric == metric and run.config.get("optimized_mode") in ("max", "min"):
            return str(run.config["optimized_mode"])
    for run in runs:
        rows = ((run.metrics or {}).get("comparison") or {}).get("rows") or {}
        row = rows.get(metric) if isinstance(rows, dict) else None
        if isinstance(row, dict) and "higher_is_better" in row:
            return "max" if row["higher_is_better"] else "min"
    return "min" if lower_is_better(metric) else "max"


def _metric_names(metrics: dict[str, Any]) -> list[str]:
    names = [*(metrics.get("test") or {}), *(metrics.get("validation") or {})]
    return names + [k for k, v in metrics.items() if _is_number(v)]


def _metric_value(metrics: dict[str, Any], metric: str) -> float | None:
    """`metric` from the test or validation results, the best validation score, or a
    top-level number of metrics.json (wall_time_seconds, ...)."""
    for split in ("test", "validation"):
        values = metrics.get(split) or {}
        if isinstance(values, dict) and metric in values:
            return _number(values[metric])
    best = metrics.get("best_validation") or {}
    if isinstance(best, dict) and best.get("metric") == metric:
        return _number(best.get("value"))
    return _number(metrics.get(metric)) if _is_number(metrics.get(metric)) else None


def _number(value: Any) -> float | None:
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def _sort_key(run: Run, mode: str) -> tuple[int, float, list[Any]]:
    """Best first; runs without a value (missing, NaN) last, in path order."""
    if not _is_number(run.value):
        return (1, 0.0, _natural_key(run.name))
    value = float(run.value)  # type: ignore[arg-type]
    return (0, -value if mode == "max" else value, _natural_key(run.name))


def _differing_keys(runs: list[Run]) -> list[str]:
    """Override keys whose value is not the same in every run (absent counts as a value)."""
    keys = sorted({k for r in runs for k in r.overrides}, key=_natural_key)
    return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]


def _table(runs: list[Run], override_keys: list[str]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of report.csv: run, overrides, best validation, metrics, cost."""
    tasks = {(r.metrics or {}).get("task") for r in runs}
    optimized = {r.optimized_metric for r in runs}
    test_keys: list[str] = []
    val_keys: list[str] = []
    for run in runs:
        for split, keys in (("test", test_keys), ("validation", val_keys)):
            values = (run.metrics or {}).get(split) or {}
            keys += [k for k in values if k not in keys]
    columns = ["run", *override_keys]
    columns += ["task"] if len(tasks) > 1 else []
    columns += ["optimized_metric"] if len(optimized) > 1 else []
    columns += ["best_validation", *test_keys, *val_keys]
    columns += ["wall_time_seconds", "train_samples_per_second"]
    columns += ["trainable_parameters", "trainable_percent", "epochs_completed"]
    rows = []
    for run in runs:
        metrics = run.metrics or {}
        parameters = metrics.get("parameters") or {}
        cells: dict[str, Any] = {
            "run": run.name,
            **{k: run.overrides.get(k) for k in override_keys},
            "task": metrics.get("task"),
            "optimized_metric": run.optimized_metric,
            "best_validation": (metrics.get("best_validation") or {}).get("value"),
            **{k: (metrics.get("test") or {}).get(k) for k in test_keys},
            **{k: (metrics.get("validation") or {}).get(k) for k in val_keys},
            "wall_time_seconds": metrics.get("wall_time_seconds"),
            "train_samples_per_second": metrics.get("train_samples_per_second"),
            "trainable_parameters": parameters.get("trainable"),
            "trainable_percent": parameters.get("trainable_percent"),
            "epochs_completed": metrics.get("epochs_completed"),
        }
        rows.append([cells.get(c) for c in columns])
    return columns, rows


def _remove_old_report(out_dir: Path) -> None:
    """Delete the files an earlier report wrote here (a sweep's parameters may have changed)."""
    names = {REPORT_CSV, REPORT_MD, CURVES_PNG, CONFUSION_PNG}
    for path in out_dir.iterdir():
        if path.is_file() and (path.name in names or path.name.startswith(PARAM_PNG_PREFIX)):
            path.unlink()


def _write_csv(path: Path, columns: list[str], rows: list[list[Any]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    return path


def _overrides_text(run: Run, keys: list[str]) -> str:
    return " ".join(f"{k}={run.overrides[k]}" for k in keys if k in run.overrides)


def _markdown(
    root: Path,
    runs: list[Run],
    finished: list[Run],
    skipped: list[Run],
    shown: list[str],
    metric: str,
    mode: str,
    columns: list[str],
    rows: list[list[Any]],
    best: Run | None,
) -> str:
    """The header (runs found, sort order, best run), the runs table and the skipped runs;
    `shown` are the override keys of the table."""
    lines = [f"# lmforge report: {root}", ""]
    lines.append(f"- runs: {len(finished)} finished, {len(skipped)} skipped ({len(runs)} found)")
    if finished:
        lines.append(f"- sorted by `{metric}` ({mode}), best first")
    if best is not None and _is_number(best.value):
        overrides = _overrides_text(best, shown)
        lines.append(
            f"- best run: `{best.name}` ({metric} = {markdown_cell(best.value)})"
            + (f", overrides `{overrides}`" if overrides else "")
        )
    shared = sorted(set.intersection(*(set(r.overrides.items()) for r in runs)))
    if len(runs) > 1 and shared:
        lines.append("- overrides of every run: `" + " ".join(f"{k}={v}" for k, v in shared) + "`")
    lines.append("")
    if finished:
        lines += ["## Runs", ""]
        lines.append("| " + " | ".join(markdown_cell(c) for c in columns) + " |")
        lines.append("| " + " | ".join("---" for _ in columns) + " |")
        lines += ["| " + " | ".join(markdown_cell(v) for v in row) + " |" for row in rows]
        lines.append("")
    if skipped:
        lines += ["## Skipped", ""]
        for run in skipped:
            overrides = _overrides_text(run, shown)
            detail = f" ({overrides})" if overrides else ""
            lines.append(f"- `{run.name}`{detail}: {markdown_cell(run.skip_reason)}")
        lines.append("")
    return "\n".join(lines) + "\n"


def _markdown_plots(
    plots: dict[str, Path],
    param_plots: dict[str, Path],
    finished: list[Run],
    metric: str,
    best: Run | None,
) -> str:
    lines: list[str] = []
    if finished:
        lines += ["## Learning curves", ""]
        if "curves" in plots:
            lines += [f"![learning curves]({plots['curves'].name})", ""]
        without = [r for r in finished if r.no_curve_reason]
        lines += [f"- `{r.name}`: no curve, {r.no_curve_reason}" for r in without]
        lines += [""] if without else []
    if param_plots:
        lines += [f"## {metric} against each swept hyperparameter", ""]
        for key, path in param_plots.items():
            lines += [f"![{metric} against {key}]({path.name})", ""]
    if "confusion" in plots and best is not None:
        lines += [f"## Confusion matrix of the best run (`{best.name}`)", ""]
        lines += [f"![confusion matrix]({plots['confusion'].name})", ""]
    return "\n".join(lines)


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure on the Agg canvas: no pyplot, no screen, no global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _legend_label(run: Run, keys: list[str]) -> str:
    label = _overrides_text(run, keys) or run.name
    return label if len(label) <= 60 else label[:57] + "..."


def _plot_report_curves(runs: list[Run], keys: list[str], metric: str, path: Path) -> Path:
    """All runs' curves on one figure: the best MAX_LEGEND_RUNS in colour and named."""
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    drawn = [(run, run.curves) for run in runs if run.curves is not None]
    entries: list[tuple[str, Any, Curves]] = [
        (_legend_label(run, keys), palette(rank % 10), curves)
        if rank < MAX_LEGEND_RUNS
        else ("", None, curves)
        for rank, (run, curves) in enumerate(drawn)
    ]
    others = max(len(drawn) - MAX_LEGEND_RUNS, 0)
    title = (f"{len(entries)} runs" if len(entries) != 1 else "1 run") + (
        f" ({others} more in grey)" if others else ""
    )
    return _plot_curves(entries, metric, path, title=title)


def _plot_curves(
    entries: list[tuple[str, Any, Curves]], metric: str, path: Path, title: str = ""
) -> Path:
    """Two panels: train loss (line) and validation loss (dashed, dots) per epoch; the
    validation `metric` per epoch. Entries are (legend label, colour, curves); a None colour
    draws the run in grey without a legend entry."""
    from matplotlib.lines import Line2D

    named = [e for e in entries if e[0]]
    figure = _figure(12.0, 4.6 + 0.22 * math.ceil(len(named) / 2))
    loss_axes, metric_axes = figure.subplots(1, 2)
    for label, colour, curves in entries:
        grey = colour is None
        colour = "0.65" if grey else colour
        width, alpha = (0.8, 0.5) if grey else (1.2, 0.9)
        xs, ys = curves.train_loss
        loss_axes.plot(xs, ys, color=colour, linewidth=width, alpha=alpha)
        xs, ys = curves.val_loss
        loss_axes.plot(xs, ys, color=colour, linestyle="--", marker="o", markersize=3, alpha=alpha)
        xs, ys = curves.val_metric
        metric_axes.plot(xs, ys, color=colour, marker="o", markersize=3, alpha=alpha, label=label)
    _style_axes(loss_axes, "loss")
    _style_axes(metric_axes, metric)
    loss_axes.legend(
        handles=[
            Line2D([], [], color="0.3", label="train"),
            Line2D([], [], color="0.3", linestyle="--", marker="o", markersize=3, label="val"),
        ],
        loc="upper right",
        fontsize=8,
    )
    if not any(curves.val_metric[0] for _, _, curves in entries):
        metric_axes.text(
            0.5, 0.5, f"no {metric} logged", ha="center", transform=metric_axes.transAxes
        )
    if title:
        figure.suptitle(title, fontsize=10)
    if named:
        figure.legend(
            handles=[
                Line2D([], [], color=colour, marker="o", markersize=3, label=label)
                for label, colour, _ in named
            ],
            loc="lower center",
            ncol=2,
            fontsize=8,
            frameon=False,
        )
        bottom = (0.22 * math.ceil(len(named) / 2) + 0.15) / figure.get_figheight()
        figure.tight_layout(rect=(0, bottom, 1, 1))
    else:
        figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def _style_axes(axes: Axes, ylabel: str) -> None:
    axes.set_xlabel("epoch")
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)


def _plot_metric_vs(
    runs: list[Run], key: str, metric: str, mode: str, out_dir: Path
) -> Path | None:
    """The sorting metric against one swept override: a scatter for numbers (log x when the
    values span two decades or more), a box and strip per value otherwise."""
    pairs = [(r.overrides.get(key), r.value) for r in runs if _is_number(r.value)]
    if len(pairs) < 2:
        return None
    numbers = [_number(v) for v, _ in pairs]
    numeric = all(n is not None and math.isfinite(n) for n in numbers)
    figure = _figure(6.0, 4.2)
    axes = figure.add_subplot(1, 1, 1)
    best_index = 0  # runs are sorted best first
    if numeric:
        xs = [float(n) for n in numbers]  # type: ignore[arg-type]
        ys = [float(y) for _, y in pairs]  # type: ignore[arg-type]
        axes.scatter(xs, ys, color="tab:blue", alpha=0.8)
        axes.scatter(
            xs[best_index], ys[best_index], marker="*", s=160, color="tab:red", label="best"
        )
        if min(xs) > 0 and max(xs) / min(xs) >= 100:
            axes.set_xscale("log")
    else:
        import numpy as np

        values = [str(v) if v is not None else "(not set)" for v, _ in pairs]
        scores = [float(y) for _, y in pairs]  # type: ignore[arg-type]
        categories = sorted(set(values), key=_natural_key)
        groups = [[s for v, s in zip(values, scores, strict=True) if v == c] for c in categories]
        positions = list(range(len(categories)))
        axes.boxplot(groups, positions=positions, widths=0.5, showfliers=False)
        jitter = np.random.default_rng(0)
        for position, group in zip(positions, groups, strict=True):
            offsets = jitter.uniform(-0.12, 0.12, len(group))
            axes.scatter(position + offsets, group, color="tab:blue", alpha=0.8, zorder=3)
        best_position = categories.index(values[best_index])
        axes.scatter(
            best_position,
            scores[best_index],
            marker="*",
            s=160,
            color="tab:red",
            zorder=4,
            label="best",
        )
        axes.set_xticks(positions, categories, rotation=30 if len(categories) > 4 else 0)
    axes.set_xlabel(key)
    axes.set_ylabel(f"{metric} ({mode})")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    axes.set_title(f"{metric} against {key} ({len(pairs)} runs)", fontsize=10)
    figure.tight_layout()
    path = out_dir / f"{PARAM_PNG_PREFIX}{re.sub(r'[^0-9A-Za-z_.-]+', '_', key)}.png"
    figure.savefig(path, dpi=100)
    return path
