"""Helpers shared by the test files: tiny generated data, configs composed from the real
conf/, tiny runs, and the console scripts as a user runs them."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from lmforge.config.resources import config_dir, embedded_model_path

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


TINY_GPT2 = [
    "model.from_config.n_layer=2",
    "model.from_config.n_embd=32",
    "model.from_config.n_head=2",
    "model.from_config.n_positions=64",
]


def script(name: str) -> str:
    """The console script installed beside this interpreter (a venv's bin/), else on PATH."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or name


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "HYDRA_FULL_ERROR": ""}


def run(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(args), cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )


# No before/after evaluation, test pass or baselines: the runs only need a checkpoint.
# Overrides of a quick tiny classification run (no evaluation before, no test, no baselines).
QUICK = ["evaluate_before=false", "test=false", "trainer.max_epochs=1", "++compare.baselines=[]"]


# A quiet float32 run on every host (`auto` picks bf16-mixed only where bfloat16 measures
# faster): no progress bars, CSV logs only.
QUIET = [
    "trainer.precision=32-true",
    "trainer.enable_progress_bar=false",
    "callbacks.rich_progress_bar=null",
    "logger=csv",
]


def train_run(root: Path, overrides: list[str]) -> Path:
    """Train the composed `overrides` into `root`/run (tokenization cache in `root`/cache);
    return the run directory."""
    from lmforge.train import train

    cfg = compose_config(overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "run")
        cfg.paths.cache_dir = str(root / "cache")
    train(cfg)
    return root / "run"


def train_tiny(root: Path, tiny_model: Path, tiny_data: Path, *overrides: str) -> Path:
    """Train a tiny run under `root`; return its best checkpoint."""
    from lmforge.train import train

    cfg = compose_config([*tiny_overrides(tiny_model, tiny_data), *QUICK, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "run")
        cfg.paths.cache_dir = str(root / "cache")
    train(cfg)
    return root / "run" / "checkpoints" / "best.ckpt"


def read_records(path: Path) -> list[dict]:
    """Records of a jsonl file, or of a csv file with its JSON-encoded cells decoded."""
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key, value in row.items():
            if value[:1] in "[{":
                row[key] = json.loads(value)
    return rows


def quick(tiny_model: Path, tiny_data: Path, tmp_path: Path, epochs: int = 1) -> list[str]:
    """Overrides for fast tiny jobs writing under tmp_path."""
    base = [o for o in tiny_overrides(tiny_model, tiny_data) if "max_epochs" not in o]
    return [
        *base,
        f"trainer.max_epochs={epochs}",
        "compare.baselines=[]",
        "evaluate_before=false",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]


def launch(*args: str, cwd: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [script("lmforge-train"), "-m", *args],
        cwd=cwd,
        env={**ENV, "WANDB_MODE": "offline"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **kwargs,
    )


def finish(process: subprocess.Popen, timeout: int = 600) -> str:
    output, _ = process.communicate(timeout=timeout)
    return output


def classification_data(tmp_path: Path, tiny_model: Path, **kwargs: object) -> Any:
    """A text-classification datamodule over the tiny model's tokenizer, set up (cache in
    tmp_path, max_length 32 unless given)."""
    from lmforge.tasks.text_classification.data import TextClassificationDataModule

    kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
    kwargs.setdefault("max_length", 32)
    dm = TextClassificationDataModule(tokenizer=str(tiny_model), **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def classification_data_error(tmp_path: Path, tiny_model: Path, **kwargs: object) -> str:
    """The message of the LmforgeError that setting up such a datamodule raises."""
    import pytest

    from lmforge.errors import LmforgeError

    with pytest.raises(LmforgeError) as info:
        classification_data(tmp_path, tiny_model, **kwargs)
    return str(info.value)


# A ChatML template like the embedded SmolLM2's (without its default system message).
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_gguf(path: Path, layers: int = 2, width: int = 16, seed: int = 0) -> Path:
    """A tiny random Llama in a GGUF file (float32 tensors), with a byte-level BPE tokenizer,
    ChatML special tokens, EOS as pad and a chat template: the layout of the embedded SmolLM2
    file at a few kilobytes."""
    import gguf
    import numpy as np
    from tokenizers.pre_tokenizers import ByteLevel

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["Ġ t", "h e", "Ġt he", "Ġ a", "i s"]
    tokens = specials + sorted(ByteLevel.alphabet()) + ["Ġt", "he", "Ġthe", "Ġa", "is"]
    control, normal = gguf.TokenType.CONTROL, gguf.TokenType.NORMAL
    heads, kv_heads, feed_forward = 2, 1, 2 * width
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(128)
    writer.add_embedding_length(width)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(feed_forward)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(width // heads)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([control] * len(specials) + [normal] * (len(tokens) - len(specials)))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_chat_template(CHATML)
    rng = np.random.default_rng(seed)

    def add(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(np.float32))

    add("token_embd.weight", len(tokens), width)
    kv_width = kv_heads * (width // heads)
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(width, np.float32))
        add(f"blk.{i}.attn_q.weight", width, width)
        add(f"blk.{i}.attn_k.weight", kv_width, width)
        add(f"blk.{i}.attn_v.weight", kv_width, width)
        add(f"blk.{i}.attn_output.weight", width, width)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(width, np.float32))
        add(f"blk.{i}.ffn_gate.weight", feed_forward, width)
        add(f"blk.{i}.ffn_up.weight", feed_forward, width)
        add(f"blk.{i}.ffn_down.weight", width, feed_forward)
    writer.add_tensor("output_norm.weight", np.ones(width, np.float32))  # no output.weight: tied
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
