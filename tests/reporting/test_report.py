"""lmforge-report and the per-run learning curves, on two tiny real runs and a failed job."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import shutil
import subprocess
from pathlib import Path

import pytest
from omegaconf import open_dict

from lmforge.errors import LmforgeError
from lmforge.reporting.plots import plot_run_curves
from lmforge.reporting.report import write_report
from lmforge.train import train
from tests.helpers import script

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAILURE = "data.train_file='missing.csv': no such file (expected a .csv, .json or .parquet file)"


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 5000, path  # an empty canvas is about 2 kB


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def write_overrides(run_dir: Path, overrides: list[str]) -> None:
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    text = "".join(f"- {item}\n" for item in overrides)
    (run_dir / ".hydra" / "overrides.yaml").write_text(text, encoding="utf-8")


def digests(root: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def copy_run(run_dir: Path, target: Path) -> Path:
    """A finished run without its heavy files (the report reads none of them)."""
    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("checkpoints", "tokenizer"))
    return target


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_model, tiny_data) -> Path:
    """A multirun as Hydra lays it out: jobs 0 and 1 finished (two learning rates), job 2
    failed with an error in its log, job 3 left neither metrics.json nor a log."""
    from tests.helpers import compose_config, tiny_overrides

    root = tmp_path_factory.mktemp("report")
    sweep_dir = root / "sweep"
    for job, lr in (("0", "0.003"), ("1", "1e-05")):
        overrides = [f"optimizer.lr={lr}", "compare.baselines=[]", "evaluate_before=false"]
        cfg = compose_config([*tiny_overrides(tiny_model, tiny_data), *overrides])
        with open_dict(cfg):
            cfg.paths.output_dir = str(sweep_dir / job)
            cfg.paths.cache_dir = str(root / "cache")
        train(cfg)
        write_overrides(sweep_dir / job, [f"optimizer.lr={lr}", "trainer.max_epochs=2"])
    for job, lr in (("2", "0.1"), ("3", "0.3")):
        (sweep_dir / job).mkdir()
        shutil.copy(sweep_dir / "0" / "config.yaml", sweep_dir / job / "config.yaml")
        write_overrides(sweep_dir / job, [f"optimizer.lr={lr}", "trainer.max_epochs=2"])
    (sweep_dir / "2" / "train.log").write_text(
        "[2026-01-01 10:00:00,000][lmforge.train][INFO] - Parameters: 999,171 trainable\n"
        f"[2026-01-01 10:00:01,000][lmforge.cli][ERROR] - {FAILURE}\n",
        encoding="utf-8",
    )
    return sweep_dir


def test_train_draws_the_run_learning_curves(sweep):
    for job in ("0", "1"):
        assert_png(sweep / job / "learning_curves.png")


def test_report_of_a_multirun(sweep):
    runs_before = {job: digests(sweep / job) for job in ("0", "1", "2", "3")}
    markdown = write_report(sweep)
    out = sweep / "report"
    assert markdown == out / "report.md"

    rows = read_rows(out / "report.csv")
    assert [r["run"] for r in rows] == sorted(
        ["0", "1"], key=lambda job: -read_metrics(sweep / job)["validation"]["val/acc"]
    )
    scores = [float(r["val/acc"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    for row in rows:
        metrics = read_metrics(sweep / row["run"])
        assert row["optimizer.lr"] == {"0": "0.003", "1": "1e-05"}[row["run"]]
        assert "trainer.max_epochs" not in row  # the same in every job: not a column
        assert float(row["best_validation"]) == pytest.approx(metrics["best_validation"]["value"])
        for key, value in {**metrics["test"], **metrics["validation"]}.items():
            assert float(row[key]) == pytest.approx(value), key
        assert float(row["wall_time_seconds"]) == pytest.approx(metrics["wall_time_seconds"])
        assert int(row["trainable_parameters"]) == metrics["parameters"]["trainable"]
        assert int(row["epochs_completed"]) == 2
        assert float(row["mfu"]) == pytest.approx(metrics["efficiency"]["mfu"])

    for name in ("learning_curves.png", "metric_vs_optimizer.lr.png", "confusion_matrix.png"):
        assert_png(out / name)
    text = markdown.read_text()
    assert f"best run: `{rows[0]['run']}`" in text
    assert "![learning curves](learning_curves.png)" in text
    assert "](metric_vs_optimizer.lr.png)" in text
    skipped = text.split("## Skipped", 1)[1]
    assert f"`2` (optimizer.lr=0.1): {FAILURE}" in skipped
    assert "`3` (optimizer.lr=0.3): no metrics.json: the run failed or was interrupted" in skipped
    # Derived data: written again in place (stale plots go), the runs' own files untouched.
    (out / "metric_vs_old_key.png").write_bytes(PNG_MAGIC)
    assert write_report(sweep) == markdown
    assert not (out / "metric_vs_old_key.png").exists()
    assert {job: digests(sweep / job) for job in runs_before} == runs_before


def test_metric_and_mode_override_the_order(sweep, tmp_path):
    write_report(sweep, out=tmp_path / "by_loss", metric="val/loss", mode="min")
    losses = [float(r["val/loss"]) for r in read_rows(tmp_path / "by_loss" / "report.csv")]
    assert losses == sorted(losses) and len(losses) == 2
    assert "sorted by `val/loss` (min)" in (tmp_path / "by_loss" / "report.md").read_text()
    with pytest.raises(LmforgeError, match=r"--metric val/nothing.*val/acc"):
        write_report(sweep, out=tmp_path / "x", metric="val/nothing")
    with pytest.raises(LmforgeError, match="is a run directory"):
        write_report(sweep, out=sweep / "0")


def test_a_single_run_shows_all_its_overrides(sweep, tmp_path):
    run_dir = copy_run(sweep / "0", tmp_path / "2026-01-01_10-00-00")
    markdown = write_report(run_dir)
    assert markdown == run_dir / "report" / "report.md"
    [row] = read_rows(run_dir / "report" / "report.csv")
    assert row["run"] == run_dir.name
    assert (row["optimizer.lr"], row["trainer.max_epochs"]) == ("0.003", "2")
    assert_png(run_dir / "report" / "learning_curves.png")


def test_mixed_metrics_nan_and_no_csv(sweep, tmp_path, caplog):
    root = tmp_path / "mixed"
    copy_run(sweep / "0", root / "a")
    other = copy_run(sweep / "1", root / "b")
    shutil.rmtree(other / "csv")  # as with logger=none
    metrics = read_metrics(other)
    metrics["test"]["test/extra"] = 0.5
    del metrics["test"]["test/f1_music"]
    metrics["validation"]["val/acc"] = math.nan
    (other / "metrics.json").write_text(json.dumps(metrics))

    text = write_report(root).read_text()
    rows = {r["run"]: r for r in read_rows(root / "report" / "report.csv")}
    assert list(rows) == ["a", "b"]  # NaN sorts last
    assert rows["a"]["test/extra"] == "" and rows["b"]["test/f1_music"] == ""
    assert rows["b"]["test/extra"] == "0.5" and rows["b"]["val/acc"] == "nan"
    assert "`b`: no curve, no csv/metrics.csv" in text
    assert_png(root / "report" / "learning_curves.png")

    caplog.set_level(logging.INFO, logger="lmforge.reporting.plots")
    assert plot_run_curves(other) is None
    assert "No learning curve: no csv/metrics.csv" in caplog.text


def test_no_runs_and_no_directory(tmp_path):
    (tmp_path / "empty" / "nested").mkdir(parents=True)
    with pytest.raises(LmforgeError, match=r"holds no lmforge run \(expected .*config\.yaml"):
        write_report(tmp_path / "empty")
    with pytest.raises(LmforgeError, match="no such directory"):
        write_report(tmp_path / "missing")
    # An lmforge-eval directory is not a training run: ignored.
    evaluation = tmp_path / "eval" / "2026-01-01_10-00-00"
    evaluation.mkdir(parents=True)
    (evaluation / "config.yaml").write_text("ckpt_path: best.ckpt\n")
    (evaluation / "metrics.json").write_text(json.dumps({"test": {"test/acc": 0.5}}))
    with pytest.raises(LmforgeError, match="holds no lmforge run"):
        write_report(tmp_path / "eval")


def test_cli(sweep, tmp_path):
    command = [script("lmforge-report")]
    done = subprocess.run(
        [*command, str(sweep / "0"), "--out", str(tmp_path / "cli")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert str(tmp_path / "cli" / "report.md") in done.stdout.splitlines()
    assert (tmp_path / "cli" / "report.csv").is_file()

    failed = subprocess.run(
        [*command, str(tmp_path / "missing")], capture_output=True, text=True, timeout=120
    )
    assert failed.returncode == 1
    assert failed.stderr.startswith("lmforge: error:") and "no such directory" in failed.stderr
    assert failed.stderr.strip().count("\n") == 0 and "Traceback" not in failed.stderr


def test_runs_that_differ_only_in_seed_are_summarised_as_mean_and_sd(sweep, tmp_path):
    """Five copies of one run: lr 0.003 with seeds 1, 2, 3 and lr 1e-05 with seeds 1, 2,
    with test accuracies and best validation scores set by hand."""
    root = tmp_path / "seeds"
    accuracy = {("0.003", "1"): 0.7, ("0.003", "2"): 0.8, ("0.003", "3"): 0.9}
    accuracy |= {("1e-05", "1"): 0.4, ("1e-05", "2"): 0.5}
    for (lr, seed), value in accuracy.items():
        run_dir = copy_run(sweep / "0", root / f"{lr}_{seed}")
        write_overrides(run_dir, [f"optimizer.lr={lr}", f"seed={seed}"])
        metrics = read_metrics(run_dir)
        metrics["test"]["test/acc"] = value
        metrics["validation"]["val/acc"] = value - 0.1
        metrics["best_validation"]["value"] = value - 0.1
        (run_dir / "metrics.json").write_text(json.dumps(metrics))

    text = write_report(root).read_text()
    groups = read_rows(root / "report" / "report_seeds.csv")
    assert [(g["optimizer.lr"], g["n"], g["seeds"]) for g in groups] == [
        ("0.003", "3", "1 2 3"),  # best mean val/acc first
        ("1e-05", "2", "1 2"),
    ]
    # Means 0.8 and 0.45; sample sd of (0.7, 0.8, 0.9) is 0.1, of (0.4, 0.5) sqrt(0.005).
    assert float(groups[0]["test/acc_mean"]) == pytest.approx(0.8)
    assert float(groups[0]["test/acc_sd"]) == pytest.approx(0.1)
    assert float(groups[1]["test/acc_mean"]) == pytest.approx(0.45)
    assert float(groups[1]["test/acc_sd"]) == pytest.approx(math.sqrt(0.005))
    assert float(groups[1]["best_validation_mean"]) == pytest.approx(0.35)
    assert "seed_mean" not in groups[0]
    section = text.split("## Over seeds", 1)[1]
    assert "| 0.003 | 3 | 1 2 3 | 0.7000 ± 0.1000 | 0.7000 ± 0.1000 |" in section
    # The plot of the sorting metric (val/acc) against lr draws the same means and sds.
    from lmforge.reporting.plots import _seed_means
    from lmforge.reporting.report import build_report

    report = build_report(root)
    assert (root / "report" / "metric_vs_optimizer.lr.png").is_file()
    means = _seed_means(report.finished, "optimizer.lr", ["optimizer.lr", "seed"])
    assert means[""]["0.003"] == pytest.approx((0.7, 0.1, 3))
    assert means[""]["1e-05"] == pytest.approx((0.35, math.sqrt(0.005), 2))
    # A key some runs lack is a category "(not set)" in the plot and in the error bars.
    write_overrides(root / "0.003_1", ["optimizer.lr=0.003", "seed=1", "trainer.max_epochs=2"])
    report = build_report(root)
    means = _seed_means(
        report.finished, "trainer.max_epochs", ["optimizer.lr", "seed", "trainer.max_epochs"]
    )
    assert means["optimizer.lr=0.003"]["(not set)"][2] == 2
    assert (root / "report" / "metric_vs_trainer.max_epochs.png").is_file()
    # Without a seed among the differing overrides there is no such section.
    write_report(sweep, out=tmp_path / "plain")
    assert not (tmp_path / "plain" / "report_seeds.csv").exists()
    assert "Over seeds" not in (tmp_path / "plain" / "report.md").read_text()
