"""Scaling out: DeepSpeed configs composed, validated and refused cleanly without CUDA, their
checkpoint folders gathered into one file for eval/export/predict; QLoRA refused cleanly
where bitsandbytes cannot quantize."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from lmforge.config.validation import check_config, check_machine
from lmforge.errors import LmforgeError
from lmforge.runtime import checkpoints
from lmforge.runtime.checkpoints import read_checkpoint
from tests.helpers import compose_config, save_tiny_bert, train_tiny

DEEPSPEED = ["deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload"]
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


@pytest.mark.parametrize("option", DEEPSPEED)
def test_deepspeed_configs_compose_and_validate(option):
    cfg = compose_config([f"trainer={option}"])
    strategy = cfg.trainer.strategy
    assert strategy._target_ == "lightning.pytorch.strategies.DeepSpeedStrategy"
    assert strategy.stage == (2 if option == "deepspeed_zero2" else 3)
    assert strategy.offload_optimizer is (option == "deepspeed_zero3_offload")
    assert cfg.trainer.devices == 1 and cfg.trainer.precision == "bf16-mixed"
    check_config(cfg)  # one GPU is a valid DeepSpeed setup (ZeRO shards, offload)


@pytest.mark.skipif(torch.cuda.is_available() and HAS_DEEPSPEED, reason="this machine runs it")
@pytest.mark.parametrize("option", DEEPSPEED)
def test_deepspeed_is_refused_where_it_cannot_run(option):
    with pytest.raises(LmforgeError) as refused:
        check_machine(compose_config([f"trainer={option}"]))
    message = str(refused.value)
    assert "runs on CUDA GPUs only" in message and "trainer=cpu" in message
    if not torch.cuda.is_available():
        assert "a CUDA GPU (this machine has none)" in message
    if not HAS_DEEPSPEED:
        assert "pip install 'lmforge[deepspeed]'" in message


def test_other_strategies_need_nothing_more(tmp_path):
    check_machine(compose_config(["trainer=ddp_sim"]))
    check_machine(compose_config([]))


def fake_deepspeed_folder(folder: Path) -> Path:
    """The layout Lightning's DeepSpeed strategy saves a checkpoint in."""
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "checkpoint" / "mp_rank_00_model_states.pt").write_bytes(b"")
    (folder / "latest").write_text("checkpoint")
    return folder


def test_a_deepspeed_checkpoint_folder_needs_deepspeed_to_be_read(tmp_path, monkeypatch):
    folder = fake_deepspeed_folder(tmp_path / "best.ckpt")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(LmforgeError, match=r"DeepSpeed checkpoint folder.*lmforge\[deepspeed\]"):
        read_checkpoint(folder)


def test_a_deepspeed_checkpoint_folder_is_gathered_once(
    tmp_path_factory, tiny_model, tiny_data, monkeypatch
):
    """Lightning's converter writes one ordinary checkpoint beside the folder; later reads
    reuse it while it is newer than the folder."""
    ckpt = train_tiny(tmp_path_factory.mktemp("run"), tiny_model, tiny_data)
    folder = fake_deepspeed_folder(ckpt.parent / "zero.ckpt")
    calls = []

    def convert(checkpoint_dir: str, output_file: str) -> None:
        calls.append(checkpoint_dir)
        shutil.copy(ckpt, output_file)  # what gathering the shards gives: one whole checkpoint

    import lightning.pytorch.utilities.deepspeed as lightning_deepspeed

    monkeypatch.setattr(lightning_deepspeed, "convert_zero_checkpoint_to_fp32_state_dict", convert)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "deepspeed" else real_find_spec(name, *a),
    )
    first = read_checkpoint(folder)
    second = read_checkpoint(folder)
    assert calls == [str(folder)]
    assert first["lmforge"] == second["lmforge"] == read_checkpoint(ckpt)["lmforge"]
    assert checkpoints.consolidated(folder) == folder.with_name("zero.ckpt.fp32.ckpt")
    assert not list(folder.parent.glob("*.partial"))


@pytest.mark.gpu
@pytest.mark.skipif(
    not (torch.cuda.is_available() and HAS_DEEPSPEED), reason="needs CUDA and deepspeed"
)
@pytest.mark.parametrize("option", ["deepspeed_zero2", "deepspeed_zero3"])
def test_deepspeed_trains_and_its_checkpoint_evaluates(option, make_cfg, tmp_path):
    from lmforge.evaluate import evaluate
    from lmforge.train import train

    train(make_cfg(f"trainer={option}", "trainer.max_epochs=1"))
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    assert best.is_dir()
    evaluate(make_cfg(f"ckpt_path={best}", config_name="eval", run="eval"))
    assert best.with_name("best.ckpt.fp32.ckpt").is_file()


HAS_BITSANDBYTES = importlib.util.find_spec("bitsandbytes") is not None


def test_qlora_config_composes_over_lora():
    cfg = compose_config(["finetune=qlora"])
    assert cfg.finetune._target_ == "lmforge.finetune.strategies.QLora"
    assert (cfg.finetune.quant_type, cfg.finetune.r) == ("nf4", 8)
    check_config(cfg)


def test_qlora_is_refused_without_bitsandbytes(make_cfg, monkeypatch):
    from lmforge.cli import _user_error_in
    from lmforge.train import train

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a),
    )
    with pytest.raises(Exception) as raised:
        train(make_cfg("finetune=qlora"))
    refused = _user_error_in(raised.value)
    assert refused is not None
    assert "bitsandbytes, which is not installed" in str(refused)
    assert "pip install 'lmforge[qlora]'" in str(refused)


@pytest.fixture(scope="module")
def bert_64(tmp_path_factory) -> Path:
    """A 2-layer BERT of width 64: 4-bit blocks of 64 weights need layers at least that wide."""
    return save_tiny_bert(tmp_path_factory.mktemp("bert_64"), hidden_size=64)


@pytest.mark.skipif(not HAS_BITSANDBYTES, reason="needs bitsandbytes")
def test_qlora_trains_adapters_over_a_4bit_base_and_saves_only_them(make_cfg, tmp_path, bert_64):
    import bitsandbytes

    from lmforge.finetune.strategies import quantization_problem
    from lmforge.tasks.runs import load_task_module
    from lmforge.train import train

    try:
        quantization_problem("cuda" if torch.cuda.is_available() else "cpu")
    except LmforgeError as refused:
        pytest.skip(str(refused))
    train(
        make_cfg(
            f"model.pretrained={bert_64}",
            "finetune=qlora",
            "finetune.compute_dtype=float32",
            "trainer.max_epochs=1",
        )
    )
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    state = read_checkpoint(best)["state_dict"]
    assert state and all("lora_" in k or "classifier" in k for k in state), list(state)[:5]
    module = load_task_module(str(best))
    quantized = [m for m in module.model.modules() if isinstance(m, bitsandbytes.nn.Linear4bit)]
    assert quantized, "the base model's linear layers are 4-bit"
    metrics = (tmp_path / "run" / "metrics.json").read_text()
    assert '"name": "qlora"' in metrics
    from lmforge.export import export

    # Merging the adapters into 4-bit weights quantizes them again: close, not exact.
    cfg = make_cfg(f"ckpt_path={best}", "tolerance=0.01", config_name="export", run="export")
    folder = export(cfg)
    assert json.loads((folder / "parity.json").read_text())["passed"]
