"""MLflow tracking on a local SQLite store, read back with MLflow's own client: the config as
params, the metric keys of the other loggers, the run's record files as artifacts, one MLflow
run across a resume, and the sweep tag of a sweep's jobs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import pytest

from lmforge.runtime.rundir import prepare_resume
from lmforge.train import train

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402


def store(tmp_path: Path) -> list[str]:
    return [
        f"logger.mlflow.tracking_uri=sqlite:///{tmp_path}/tracking/mlflow.db",
        f"logger.mlflow.artifact_location={tmp_path}/tracking/artifacts",
    ]


def only_run(tmp_path: Path):
    client = MlflowClient(f"sqlite:///{tmp_path}/tracking/mlflow.db")
    experiment = client.get_experiment_by_name("lmforge")
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def test_a_run_lands_in_the_sqlite_store(make_cfg, tmp_path):
    cfg = make_cfg("logger=[csv,mlflow]", "debug=limit", *store(tmp_path))
    train(cfg)
    run_dir = tmp_path / "run"
    client, run = only_run(tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())

    assert run.info.status == "FINISHED" and run.info.run_name == cfg.task_name
    assert run.data.tags["lmforge.run_id"] == cfg.run_id and "sweep" not in run.data.tags
    assert run.data.params["optimizer/lr"] == "0.003" and run.data.params["seed"] == "42"
    assert {"train/loss_step", "val/acc", "test/acc", "epoch"} <= set(run.data.metrics)
    for key, value in metrics["test"].items():
        assert run.data.metrics[key] == pytest.approx(value, abs=1e-6), key
    assert run.data.metrics["run/trainable_parameters"] == metrics["parameters"]["trainable"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "comparison.md", "config.yaml", "test_predictions.jsonl"} <= artifacts
    local = Path(client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path)))
    assert json.loads(local.read_text())["test"] == metrics["test"]
    # The metric keys of the CSV logger, and the run-level figures besides.
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        csv_keys = set(next(csv.reader(file))) - {"step"}
    run_level = {k for k in run.data.metrics if k.startswith(("run/", "best/"))}
    assert csv_keys == set(run.data.metrics) - run_level


class CrashAfterFirstEpoch(pl.Callback):
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


def test_a_resumed_run_continues_its_mlflow_run(make_cfg, tmp_path):
    cfg = make_cfg("logger=mlflow", "debug=limit", *store(tmp_path))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, callbacks=[CrashAfterFirstEpoch()])
    _, crashed = only_run(tmp_path)
    assert crashed.info.status == "FAILED" and "test/acc" not in crashed.data.metrics

    run_dir = tmp_path / "run"
    resumed_cfg, checkpoint = prepare_resume(make_cfg(f"resume={run_dir}"), [])
    train(resumed_cfg, ckpt_path=checkpoint)
    client, run = only_run(tmp_path)
    assert run.info.run_id == crashed.info.run_id and run.info.status == "FINISHED"
    assert "test/acc" in run.data.metrics
    assert run.data.params["resume"] == "None"  # the values first logged stay
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss_step")]
    assert min(steps) < max(steps)


def test_jobs_of_a_sweep_share_the_sweep_tag(tmp_path):
    from lmforge.runtime.loggers import MLFlowLogger

    uri = f"sqlite:///{tmp_path}/tracking/mlflow.db"
    for job in ("a", "b"):
        logger = MLFlowLogger(
            lmforge_run_id=job, sweep="train-2026-12-01_10-00-00", tags=["x"], tracking_uri=uri
        )
        logger.log_metrics({"val/acc": 0.5})
        logger.finalize("success")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("lightning_logs")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="tags.sweep = 'train-2026-12-01_10-00-00'"
    )
    assert sorted(r.data.tags["lmforge.run_id"] for r in runs) == ["a", "b"]
    assert all("x" in r.data.tags for r in runs)
