"""Training efficiency on record: model FLOPs per batch against a hand count, the peak's
sources, and the figures a run writes."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BertConfig, BertModel

from lmforge.runtime.flops import (
    ModelFlops,
    arithmetic_of,
    dense_parameters,
    gpu_peak,
    peak_flops,
)


def test_model_flops_of_a_batch_match_a_hand_count():
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = BertModel(config)
    # Per layer: Q, K, V, output (4 x (32*32 + 32)), feed-forward (32*64 + 64 + 64*32 + 32),
    # two layer norms (2 x 64); the pooler (32*32 + 32); the embeddings' layer norm (64).
    layer = 4 * (32 * 32 + 32) + (32 * 64 + 64 + 64 * 32 + 32) + 2 * 64
    assert dense_parameters(model) == 2 * layer + (32 * 32 + 32) + 64
    flops = ModelFlops(model)
    assert (flops.layers, flops.width) == (2, 32)
    n = dense_parameters(model)
    assert flops.per_batch(rows=4, positions=10) == 6 * n * 40 + 12 * 2 * 32 * 40 * 10


def test_the_peak_comes_from_a_known_gpu_or_a_cached_probe(tmp_path, monkeypatch):
    assert gpu_peak("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert gpu_peak("NVIDIA H100 PCIe", "float32") == 378e12
    assert gpu_peak("Some Future GPU", "bf16") is None
    assert arithmetic_of("bf16-mixed") == "bf16" and arithmetic_of("16-mixed") == "fp16"
    assert arithmetic_of("32-true", "medium") == "float32_medium"
    calls = []
    monkeypatch.setattr(
        "lmforge.runtime.flops.probe_matmul", lambda *args: calls.append(args) or 5e10
    )
    first, where = peak_flops(torch.device("cpu"), "float32", tmp_path)
    again, where_again = peak_flops(torch.device("cpu"), "float32", tmp_path)
    assert first == again == 5e10 and len(calls) == 1
    assert "measured now" in where and "cached in" in where_again


def test_a_real_matmul_probe_gives_a_plausible_rate():
    from lmforge.runtime.flops import probe_matmul

    rate = probe_matmul(torch.device("cpu"), "float32", size=256)
    assert 1e8 < rate < 1e14  # between a slow core and a GPU


def test_a_run_records_its_model_flops_and_mfu(make_cfg, tmp_path, monkeypatch):
    from lmforge.train import train

    monkeypatch.setattr("lmforge.runtime.flops.probe_matmul", lambda *args: 1e11)
    train(make_cfg("trainer.max_epochs=1", "evaluate_before=false", "compare.baselines=[]"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    efficiency = metrics["efficiency"]
    assert efficiency["peak_flops_per_second"] == 1e11 and efficiency["arithmetic"] == "float32"
    assert efficiency["mfu"] == pytest.approx(efficiency["model_flops_per_second"] / 1e11, abs=1e-4)
    assert efficiency["model_flops_per_second"] > 0
