"""The console scripts as a user runs them: fast help, clean errors, DDP without GPUs."""

from __future__ import annotations

import json
import sys
import time

import pytest

from tests.helpers import run, script, tiny_overrides


def test_cfg_job_prints_the_config_without_heavy_imports(tmp_path):
    code = (
        "import sys, time; t = time.perf_counter();"
        "sys.argv = ['lmforge-train', '--cfg', 'job'];"
        "from lmforge.cli import train_main\n"
        "try:\n    train_main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'lightning') if m in sys.modules]\n"
        "print('HEAVY', heavy, 'SECONDS', time.perf_counter() - t)"
    )
    result = run(sys.executable, "-c", code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "optimizer:" in result.stdout and "HEAVY []" in result.stdout


def test_help_lists_the_config_groups(tmp_path):
    started = time.perf_counter()
    result = run(script("lmforge-train"), "--help", cwd=tmp_path)
    assert result.returncode == 0
    for group in ("data:", "model:", "optimizer:", "trainer:", "experiment:", "debug:"):
        assert group in result.stdout
    assert time.perf_counter() - started < 30  # generous: CI machines vary


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optimizer.lr=-1", "optimizer.lr must be a number above 0, got -1"),
        ("data=nope", "there is no data option 'nope'; expected one of chat, conll2003, debian_"),
        ("data=_shared", "there is no data option '_shared'"),
        ("data.txt_column=x", "data.txt_column"),
        ("resume=/no/such/run", "resume='/no/such/run': no such run directory"),
        ("data.train_file=/no/such.csv", "data.train_file='/no/such.csv': no such file"),
    ],
)
def test_errors_are_one_paragraph_without_traceback(tmp_path, override, expected):
    result = run(script("lmforge-train"), override, "trainer=cpu", cwd=tmp_path)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    # Told before the precision probe's seconds of measuring (its verdict is never logged).
    assert "Precision:" not in result.stdout + result.stderr


def test_eval_of_a_missing_checkpoint(tmp_path):
    result = run(script("lmforge-eval"), "ckpt_path=/no/such.ckpt", cwd=tmp_path)
    assert result.returncode != 0
    assert "no such checkpoint file" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow  # the DDP path from the command line also runs in the multirun DDP test
def test_ddp_sim_from_the_command_line_makes_one_run_dir(tmp_path, tiny_model, tiny_data):
    overrides = [o for o in tiny_overrides(tiny_model, tiny_data) if "max_epochs" not in o]
    result = run(
        script("lmforge-train"),
        *overrides,
        "trainer=ddp_sim",
        "trainer.max_epochs=1",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "hydra.run.dir=run",
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir() if p.name not in ("cache",)] == ["run"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # Tested in one process after the DDP fit: every test row counted exactly once.
    correct = metrics["test"]["test/acc"] * metrics["data"]["test"]
    assert abs(correct - round(correct)) < 1e-4, correct
    assert len(list(tmp_path.rglob("metrics.json"))) == 1
    # each of the 2 processes saw half of the 96 training rows per epoch: 3 steps of 16
    assert metrics["global_step"] == 3
