"""The reproducibility record of a run, and runs that it promises to reproduce: the same seed on
the same data on CPU gives the same metrics and the same weights; another seed does not."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from lmforge.runtime.reproducibility import (
    RECORD_FILE,
    REQUIREMENTS_FILE,
    git_state,
    record_reproducibility,
)
from lmforge.train import train
from tests.helpers import ENV, compose_config, script, tiny_overrides

QUICK = [
    "trainer.max_epochs=1",
    "evaluate_before=false",
    "compare.baselines=[]",
    "compare.max_flipped=0",
    "logger=none",
]


def run_tiny(root: Path, tiny_model: Path, tiny_data: Path, *overrides: str) -> Path:
    cfg = compose_config([*tiny_overrides(tiny_model, tiny_data), *QUICK, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "run")
        cfg.paths.cache_dir = str(root.parent / "shared_cache")
    train(cfg)
    return root / "run"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model, tiny_data) -> dict[str, Path]:
    """Two runs with seed 7 and one with seed 8, on the same data."""
    root = tmp_path_factory.mktemp("seeds")
    return {
        name: run_tiny(root / name, tiny_model, tiny_data, f"seed={seed}")
        for name, seed in (("first", 7), ("again", 7), ("other", 8))
    }


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)[
        "state_dict"
    ]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_record_holds_what_a_rerun_needs(runs, tiny_data):
    record = json.loads((runs["first"] / RECORD_FILE).read_text())
    assert record["seed"] == 7
    assert record["command"] is None and record["overrides"] is None  # train(cfg) from Python
    for split in ("train", "validation", "test"):
        entry = record["data"]["files"][split]
        assert entry["path"] == str((tiny_data / f"{split}.csv").resolve())
        assert entry["sha256"] == sha256(tiny_data / f"{split}.csv")
    versions = record["versions"]
    for package in ("python", "lmforge", "torch", "transformers", "lightning", "datasets"):
        assert versions[package], package
    platform = record["platform"]
    assert platform["torch_threads"] == torch.get_num_threads()
    assert platform["cuda_devices"] == [] and platform["cpu_count"] >= 1
    if record["git"] is not None:  # the tests run from a checkout, but a wheel has no git
        assert re.fullmatch(r"[0-9a-f]{40}", record["git"]["commit"])
        assert isinstance(record["git"]["dirty"], bool)
    assert (runs["first"] / "config.yaml").is_file()


def test_the_run_pins_every_installed_package_for_a_reinstall(runs):
    import importlib.metadata

    record = json.loads((runs["first"] / RECORD_FILE).read_text())
    assert record["requirements"] == REQUIREMENTS_FILE
    lines = (runs["first"] / REQUIREMENTS_FILE).read_text().splitlines()
    pins = dict(line.split("==") for line in lines if not line.startswith("#"))
    for package in ("torch", "transformers", "peft", "lightning", "hydra-core", "numpy"):
        assert pins[package] == importlib.metadata.version(package), package
    assert "lmforge" not in pins and "pip" not in pins  # the code is pinned by its commit
    assert list(pins) == sorted(pins, key=str.lower)


def test_same_seed_same_data_gives_the_same_metrics_and_weights(runs):
    first, again = metrics(runs["first"]), metrics(runs["again"])
    assert first["test"] and first["test"] == again["test"]
    assert first["validation"] == again["validation"]
    a, b = weights(runs["first"]), weights(runs["again"])
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_another_seed_gives_other_weights(runs):
    a, b = weights(runs["first"]), weights(runs["other"])
    assert any(not torch.equal(a[name], b[name]) for name in a)


def test_a_second_record_in_the_same_run_dir_is_numbered(tmp_path, make_cfg, tiny_data):
    cfg = make_cfg("seed=3")
    first = record_reproducibility(tmp_path, cfg, {})
    text = first.read_text()
    second = record_reproducibility(tmp_path, cfg, {"train": "precomputed"})
    assert first.name == RECORD_FILE and second.name == "reproducibility.resume-1.json"
    assert json.loads(second.read_text())["requirements"] == "requirements.resume-1.txt"
    assert (tmp_path / "requirements.resume-1.txt").is_file()
    assert first.read_text() == text  # a resumed run keeps the first record
    assert json.loads(second.read_text())["data"]["files"]["train"]["sha256"] == "precomputed"


def test_git_missing_or_not_a_checkout_never_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on PATH
    assert git_state() is None


def test_a_command_line_run_records_its_command_and_overrides(tmp_path, tiny_model, tiny_data):
    overrides = [*tiny_overrides(tiny_model, tiny_data), *QUICK, "debug=fdr", "seed=5"]
    result = subprocess.run(
        [
            script("lmforge-train"),
            *overrides,
            f"paths.cache_dir={tmp_path / 'cache'}",
            "hydra.run.dir=run",
        ],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Nothing of bitsandbytes (imported by peft, unused by the run) in its log.
    log = "".join(p.read_text() for p in (tmp_path / "run").glob("*.log"))
    assert log
    assert "kernels-community" not in log + result.stdout + result.stderr
    record = json.loads((tmp_path / "run" / RECORD_FILE).read_text())
    assert record["command"][0] == "lmforge-train"
    assert "seed=5" in record["command"] and "seed=5" in record["overrides"]
    assert record["seed"] == 5 and record["started_by"] == "hydra (run)"
    assert record["data"]["files"]["train"]["sha256"] == sha256(tiny_data / "train.csv")
