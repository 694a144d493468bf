"""Shared fixtures: a tiny random BERT, tiny generated data, configs composed from conf/.

Everything runs on CPU, offline, inside pytest's tmp dirs.
"""

from __future__ import annotations

import csv
import itertools
import os
import random
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from lmforge.config.resources import config_dir, embedded_model_path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import datasets

datasets.disable_progress_bars()

TOPICS = {
    "sports": "match goal team player coach league score season win stadium ball referee",
    "cooking": "recipe oven flour sugar bake boil pan salt butter dough kitchen spice",
    "music": "guitar song chord melody drum album concert rhythm singer piano band note",
}
FILLER = "the a of and with very some new this that it is on for"
# The checkout's top folder (conf/, scripts/, notebooks/).
REPO = Path(__file__).resolve().parents[1]


def make_rows(n: int, seed: int, labels: dict[str, str] = TOPICS) -> list[dict[str, str]]:
    """`n` rows of short texts whose words reveal their topic, cycling through the labels."""
    rng = random.Random(seed)
    names = list(labels)
    rows = []
    for i in range(n):
        label = names[i % len(names)]
        words = labels[label].split()
        length = rng.randint(4, 18)
        text = " ".join(
            rng.choice(words) if rng.random() < 0.6 else rng.choice(FILLER.split())
            for _ in range(length)
        )
        rows.append({"text": text, "label": label})
    return rows


def write_csv(path: Path, rows: list[dict], fieldnames: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


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


def save_tiny_bert(root: Path, hidden_size: int) -> Path:
    """A randomly initialised 2-layer BERT of the given width (seeded) and the embedded
    WordPiece tokenizer, saved in `root`."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def compose_config(
    overrides: list[str] | None = None, config_name: str = "train", return_hydra_config=False
) -> DictConfig:
    """Compose a config from the real conf/ directory, as the command line would."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return compose(
            config_name=config_name,
            overrides=overrides or [],
            return_hydra_config=return_hydra_config,
        )


def tiny_overrides(tiny_model: Path, tiny_data: Path) -> list[str]:
    return [
        f"model.pretrained={tiny_model}",
        f"data.train_file={tiny_data / 'train.csv'}",
        "data.batch_size=16",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "optimizer.lr=3e-3",
        # Plain float32 on every host: `auto` picks bf16-mixed only where bfloat16 measures
        # faster, so pinned values would depend on the machine.
        "trainer.precision=32-true",
    ]


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


ENTITY_WORDS = {"LANG": ["Python", "Perl", "Rust"], "OS": ["Linux", "Windows"]}


def make_conll_sentences(n: int, seed: int) -> list[list[tuple[str, str]]]:
    """Sentences of (word, IOB2 tag) with LANG and OS entities in simple contexts."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        words = [(w, "O") for w in rng.sample(FILLER.split(), 3)]
        kind = rng.choice(list(ENTITY_WORDS))
        words.append(("written in" if kind == "LANG" else "runs on", "O"))
        words.append((rng.choice(ENTITY_WORDS[kind]), f"B-{kind}"))
        if kind == "OS" and rng.random() < 0.5:
            words.append(("kernel", f"I-{kind}"))
        words.append((".", "O"))
        flat = []
        for word, tag in words:
            parts = word.split()
            flat.append((parts[0], tag))
            flat.extend((p, "O") for p in parts[1:])
        sentences.append(flat)
    return sentences


def write_conll(path: Path, sentences: list[list[tuple[str, str]]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["-DOCSTART- O", ""]
    for sentence in sentences:
        lines += [f"{w}\t{t}" for w, t in sentence] + [""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


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


TINY_GPT2 = [
    "model.from_config.n_layer=2",
    "model.from_config.n_embd=32",
    "model.from_config.n_head=2",
    "model.from_config.n_positions=64",
]
