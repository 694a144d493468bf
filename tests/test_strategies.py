"""Fine-tuning strategies: exact trainable counts, frozen weights stay, trainable ones move."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BertModel

from lmforge.errors import LmforgeError
from lmforge.strategies import Freeze, Full
from lmforge.tasks import TextClassificationModule
from lmforge.train import train


def build(tiny_model, strategy) -> TextClassificationModule:
    return TextClassificationModule(
        pretrained=str(tiny_model), label_names=["a", "b", "c"], finetune=strategy
    )


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_trainable_counts_are_exact(tiny_model):
    full = build(tiny_model, Full())
    total = count(full)
    assert full.parameter_counts() == {
        "trainable": total,
        "total": total,
        "trainable_percent": 100.0,
    }
    bert = full.model.bert
    embeddings = count(bert.embeddings)
    layer = count(bert.encoder.layer[0])
    head = 32 * 3 + 3  # classifier weight + bias
    pooler = count(bert.pooler)
    assert build(tiny_model, Freeze(embeddings=True)).parameter_counts()["trainable"] == (
        total - embeddings
    )
    assert (
        build(tiny_model, Freeze(embeddings=True, layers=1)).parameter_counts()["trainable"]
        == total - embeddings - layer
    )
    probe = build(tiny_model, Freeze(backbone=True)).parameter_counts()
    assert probe["trainable"] == head
    assert probe["trainable_percent"] == pytest.approx(100 * head / total, abs=1e-3)
    assert total == embeddings + 2 * layer + pooler + head


def test_freezing_more_layers_than_exist_is_refused(tiny_model):
    with pytest.raises(LmforgeError, match=r"finetune\.layers=5, but the model has 2 layers"):
        build(tiny_model, Freeze(layers=5))


def test_frozen_weights_stay_and_trainable_ones_move(make_cfg, tmp_path, tiny_model):
    train(make_cfg("finetune=freeze", "finetune.layers=1", "debug=limit"))
    state = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    start = BertModel.from_pretrained(str(tiny_model)).state_dict()
    for name in (
        "embeddings.word_embeddings.weight",
        "encoder.layer.0.attention.self.query.weight",
    ):
        torch.testing.assert_close(state[f"model.bert.{name}"], start[name])
    moved = "encoder.layer.1.attention.self.query.weight"
    assert not torch.equal(state[f"model.bert.{moved}"], start[moved])
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["finetune"] == {
        "name": "freeze",
        "embeddings": True,
        "layers": 1,
        "backbone": False,
    }
    assert metrics["parameters"]["trainable"] < metrics["parameters"]["total"]


def test_init_from_continues_from_another_runs_weights(make_cfg, tmp_path):
    train(make_cfg("debug=limit", run="first"))
    first = tmp_path / "first/checkpoints/best.ckpt"
    train(make_cfg("debug=limit", f"model.init_from={first}", "train=false", run="second"))
    before = json.loads((tmp_path / "second/metrics.json").read_text())["before_training"]
    assert before["start"] == {"from": f"checkpoint {first}", "newly_initialised": []}
    assert "real before/after comparison" in before["note"]
    first_test = json.loads((tmp_path / "first/metrics.json").read_text())["test"]
    second_test = json.loads((tmp_path / "second/metrics.json").read_text())["test"]
    for key, value in first_test.items():  # the same weights give the same figures
        assert before["test"][key] == pytest.approx(value, abs=1e-6), key
        assert second_test[key] == pytest.approx(value, abs=1e-6), key


def test_init_from_an_unrelated_checkpoint_is_refused(tmp_path, tiny_model):
    from lmforge.tasks import CausalLMModule

    gpt = CausalLMModule(
        pretrained=None,
        tokenizer=str(tiny_model),
        from_config={
            "model_type": "gpt2",
            "n_layer": 1,
            "n_embd": 16,
            "n_head": 2,
            "n_positions": 32,
        },
    )
    path = tmp_path / "gpt.ckpt"
    torch.save({"state_dict": gpt.state_dict(), "lmforge": {"task": "causal_lm"}}, path)
    with pytest.raises(LmforgeError, match="no weight of that checkpoint fits"):
        TextClassificationModule(
            pretrained=str(tiny_model), label_names=["a", "b"], init_from=str(path)
        )


def test_layer_decay_runs_end_to_end_with_the_schedule(make_cfg, tmp_path):
    train(make_cfg("optimizer.layer_decay=0.8", "debug=limit"))
    rows = (tmp_path / "run/csv/metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    lr_columns = [c for c in header if c.startswith("lr-AdamW")]
    assert len(lr_columns) > 2  # one group per depth and decay kind
    assert (tmp_path / "run/metrics.json").is_file()
