"""Weights & Biases, offline: what a run shows there, the same metric keys in every logger, the
same W&B run on resume, and the group and name of sweep jobs."""

from __future__ import annotations

import csv
import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict, read_write

from lmforge.config.resources import config_dir, job_name, sweep_group
from lmforge.runtime.loggers import publish_run_results
from lmforge.runtime.rundir import prepare_resume
from lmforge.train import train

wandb = pytest.importorskip("wandb")

# Nothing listens there: a request to it fails at once and leaves its address in W&B's logs.
OFFLINE_SERVER = "http://127.0.0.1:9"
# Keys every W&B history row carries for its own bookkeeping (CSV has `step` instead).
WANDB_BOOKKEEPING = {"_step", "_runtime", "_timestamp", "trainer/global_step"}


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch, tmp_path):
    """W&B offline and quiet, its settings and caches in tmp_path, and a server address that
    refuses connections, so a run that tried the network would show it."""
    home = tmp_path / "wandb_home"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_BASE_URL", OFFLINE_SERVER)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(home / name.lower()))
    yield
    if wandb.run is not None:  # a failed run leaves its W&B run open; the next test needs none
        wandb.finish(exit_code=1)


# ----- reading an offline run back ---------------------------------------------------------------
# wandb 0.31 keeps an offline run's config, history and summary only in its transaction log,
# run-<id>.wandb (offline, wandb-core writes no files/config.yaml or files/wandb-summary.json),
# and ships no Python reader for it. The log is LevelDB's log format: after a 7-byte file header
# (":W&B", magic, version), 32 KiB blocks of frames, each a 7-byte header (CRC, length, type:
# 1 whole, 2 first, 3 middle, 4 last piece) and its bytes; a block's last < 7 bytes are padding.
# The pieces of one record join into a `wandb.proto.wandb_internal_pb2.Record`, which wandb
# ships. `wandb.finish()` returns before wandb-core has written the log out; the run's `exit`
# record comes last, so the log is complete once it ends with one. Tables are JSON files under
# files/, named by the history row that logged them.
FILE_HEADER, FRAME_HEADER, BLOCK = 7, 7, 32768


def read_records(path: Path) -> list[Any]:
    """The protobuf records of a W&B transaction log written so far, in order (CRCs not
    checked; a record still being written is left out)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    if not data:
        return []
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    records, pieces, pos = [], b"", FILE_HEADER
    while pos + FRAME_HEADER <= len(data):
        if BLOCK - pos % BLOCK < FRAME_HEADER:
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + FRAME_HEADER])
        if pos + FRAME_HEADER + length > len(data):
            break
        pieces += data[pos + FRAME_HEADER : pos + FRAME_HEADER + length]
        pos += FRAME_HEADER + length
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pieces)
            records.append(record)
            pieces = b""
    return records


def read_finished_records(path: Path, timeout: float = 30.0) -> list[Any]:
    """The records of a finished run's log, once wandb-core has written its `exit` record."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_records(path)
        if records and records[-1].WhichOneof("record_type") == "exit":
            return records
        assert time.monotonic() < deadline, f"{path} got no exit record in {timeout} s"
        time.sleep(0.05)


def _put(target: dict[str, Any], item: Any) -> None:
    """Store a config/history/summary item (`key`, or a `nested_key` path) in `target`."""
    *parents, last = list(item.nested_key) or [item.key]
    for name in parents:
        target = target.setdefault(name, {})
    target[last] = json.loads(item.value_json)


@dataclass
class OfflineRun:
    """What one offline W&B run recorded."""

    directory: Path
    run: Any = None
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None

    def history_keys(self) -> set[str]:
        return {key for row in self.history for key in row}

    def table(self, key: str) -> dict[str, Any]:
        """The last table logged under `key`: {"columns": [...], "data": [[...], ...]}."""
        logged = [row[key] for row in self.history if key in row]
        assert logged, f"no table logged under {key!r}"
        return json.loads((self.directory / "files" / logged[-1]["path"]).read_text())


def read_offline_runs(run_dir: Path) -> list[OfflineRun]:
    """Every offline W&B run under `<run dir>/wandb`, oldest first."""
    runs = []
    for directory in sorted((run_dir / "wandb").glob("offline-run-*")):
        (log,) = directory.glob("run-*.wandb")
        run = OfflineRun(directory)
        for record in read_finished_records(log):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run.run = record.run
                for item in record.run.config.update:
                    _put(run.config, item)
            elif kind == "config":
                for item in record.config.update:
                    _put(run.config, item)
            elif kind == "history":
                row: dict[str, Any] = {}
                for item in record.history.item:
                    _put(row, item)
                run.history.append(row)
            elif kind == "summary":
                for item in record.summary.update:
                    _put(run.summary, item)
            elif kind == "exit":
                run.exit_code = record.exit.exit_code
        runs.append(run)
    return runs


def read_metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


# ----- what a run shows in W&B -------------------------------------------------------------------
def test_a_run_shows_its_config_metrics_and_result_tables(make_cfg, tmp_path):
    cfg = make_cfg(
        "logger=wandb", "compare.baselines=[majority]", "logger.wandb.sample_predictions=5"
    )
    train(cfg)
    run_dir = tmp_path / "run"
    assert wandb.run is None, "the W&B run is finished with the training run"
    (run,) = read_offline_runs(run_dir)
    metrics = read_metrics(run_dir)

    assert run.run.run_id == cfg.run_id and run.run.display_name == "train"
    assert run.run.run_group == ""  # a single run is in no group
    assert run.config["optimizer"]["lr"] == 3e-3 and run.config["seed"] == 42
    assert run.config["logger"]["wandb"]["sample_predictions"] == 5

    assert {"train/loss_step", "train/loss_epoch", "val/acc", "test/acc"} <= run.history_keys()
    for key, value in metrics["test"].items():
        assert run.summary[key] == pytest.approx(value, abs=1e-6), key
    assert run.summary["best/val/acc"] == pytest.approx(metrics["best_validation"]["value"])
    assert run.summary["run/trainable_parameters"] == metrics["parameters"]["trainable"]

    comparison = run.table("comparison/before_after")
    assert comparison["columns"] == ["metric", "before", "after", "change", "change %", "majority"]
    rows = metrics["comparison"]["rows"]
    assert [r[0] for r in comparison["data"]] == list(rows)
    first = comparison["data"][0]
    assert first[1:] == pytest.approx(
        [rows[first[0]][k] for k in ("before", "after", "change", "change_percent", "majority")]
    )

    # W&B's confusion matrix chart: its spec in the config, its counts in a table beside it.
    assert "test/confusion_matrix" in run.config["_wandb"]["visualize"]
    matrix = metrics["confusion_matrix"]
    counts = {
        (gold, predicted): n
        for gold, predicted, n in run.table("test/confusion_matrix_table")["data"]
    }
    assert counts == {
        (gold, predicted): matrix["matrix"][i][j]
        for i, gold in enumerate(matrix["labels"])
        for j, predicted in enumerate(matrix["labels"])
    }

    logs = "".join(p.read_text() for p in (run_dir / "wandb").rglob("*.log"))
    assert "127.0.0.1:9" not in logs, "an offline run tried the network"

    samples = run.table("test/predictions")
    lines = (run_dir / "test_predictions.jsonl").read_text().splitlines()[:5]
    assert samples["columns"] == ["text", "label", "predicted", "correct"]
    assert samples["data"] == [list(json.loads(line).values()) for line in lines]


def test_every_logger_gets_the_same_metric_keys(make_cfg, tmp_path):
    train(make_cfg("logger=many", "debug=limit"))
    run_dir = tmp_path / "run"

    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        csv_keys = set(next(csv.reader(file))) - {"step"}

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tensorboard_keys = set(events.Tags()["scalars"])

    (run,) = read_offline_runs(run_dir)
    wandb_keys = {
        key
        for row in run.history
        for key, value in row.items()
        if not isinstance(value, dict)  # the result tables, which only W&B shows
    } - WANDB_BOOKKEEPING

    assert {"train/loss_step", "val/acc", "test/acc", "epoch"} <= csv_keys
    assert csv_keys == tensorboard_keys == wandb_keys


@pytest.mark.parametrize("logger", ["csv", "tensorboard"])
def test_csv_and_tensorboard_alone_still_work(make_cfg, tmp_path, logger):
    train(make_cfg(f"logger={logger}", "debug=limit"))
    run_dir = tmp_path / "run"
    pattern = "metrics.csv" if logger == "csv" else "events.out.tfevents.*"
    assert list((run_dir / logger).glob(pattern))
    assert "test/acc" in read_metrics(run_dir)["test"]
    assert not (run_dir / "wandb").exists()


class CrashAfterFirstEpoch(pl.Callback):
    """Stops the run as a crash would, once the first epoch is saved."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


def test_a_resumed_run_continues_its_wandb_run(make_cfg, tmp_path):
    cfg = make_cfg("logger=wandb", "debug=limit")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, callbacks=[CrashAfterFirstEpoch()])
    wandb.finish(exit_code=1)  # what the crashed process's exit would have done
    run_dir = tmp_path / "run"
    (first,) = read_offline_runs(run_dir)

    resumed_cfg, checkpoint = prepare_resume(make_cfg(f"resume={run_dir}"), [])
    train(resumed_cfg, ckpt_path=checkpoint)

    # `wandb sync <run dir>/wandb/offline-run-*` uploads both, in order, into one run.
    _, resumed = read_offline_runs(run_dir)
    assert first.run.run_id == resumed.run.run_id == cfg.run_id
    steps = [
        [row["trainer/global_step"] for row in run.history if "train/loss_step" in row]
        for run in (first, resumed)
    ]
    assert steps[0] and steps[1] and min(steps[1]) > max(steps[0])
    assert "test/acc" in resumed.summary and "test/acc" not in first.summary
    assert (first.exit_code, resumed.exit_code) == (1, 0)


def test_a_failed_job_does_not_swallow_the_next_jobs_wandb_run(make_cfg, tmp_path, caplog):
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(
            make_cfg("logger=wandb", "debug=limit", run="failed"),
            callbacks=[CrashAfterFirstEpoch()],
        )
    assert wandb.run is not None  # as a sweep that goes on after a failed job finds it
    train(make_cfg("logger=wandb", "debug=limit", run="next"))
    assert "Closing the unfinished W&B run" in caplog.text

    (failed,) = read_offline_runs(tmp_path / "failed")
    (following,) = read_offline_runs(tmp_path / "next")
    assert failed.run.run_id != following.run.run_id
    assert (failed.exit_code, following.exit_code) == (1, 0)
    assert "test/acc" in following.summary and "test/acc" not in failed.summary


def test_a_logger_that_fails_to_publish_never_fails_the_run(tmp_path, caplog):
    class BrokenDashboard:
        def publish_results(self, run_dir: Path, metrics: dict[str, Any]) -> None:
            raise OSError("disk full")

    publish_run_results([object(), BrokenDashboard()], tmp_path, {})  # object(): not a publisher
    assert "BrokenDashboard could not publish" in caplog.text and "disk full" in caplog.text


# ----- sweep jobs: group and name ----------------------------------------------------------------
@pytest.fixture
def hydra_job():
    """Set Hydra's job config as a run or a sweep job would; restored afterwards."""
    previous = HydraConfig.instance().cfg

    def _set(*overrides: str, mode: RunMode, num: int = 0) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            cfg = compose("train", overrides=["logger=wandb", *overrides], return_hydra_config=True)
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.mode = mode
            cfg.hydra.job.num = num
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _set
    HydraConfig.instance().cfg = previous


SWEEP_DIR = "hydra.sweep.dir=/somewhere/outputs/train/multiruns/2026-11-22_10-00-00"


def test_jobs_of_a_sweep_share_a_group_named_after_the_sweep(hydra_job):
    cfg = hydra_job(SWEEP_DIR, mode=RunMode.MULTIRUN, num=3)
    assert cfg.logger.wandb.group == "train-2026-11-22_10-00-00"
    assert cfg.logger.wandb.name == "train-3"

    cfg = hydra_job(SWEEP_DIR, "logger.wandb.group=lr-search", mode=RunMode.MULTIRUN)
    assert cfg.logger.wandb.group == "lr-search"

    cfg = hydra_job(SWEEP_DIR, mode=RunMode.RUN)
    assert cfg.logger.wandb.group is None and cfg.logger.wandb.name == "train"


def test_outside_hydra_there_is_no_group(hydra_job):
    HydraConfig.instance().cfg = None  # a run started from Python, as the tests do
    assert sweep_group("train") is None and job_name("train") == "train"
