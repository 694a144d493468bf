"""Slow tests on the embedded pretrained MiniLM (run with `make test-all` or `-m slow`)."""

from __future__ import annotations

import json

import pytest
from omegaconf import open_dict

from lmforge.train import train
from tests.helpers import compose_config


@pytest.mark.slow
def test_default_experiment_on_the_embedded_model(tmp_path):
    cfg = compose_config([])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.cache_dir = str(tmp_path / "cache")
    best = train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # 12 topics: the majority class scores 0.117 and TF-IDF + logistic regression 0.875.
    assert metrics["test"]["test/acc"] > 0.85
    assert best > 0.85
    assert metrics["data"] == {"train": 1796, "validation": 257, "test": 513}
