"""Shared fixtures: a tiny random BERT, tiny generated data, configs composed from conf/.

Everything runs on CPU, offline, inside pytest's tmp dirs.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from lmforge.config.resources import embedded_model_path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Under pytest-xdist every worker would start as many compute threads as the machine has
# cores, so N workers oversubscribe the cores N times over; each gets its share instead (the
# processes tests start inherit it).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

import datasets  # noqa: E402 (after the environment above)

from tests.helpers import (  # noqa: E402
    TINY_GPT2,
    compose_config,
    make_conll_sentences,
    make_rows,
    save_tiny_bert,
    tiny_overrides,
    train_tiny,
    write_conll,
    write_csv,
)

datasets.disable_progress_bars()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """train.csv / validation.csv / test.csv with 3 topics (96 / 30 / 30 rows)."""
    root = tmp_path_factory.mktemp("tiny_data")
    write_csv(root / "train.csv", make_rows(96, seed=1))
    write_csv(root / "validation.csv", make_rows(30, seed=2))
    write_csv(root / "test.csv", make_rows(30, seed=3))
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with the embedded WordPiece tokenizer."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), hidden_size=32)


@pytest.fixture
def make_cfg(tmp_path, tiny_model, tiny_data):
    """Build a tiny training config writing into tmp_path; extra overrides win."""

    def _make(*overrides: str, run: str = "run", config_name: str = "train") -> DictConfig:
        base = tiny_overrides(tiny_model, tiny_data) if config_name == "train" else []
        cfg = compose_config([*base, *overrides], config_name=config_name)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / run)
            cfg.paths.cache_dir = str(tmp_path / "cache")
        return cfg

    return _make


@pytest.fixture
def run_predict(make_cfg):
    """Predict with overrides of conf/predict.yaml (each call gets its own run directory)."""
    calls = itertools.count()

    def _run(*overrides: str) -> Path:
        from lmforge.predict import predict

        return predict(make_cfg(*overrides, config_name="predict", run=f"p{next(calls)}"))

    return _run


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def tiny_ner(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_ner")
    write_conll(root / "train.conll", make_conll_sentences(80, 1))
    write_conll(root / "validation.conll", make_conll_sentences(20, 2))
    write_conll(root / "test.conll", make_conll_sentences(20, 3))
    return root


@pytest.fixture(scope="session")
def tiny_text(tmp_path_factory) -> Path:
    """train.txt / validation.txt / test.txt: one short document per line."""
    root = tmp_path_factory.mktemp("tiny_text")
    for split, n, seed in (("train", 120, 1), ("validation", 20, 2), ("test", 20, 3)):
        docs = [r["text"] for r in make_rows(n, seed)]
        (root / f"{split}.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer GPT-2 (width 32) with the embedded WordPiece tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("tiny_gpt2")
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path())
    torch.manual_seed(0)
    GPT2LMHeadModel(
        GPT2Config(vocab_size=tokenizer.vocab_size, n_layer=2, n_embd=32, n_head=2, n_positions=64)
    ).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory, tiny_model, tiny_data) -> Path:
    """One quick tiny classification run (`QUICK`), shared by the test files that load or
    read it and never change it: its best checkpoint (the run directory is two levels up)."""
    return train_tiny(tmp_path_factory.mktemp("tiny_classifier"), tiny_model, tiny_data)


@pytest.fixture(scope="session")
def tiny_full_run(tmp_path_factory, tiny_model, tiny_data) -> tuple[Path, float | None]:
    """A complete tiny classification run as a user gets it: the untouched model evaluated
    first, the three baselines, three epochs (two leave the tiny model near chance on some
    seeds), up to 3 flipped test examples each way. Its run directory and what `train`
    returned (the best validation value); shared by the tests that only read it."""
    from lmforge.train import train

    root = tmp_path_factory.mktemp("tiny_full_run")
    overrides = ["trainer.max_epochs=3", "compare.max_flipped=3"]
    cfg = compose_config([*tiny_overrides(tiny_model, tiny_data), *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "run")
        cfg.paths.cache_dir = str(root / "cache")
    return root / "run", train(cfg)


@pytest.fixture(scope="session")
def tiny_tagger(tmp_path_factory, tiny_model, tiny_data, tiny_ner) -> Path:
    """A quick tiny NER run on `tiny_ner`: its best checkpoint (shared like `tiny_classifier`)."""
    return train_tiny(
        tmp_path_factory.mktemp("tiny_tagger"),
        tiny_model,
        tiny_data,
        "experiment=debian_ner_minilm",
        f"data.train_file={tiny_ner / 'train.conll'}",
        "data.max_length=32",
        "trainer.max_epochs=2",
        "optimizer.lr=3e-2",
    )


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory, tiny_model, tiny_data, tiny_text) -> Path:
    """A quick tiny GPT-2 trained on `tiny_text` in blocks of 16: its best checkpoint."""
    return train_tiny(
        tmp_path_factory.mktemp("tiny_causal_lm"),
        tiny_model,
        tiny_data,
        "experiment=debian_lm_gpt2_scratch",
        f"data.train_file={tiny_text / 'train.txt'}",
        *TINY_GPT2,
        "data.block_size=16",
        "data.max_train_samples=null",
        "optimizer.lr=1e-2",
        "model.generate_prompts=[]",
    )
