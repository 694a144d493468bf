"""Loggers: Lightning's, adapted to runs that continue in their own directory and to lmforge's
end-of-run results.

Lightning's CSVLogger deletes `metrics.csv` when its directory already holds files, and a
fresh writer process (a resumed run, a spawned DDP worker, the test stage after fit) rewrites the
header with only the keys it has seen. Both lose rows of a run that continues in its own
directory, so `CSVLogger` keeps the file and merges headers.

`WandbLogger` also publishes what a finished run knows beyond its metric curves (the
before/after table, the confusion matrix, sample predictions): `publish_run_results`.
`MLFlowLogger` does the same for an MLflow tracking store: the run's record files as
artifacts, a resumed run continuing its MLflow run, the jobs of a sweep sharing a tag.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import Logger
from lightning.pytorch.loggers import MLFlowLogger as LightningMLFlowLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only

from lmforge.runtime.record import RunMetrics
from lmforge.runtime.rundir import PREDICTIONS_FILE

log = logging.getLogger(__name__)


class AppendingExperimentWriter(ExperimentWriter):
    """Keeps an existing metrics.csv and extends its header when new keys appear."""

    def _check_log_dir_exists(self) -> None:
        """Never delete earlier rows: a resumed run appends to them."""

    def _record_new_keys(self) -> set[str]:
        if not self.metrics_keys and self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])
        return super()._record_new_keys()


class CSVLogger(LightningCSVLogger):
    """Lightning's CSVLogger, writing through `AppendingExperimentWriter`."""

    @property
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        # Declared as the base writer; this property is the only one that sets it.
        return cast(AppendingExperimentWriter, self._experiment)

    def __getstate__(self) -> dict:
        # A spawned worker opens its own writer on the same file.
        state = self.__dict__.copy()
        state["_experiment"] = None
        return state


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger that also shows a finished run's results in W&B.

    Metrics keep the keys of the other loggers (`train/loss`, `val/acc`, `test/f1_macro`);
    at the end of the run `publish_results` adds the before/after table, the test confusion
    matrix (single-label classification) and a table of sample test predictions, and closes
    the W&B run so that the next job of a sweep in the same process starts its own.

    Args:
        sample_predictions: test rows shown in the sample predictions table (0: none).
        **kwargs: Lightning's WandbLogger arguments; unknown ones go to `wandb.init`.
    """

    def __init__(self, sample_predictions: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sample_predictions = sample_predictions
        # Lightning always passes `anonymous`; wandb warns about any explicit value, unused.
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)

    @property
    def experiment(self) -> Any:
        """The W&B run, started on first use (rank zero; a stand-in elsewhere)."""
        # `rank` is set on the decorator function at import; its stub does not declare it.
        if self._experiment is None and rank_zero_only.rank == 0:  # type: ignore[attr-defined]
            import wandb

            # A sweep job that failed leaves its run open in this process, and Lightning would
            # log the next job into it: close it as failed. An open run of this id continues.
            if wandb.run is not None and wandb.run.id != self._id:
                log.warning("Closing the unfinished W&B run %s as failed.", wandb.run.id)
                wandb.run.finish(exit_code=1)
        return super().experiment

    def publish_results(self, run_dir: Path, metrics: RunMetrics) -> None:
        """Log the run's result tables and summary figures, then finish the W&B run."""
        import wandb

        run = self.experiment
        try:
            results: dict[str, Any] = {}
            if metrics["comparison"].get("rows"):
                results["comparison/before_after"] = comparison_table(metrics["comparison"])
            if matrix := metrics["confusion_matrix"]:
                results["test/confusion_matrix"] = confusion_matrix_chart(matrix)
            rows = read_predictions(Path(run_dir) / PREDICTIONS_FILE, self.sample_predictions)
            if rows:
                results["test/predictions"] = wandb.Table(
                    columns=list(rows[0]), data=[list(row.values()) for row in rows]
                )
            if results:
                run.log(results)
            run.summary.update(run_figures(metrics))
        finally:
            run.finish()


# The files of a finished run directory an MLflow run keeps as artifacts (those present).
RUN_ARTIFACTS = (
    "metrics.json",
    "comparison.md",
    "config.yaml",
    PREDICTIONS_FILE,
    "learning_curves.png",
)


class MLFlowLogger(LightningMLFlowLogger):
    """Lightning's MLFlowLogger with lmforge's run record, on any tracking store (a local
    SQLite file by default).

    Metrics keep the keys of the other loggers, the resolved config is logged as params, and
    at the end of the run `publish_results` adds the run directory's record files
    (`RUN_ARTIFACTS` and every plot) as artifacts and the run-level figures as metrics. The
    lmforge run id is a tag, so a resumed run (`resume=<run dir>`) continues its MLflow run
    instead of starting another; the jobs of a `-m` sweep share the `sweep` tag.

    Args:
        lmforge_run_id: the run's id (its directory), kept as the `lmforge.run_id` tag.
        sweep: the sweep's name for the jobs of a sweep (the `sweep` tag), None otherwise.
        tags: lmforge's free-form tags, kept as tags with empty values.
        **kwargs: Lightning's MLFlowLogger arguments (`experiment_name`, `tracking_uri`, ...).
    """

    def __init__(
        self,
        lmforge_run_id: str,
        sweep: str | None = None,
        tags: Iterable[str] | None = None,
        **kwargs: Any,
    ) -> None:
        uri = str(kwargs.get("tracking_uri") or "")
        if uri.startswith("sqlite:///"):  # SQLite creates the file, not its folder
            Path(uri.removeprefix("sqlite:///")).expanduser().parent.mkdir(
                parents=True, exist_ok=True
            )
        location = kwargs.get("artifact_location")
        if location and "://" not in str(location):  # a folder: absolute, wherever lmforge runs
            kwargs["artifact_location"] = Path(str(location)).expanduser().resolve().as_uri()
        run_tags = {str(tag): "" for tag in tags or ()}
        run_tags["lmforge.run_id"] = lmforge_run_id
        if sweep:
            run_tags["sweep"] = sweep
        super().__init__(tags=run_tags, **kwargs)
        self.lmforge_run_id = lmforge_run_id

    @property
    def experiment(self) -> Any:
        """The MLflow client, with this run's MLflow run found (a resumed run) or created."""
        # `rank` is set on the decorator function at import; its stub does not declare it.
        if not self._initialized and self._run_id is None and rank_zero_only.rank == 0:  # type: ignore[attr-defined]
            self._run_id = self._earlier_run()
        return super().experiment

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        """The config as params; a continued run keeps the values it first logged (MLflow
        refuses to change a param, and a resumed run's config differs in `resume` only)."""
        from lightning.fabric.utilities.logger import _convert_params, _flatten_dict

        flat = _flatten_dict(_convert_params(params))
        logged = self.experiment.get_run(self.run_id).data.params
        super().log_hyperparams({k: v for k, v in flat.items() if k not in logged})

    def _earlier_run(self) -> str | None:
        """The id of the MLflow run this lmforge run logged to before it was stopped, if any."""
        found = self._mlflow_client.get_experiment_by_name(self._experiment_name)
        if found is None or found.lifecycle_stage == "deleted":
            return None
        runs = self._mlflow_client.search_runs(
            [found.experiment_id],
            filter_string=f"tags.`lmforge.run_id` = '{self.lmforge_run_id}'",
            max_results=1,
        )
        if not runs:
            return None
        run_id = str(runs[0].info.run_id)
        self._mlflow_client.update_run(run_id, status="RUNNING")
        log.info("Continuing MLflow run %s of %s.", run_id, self.lmforge_run_id)
        return run_id

    def publish_results(self, run_dir: Path, metrics: RunMetrics) -> None:
        """Log the run's record files as artifacts and its run-level figures as metrics."""
        client, run_id = self.experiment, self.run_id
        figures = run_figures(metrics)
        if figures:
            self.log_metrics({k: float(v) for k, v in figures.items()})
        folder = Path(run_dir)
        files = [folder / name for name in RUN_ARTIFACTS] + sorted(folder.glob("*.png"))
        for path in dict.fromkeys(files):
            if path.is_file():
                client.log_artifact(run_id, str(path))


def comparison_table(comparison: dict[str, Any]) -> Any:
    """The before/after table (metrics.json: comparison) as a `wandb.Table`: one row per
    metric with before, after, change, change %, and each scored baseline's value."""
    import wandb

    baselines = [n for n, b in comparison.get("baselines", {}).items() if "metrics" in b]
    columns = ["metric", "before", "after", "change", "change %", *baselines]
    data = [
        [
            key,
            row.get("before"),
            row.get("after"),
            row.get("change"),
            row.get("change_percent"),
            *(row.get(name) for name in baselines),
        ]
        for key, row in comparison["rows"].items()
    ]
    return wandb.Table(columns=columns, data=data)


def confusion_matrix_chart(matrix: dict[str, Any]) -> Any:
    """W&B's own confusion matrix chart for counts (metrics.json: confusion_matrix; rows gold,
    columns predicted).

    `wandb.plot.confusion_matrix` wants one (gold, predicted) pair per example and counts them
    into this very table; handing it the counts with the same chart spec skips the round trip.
    """
    import wandb

    names = matrix["labels"]
    data = [
        [gold, predicted, count]
        for gold, counts in zip(names, matrix["matrix"], strict=True)
        for predicted, count in zip(names, counts, strict=True)
    ]
    table = wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=data)
    fields = {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"}
    title = f"Confusion matrix ({matrix['split']})"
    return wandb.plot_table("wandb/confusion_matrix/v1", table, fields, {"title": title})


def read_predictions(path: Path, limit: int) -> list[dict[str, Any]]:
    """The first `limit` rows of test_predictions.jsonl, label lists (multi-label) joined into
    one readable cell; [] when the run wrote none."""
    if limit <= 0 or not path.is_file():
        return []
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as file:
        for line in file:
            if len(rows) == limit:
                break
            record = json.loads(line)
            rows.append({k: ", ".join(v) if isinstance(v, list) else v for k, v in record.items()})
    return rows


def run_figures(metrics: RunMetrics) -> dict[str, Any]:
    """Run-level figures of metrics.json for the runs table (compare jobs of a sweep by them)."""
    best, parameters = metrics["best_validation"], metrics["parameters"]
    figures = {
        f"best/{best['metric'] if best else None}": best["value"] if best else None,
        "run/wall_time_seconds": metrics["wall_time_seconds"],
        "run/train_samples_per_second": metrics["train_samples_per_second"],
        "run/trainable_parameters": parameters["trainable"] if parameters else None,
    }
    return {key: value for key, value in figures.items() if value is not None}


@rank_zero_only
def publish_run_results(loggers: Iterable[Logger], run_dir: Path, metrics: RunMetrics) -> None:
    """Hand a finished run's results (metrics.json and the files beside it) to every logger
    that shows more than metric curves (those with a `publish_results` method).

    The run has finished and written its files by now, so a logger that fails here (no network,
    a full disk) costs only its dashboard: the error is logged as a warning, never raised.
    """
    for logger in loggers:
        publish = getattr(logger, "publish_results", None)
        if publish is None:
            continue
        try:
            publish(run_dir, metrics)
        except Exception as err:  # any failure: the run's own record is complete
            log.warning(
                "%s could not publish the run's results (%s: %s); they are in %s.",
                type(logger).__name__,
                type(err).__name__,
                err,
                run_dir,
            )


__all__ = [
    "AppendingExperimentWriter",
    "CSVLogger",
    "MLFlowLogger",
    "WandbLogger",
    "publish_run_results",
]


def publish_text_samples(
    loggers: Iterable[Any], key: str, step: int, pairs: list[tuple[str, str]]
) -> None:
    """(prompt, generated text) pairs to the loggers that take text: a W&B table, TensorBoard
    text summaries (`<key>_<i>`); the others keep none."""
    for logger in loggers:
        if hasattr(logger, "log_text"):  # W&B
            logger.log_text(
                key=key,
                columns=["step", "prompt", "text"],
                data=[[step, prompt, text] for prompt, text in pairs],
            )
        elif hasattr(getattr(logger, "experiment", None), "add_text"):  # TensorBoard
            experiment: Any = cast(Any, logger).experiment
            for i, (_, text) in enumerate(pairs):
                experiment.add_text(f"{key}_{i}", text, step)
