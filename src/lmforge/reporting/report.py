"""Reports over finished runs: one table and a few plots for a run, a multirun or a sweep.

`lmforge-report <dir>` finds every run directory under `<dir>` (a directory holding
`config.yaml` or `.hydra/`), reads each run's `metrics.json`, `.hydra/overrides.yaml` and
`csv/metrics.csv`, and writes into `<dir>/report/`:

- `report.csv` and `report.md`: one row per finished run, best first by the optimized metric,
  with the overrides that differ between runs and every test and validation metric;
- `report_seeds.csv` (and a section of report.md), where runs differ in `seed`: the runs that
  differ only in their seed grouped, with n and the mean and sample standard deviation of each
  metric, best group first;
- `learning_curves.png`: train and validation loss and the validation metric per epoch;
- `metric_vs_<key>.png`: the optimized metric against each swept hyperparameter;
- `confusion_matrix.png`: the best run's test confusion matrix (single-label classification).

The report is derived data: it is written again in place, and no run's own file is touched.
Run discovery lives in `reporting.discovery`, the plots in `reporting.plots` (which also draws
one run's learning curves at the end of training).
"""

from __future__ import annotations

import csv
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from lmforge.errors import LmforgeError
from lmforge.reporting.discovery import (
    HYDRA_DIR,
    SEED_KEY,
    VAL_LOSS_KEY,
    Run,
    find_run_dirs,
    is_number,
    is_run_dir,
    is_training_run,
    load_run,
    most_common_metric,
    natural_key,
    number,
    overrides_text,
)
from lmforge.reporting.formatting import lower_is_better, markdown_cell
from lmforge.reporting.plots import CONFUSION_PNG, CURVES_PNG, PARAM_PNG_PREFIX, write_plots
from lmforge.runtime.record import RunMetrics
from lmforge.runtime.rundir import CONFIG_FILE, METRICS_FILE

log = logging.getLogger(__name__)


REPORT_DIR = "report"


REPORT_CSV = "report.csv"


REPORT_MD = "report.md"


SEEDS_CSV = "report_seeds.csv"
# Overrides a sweep gives each trial's run to name its study and trial (not settings).
TRIAL_PREFIX = "trial."


# The override that repeats a run with other random numbers: runs differing only in it are one
# setting measured several times.


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
    if is_run_dir(out_dir):
        raise LmforgeError(
            f"--out {out_dir} is a run directory; the report would overwrite that run's "
            f"{CURVES_PNG}. Write it elsewhere (default: <dir>/{REPORT_DIR})."
        )

    runs = []
    for run_dir in find_run_dirs(root, exclude=out_dir):
        if is_training_run(run_dir):
            runs.append(load_run(run_dir, root))
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
        run.value = _metric_value(run.metrics, metric) if run.metrics else None
    finished.sort(key=lambda r: _sort_key(r, mode))
    swept = _differing_keys(runs)
    shown = swept if len(runs) > 1 else sorted(runs[0].overrides, key=natural_key)

    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_old_report(out_dir)
    report = Report(markdown=out_dir / REPORT_MD, finished=finished, skipped=skipped)
    columns, rows = _table(finished, shown)
    report.files.append(_write_csv(out_dir / REPORT_CSV, columns, rows))
    groups = _seed_groups(finished, swept, metric, mode)
    seed_columns: list[str] = []
    seed_rows: list[list[Any]] = []
    if groups:
        seed_columns, seed_rows = _seed_table(groups, columns)
        report.files.append(_write_csv(out_dir / SEEDS_CSV, seed_columns, seed_rows))
    best = next((r for r in finished if is_number(r.value)), finished[0] if finished else None)
    plots, param_plots = write_plots(finished, swept, metric, mode, best, out_dir)
    report.files += [*plots.values(), *param_plots.values()]

    text = _markdown(root, runs, finished, skipped, shown, metric, mode, columns, rows, best)
    text += _markdown_seeds(groups, seed_columns, seed_rows, metric)
    text += _markdown_plots(plots, param_plots, finished, metric, best)
    report.markdown.write_text(text, encoding="utf-8")
    report.files.insert(0, report.markdown)
    return report


def _sort_metric(runs: list[Run], metric: str | None, mode: str | None) -> tuple[str, str]:
    """The metric and mode that sort the runs: given, else the runs' own (the most common
    optimized_metric when runs of different tasks disagree)."""
    if not runs:
        return metric or VAL_LOSS_KEY, mode or "min"
    if metric is None:
        names = {r.optimized_metric for r in runs}
        metric = most_common_metric(runs)
        if len(names) > 1:
            log.warning(
                "The runs optimize different metrics (%s); sorting by %s (choose with --metric).",
                ", ".join(sorted(str(n) for n in names)),
                metric,
            )
    elif all(r.metrics is None or _metric_value(r.metrics, metric) is None for r in runs):
        known = sorted({k for r in runs if r.metrics for k in _metric_names(r.metrics)})
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
        rows = run.metrics["comparison"].get("rows") if run.metrics else None
        row = rows.get(metric) if isinstance(rows, dict) else None
        if isinstance(row, dict) and "higher_is_better" in row:
            return "max" if row["higher_is_better"] else "min"
    return "min" if lower_is_better(metric) else "max"


def _metric_names(metrics: RunMetrics) -> list[str]:
    names = [*metrics["test"], *metrics["validation"]]
    return names + [k for k, v in metrics.items() if is_number(v)]


def _metric_value(metrics: RunMetrics, metric: str) -> float | None:
    """`metric` from the test or validation results, the best validation score, or a
    top-level number of metrics.json (wall_time_seconds, ...)."""
    for values in (metrics["test"], metrics["validation"]):
        if metric in values:
            return number(values[metric])
    best = metrics["best_validation"]
    if best and best["metric"] == metric:
        return number(best["value"])
    top = cast("dict[str, Any]", metrics).get(metric)
    return number(top) if is_number(top) else None


def _sort_key(run: Run, mode: str) -> tuple[int, float, list[Any]]:
    """Best first; runs without a value (missing, NaN) last, in path order."""
    if not is_number(run.value):
        return (1, 0.0, natural_key(run.name))
    value = float(run.value)  # type: ignore[arg-type]
    return (0, -value if mode == "max" else value, natural_key(run.name))


def _differing_keys(runs: list[Run]) -> list[str]:
    """Override keys whose value is not the same in every run (absent counts as a value)."""
    keys = sorted({k for r in runs for k in r.overrides}, key=natural_key)
    # A sweep tells each trial's run its study and trial number (trial.*): not a setting.
    keys = [k for k in keys if not k.startswith(TRIAL_PREFIX)]
    return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]


def _table(runs: list[Run], override_keys: list[str]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of report.csv: run, overrides, best validation, metrics, cost."""
    tasks = {r.metrics["task"] for r in runs if r.metrics}
    optimized = {r.optimized_metric for r in runs}
    test_keys: list[str] = []
    val_keys: list[str] = []
    for run in runs:
        if not run.metrics:
            continue
        for values, keys in (
            (run.metrics["test"], test_keys),
            (run.metrics["validation"], val_keys),
        ):
            keys += [k for k in values if k not in keys]
    columns = ["run", *override_keys]
    columns += ["task"] if len(tasks) > 1 else []
    columns += ["optimized_metric"] if len(optimized) > 1 else []
    columns += ["best_validation", *test_keys, *val_keys]
    columns += ["wall_time_seconds", "train_samples_per_second"]
    columns += ["mfu"] if any(_cells(r).get("mfu") is not None for r in runs) else []
    columns += ["trainable_parameters", "trainable_percent", "epochs_completed"]
    columns += ["pruned_at_epoch"] if any(_pruned(r) for r in runs) else []
    rows = [[_cells(run).get(c) for c in columns] for run in runs]
    return columns, rows


def _cells(run: Run) -> dict[str, Any]:
    """One run's report.csv values by column."""
    cells: dict[str, Any] = {
        "run": run.name,
        **run.overrides,
        "optimized_metric": run.optimized_metric,
    }
    if (metrics := run.metrics) is not None:
        parameters = metrics["parameters"]
        best = metrics["best_validation"]
        cells |= {
            "task": metrics["task"],
            "best_validation": best["value"] if best else None,
            **metrics["validation"],
            **metrics["test"],
            "wall_time_seconds": metrics["wall_time_seconds"],
            "train_samples_per_second": metrics["train_samples_per_second"],
            "mfu": (metrics.get("efficiency") or {}).get("mfu"),
            "trainable_parameters": parameters["trainable"] if parameters else None,
            "trainable_percent": parameters["trainable_percent"] if parameters else None,
            "epochs_completed": metrics["epochs_completed"],
            "pruned_at_epoch": pruned["epoch"] if (pruned := _pruned(run)) else None,
        }
    return cells


def _pruned(run: Run) -> dict[str, Any] | None:
    """Where the sweep's pruner stopped a run (None: it was not pruned; older runs say nothing)."""
    return run.metrics.get("pruned") if run.metrics else None


def _pruning_line(runs: list[Run]) -> str | None:
    """How many runs the sweep's pruner stopped, and the epochs that saved against each of
    them running to its trainer.max_epochs."""
    pruned = [r for r in runs if _pruned(r)]
    if not pruned:
        return None
    saved = 0
    for run in pruned:
        limit = run.config.get("trainer", {}).get("max_epochs") if run.config else None
        if isinstance(limit, int) and limit > 0 and run.metrics:
            saved += max(limit - run.metrics["epochs_completed"], 0)
    names = ", ".join(f"`{r.name}` (epoch {(_pruned(r) or {}).get('epoch')})" for r in pruned)
    return (
        f"- pruned by the sweep's pruner: {len(pruned)} of {len(runs)} runs, {saved} "
        f"epoch(s) not trained against trainer.max_epochs: {names}"
    )


@dataclass
class SeedGroup:
    """Finished runs whose overrides differ only in `seed`."""

    settings: dict[str, str | None]
    runs: list[Run]
    value: float | None


def _seed_groups(runs: list[Run], swept: list[str], metric: str, mode: str) -> list[SeedGroup]:
    """The runs grouped by every swept override but the seed, best mean of `metric` first;
    none when the seed is not among the swept overrides."""
    if SEED_KEY not in swept:
        return []
    others = [k for k in swept if k != SEED_KEY]
    grouped: dict[tuple[str | None, ...], list[Run]] = {}
    for run in runs:
        grouped.setdefault(tuple(run.overrides.get(k) for k in others), []).append(run)
    groups = []
    for key, members in grouped.items():
        values = [float(r.value) for r in members if is_number(r.value)]  # type: ignore[arg-type]
        mean = statistics.fmean(values) if values else None
        groups.append(SeedGroup(dict(zip(others, key, strict=True)), members, mean))
    sign = -1 if mode == "max" else 1
    groups.sort(key=lambda g: (g.value is None, sign * (g.value or 0.0)))
    return groups


def _seed_table(
    groups: list[SeedGroup], run_columns: list[str]
) -> tuple[list[str], list[list[Any]]]:
    """report_seeds.csv: per group its settings, n and seeds, then the mean and the sample
    standard deviation (n - 1; empty for one value) of every numeric column of report.csv."""
    settings = list(groups[0].settings)
    numeric = [c for c in run_columns if c not in ("run", "task", "optimized_metric", *settings)]
    cells = {id(r): _cells(r) for g in groups for r in g.runs}
    numeric = [
        c
        for c in numeric
        if c != SEED_KEY and any(is_number(cells[id(r)].get(c)) for g in groups for r in g.runs)
    ]
    columns = [*settings, "n", "seeds"]
    columns += [f"{c}_{stat}" for c in numeric for stat in ("mean", "sd")]
    rows = []
    for group in groups:
        seeds = sorted((str(r.overrides.get(SEED_KEY)) for r in group.runs), key=natural_key)
        row: list[Any] = [*group.settings.values(), len(group.runs), " ".join(seeds)]
        for column in numeric:
            values = [
                float(cells[id(r)][column])
                for r in group.runs
                if is_number(cells[id(r)].get(column))
            ]
            row.append(statistics.fmean(values) if values else None)
            row.append(statistics.stdev(values) if len(values) > 1 else None)
        rows.append(row)
    return columns, rows


def _remove_old_report(out_dir: Path) -> None:
    """Delete the files an earlier report wrote here (a sweep's parameters may have changed)."""
    names = {REPORT_CSV, REPORT_MD, SEEDS_CSV, CURVES_PNG, CONFUSION_PNG}
    for path in out_dir.iterdir():
        if path.is_file() and (path.name in names or path.name.startswith(PARAM_PNG_PREFIX)):
            path.unlink()


def _write_csv(path: Path, columns: list[str], rows: list[list[Any]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    return path


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
    if best is not None and is_number(best.value):
        overrides = overrides_text(best, shown)
        lines.append(
            f"- best run: `{best.name}` ({metric} = {markdown_cell(best.value)})"
            + (f", overrides `{overrides}`" if overrides else "")
        )
    if line := _pruning_line(finished):
        lines.append(line)
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
            overrides = overrides_text(run, shown)
            detail = f" ({overrides})" if overrides else ""
            lines.append(f"- `{run.name}`{detail}: {markdown_cell(run.skip_reason)}")
        lines.append("")
    return "\n".join(lines) + "\n"


def _markdown_seeds(
    groups: list[SeedGroup], columns: list[str], rows: list[list[Any]], metric: str
) -> str:
    """The seed groups as mean ± sd of the sort metric, the best validation score and every
    test metric (report_seeds.csv has every column)."""
    if not groups:
        return ""
    settings = list(groups[0].settings)
    shown = [
        name for name in dict.fromkeys([metric, "best_validation"]) if f"{name}_mean" in columns
    ]
    shown += [
        c[: -len("_mean")]
        for c in columns
        if c.startswith("test/") and c.endswith("_mean") and c[: -len("_mean")] not in shown
    ]
    lines = [
        "## Over seeds",
        "",
        f"Runs that differ only in `{SEED_KEY}`, grouped: mean ± sample standard deviation "
        f"(n - 1) over the n runs, best mean of `{metric}` first. Every column: {SEEDS_CSV}.",
        "",
    ]
    header = [*settings, "n", "seeds", *shown]
    lines.append("| " + " | ".join(markdown_cell(c) for c in header) + " |")
    lines.append("| " + " | ".join("---" for _ in header) + " |")
    for row in rows:
        values = dict(zip(columns, row, strict=True))
        cells = [markdown_cell(values[c]) for c in [*settings, "n", "seeds"]]
        for name in shown:
            mean, sd = values[f"{name}_mean"], values[f"{name}_sd"]
            cells.append(
                ""
                if mean is None
                else markdown_cell(mean) + (f" ± {markdown_cell(sd)}" if sd is not None else "")
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n"


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
