"""The report's plots: learning curves (one run's, at the end of training, or every run's of
a multirun), the optimized metric against each swept key, a confusion matrix.

Matplotlib is imported only when a plot is drawn, through its Agg canvas (no pyplot), so it
needs no screen and leaves the caller's backend alone.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.reporting.discovery import (
    SEED_KEY,
    Curves,
    Run,
    is_number,
    most_common_metric,
    natural_key,
    number,
    overrides_text,
    read_curves,
    read_yaml,
)
from lmforge.runtime.rundir import CONFIG_FILE

if TYPE_CHECKING:
    from matplotlib.axes import Axes

log = logging.getLogger(__name__)


CURVES_PNG = "learning_curves.png"


CONFUSION_PNG = "confusion_matrix.png"


PARAM_PNG_PREFIX = "metric_vs_"


# Runs drawn in colour and named in the legend; the others are drawn in grey, unnamed.
MAX_LEGEND_RUNS = 10


# Above this many labels the confusion matrix cells carry no count.
MAX_ANNOTATED_LABELS = 15


def write_plots(
    finished: list[Run], swept: list[str], metric: str, mode: str, best: Run | None, out_dir: Path
) -> tuple[dict[str, Path], dict[str, Path]]:
    """Draw the learning curves, the metric against each swept key and the best run's
    confusion matrix; return the plots written (by kind, and by swept key)."""
    plots: dict[str, Path] = {}
    curve_metric = metric if metric.startswith("val/") else most_common_metric(finished)
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
        plotted = _plot_metric_vs(finished, key, metric, mode, out_dir, swept)
        if plotted:
            param_plots[key] = plotted
    confusion = best.metrics["confusion_matrix"] if best and best.metrics else None
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
            metric = str(read_yaml(run_dir / CONFIG_FILE).get("optimized_metric") or "val/loss")
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


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure on the Agg canvas: no pyplot, no screen, no global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _legend_label(run: Run, keys: list[str]) -> str:
    label = overrides_text(run, keys) or run.name
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


def _category(value: str | None) -> str:
    """A setting's value as a plot category (a run without the override: "(not set)")."""
    return str(value) if value is not None else "(not set)"


def _seed_means(
    runs: list[Run], key: str, swept: list[str]
) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Series (the other swept settings but the seed, as text) -> value of `key` -> the mean,
    sample standard deviation and number of the runs that differ only in their seed."""
    import statistics

    others = [k for k in swept if k not in (key, SEED_KEY)]
    values: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        if is_number(run.value):
            series = overrides_text(run, others)
            x = _category(run.overrides.get(key))
            values.setdefault(series, {}).setdefault(x, []).append(float(run.value))  # type: ignore[arg-type]
    return {
        series: {
            x: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
            for x, v in by_x.items()
        }
        for series, by_x in values.items()
    }


def _draw_seed_means(
    axes: Axes, means: dict[str, dict[str, tuple[float, float, int]]], where: Any
) -> None:
    """Each series' mean ± sd over seeds as error bars at `where(value)` on the x axis."""
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    for index, (series, by_x) in enumerate(sorted(means.items())):
        xs = sorted(by_x, key=natural_key)
        seeds = sorted({n for _, _, n in by_x.values()})
        label = (series or "runs") + f": mean ± sd over {'/'.join(map(str, seeds))} seeds"
        axes.errorbar(
            [where(x) for x in xs],
            [by_x[x][0] for x in xs],
            yerr=[by_x[x][1] for x in xs],
            fmt="s-",
            capsize=5,
            color=palette((index + 1) % 10),
            label=label if len(label) <= 70 else label[:67] + "...",
            zorder=5,
        )


def _plot_metric_vs(
    runs: list[Run], key: str, metric: str, mode: str, out_dir: Path, swept: Sequence[str] = ()
) -> Path | None:
    """The sorting metric against one swept override: a scatter for numbers (log x when the
    values span two decades or more), a box and strip per value otherwise. Where runs differ
    in their seed too, each setting's mean ± sd over its seeds is drawn as error bars."""
    pairs = [(r.overrides.get(key), r.value) for r in runs if is_number(r.value)]
    if len(pairs) < 2:
        return None
    numbers = [number(v) for v, _ in pairs]
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
        if SEED_KEY in swept and key != SEED_KEY:
            _draw_seed_means(axes, _seed_means(runs, key, list(swept)), lambda x: float(x))
    else:
        import numpy as np

        values = [_category(v) for v, _ in pairs]
        scores = [float(y) for _, y in pairs]  # type: ignore[arg-type]
        categories = sorted(set(values), key=natural_key)
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
        if SEED_KEY in swept and key != SEED_KEY:
            _draw_seed_means(
                axes, _seed_means(runs, key, list(swept)), lambda x: categories.index(x)
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
