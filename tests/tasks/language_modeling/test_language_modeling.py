"""Causal and masked LM: block grouping, padding, seeded masking, perplexity, tiny runs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.testing import assert_close

from lmforge.data.datamodule import load_tokenizer
from lmforge.errors import LmforgeError
from lmforge.evaluate import evaluate
from lmforge.tasks.language_modeling.data import (
    CausalCollator,
    LanguageModelingDataModule,
    document_separator,
    group_blocks,
)
from lmforge.tasks.language_modeling.metrics import TokenLoss
from lmforge.tasks.runs import load_task_module
from lmforge.train import train
from tests.helpers import TINY_GPT2


def test_group_blocks_concatenates_and_drops_the_remainder():
    assert group_blocks([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4) == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_wordpiece_documents_are_separated_by_sep(tiny_model):
    tokenizer = load_tokenizer(str(tiny_model))
    assert tokenizer.eos_token_id is None
    assert document_separator(tokenizer) == tokenizer.sep_token_id


def test_causal_collator_masks_padding_out_of_the_loss(tiny_model):
    collator = CausalCollator(load_tokenizer(str(tiny_model)))
    batch = collator([{"input_ids": [5, 6, 7]}, {"input_ids": [8]}])
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_causal_collator_pads_to_a_multiple(tiny_model):
    collator = CausalCollator(load_tokenizer(str(tiny_model)), pad_to_multiple_of=4)
    batch = collator([{"input_ids": [5, 6, 7, 9, 10]}, {"input_ids": [8]}])
    assert batch["input_ids"].shape == (2, 8)
    assert batch["labels"].tolist()[1] == [8] + [-100] * 7
    assert batch["attention_mask"].sum(dim=1).tolist() == [5, 1]


def test_token_weighted_perplexity():
    metric = TokenLoss()
    metric.update(torch.tensor(2.0), 30)  # a batch of 30 tokens at mean loss 2
    metric.update(torch.tensor(4.0), 10)
    values = metric.compute()
    assert_close(values["token_loss"], torch.tensor(2.5))  # (60 + 40) / 40
    assert values["perplexity"].item() == pytest.approx(math.exp(2.5), rel=1e-5)
    # not the mean of the two batch perplexities
    assert values["perplexity"].item() != pytest.approx((math.exp(2) + math.exp(4)) / 2)


def build(tmp_path, tiny_model, tiny_text, **kwargs) -> LanguageModelingDataModule:
    kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
    dm = LanguageModelingDataModule(
        tokenizer=str(tiny_model),
        train_file=str(tiny_text / "train.txt"),
        validation_file=str(tiny_text / "validation.txt"),
        test_file=str(tiny_text / "test.txt"),
        block_size=16,
        **kwargs,
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_group_mode_makes_full_blocks_with_separators(tmp_path, tiny_model, tiny_text):
    dm = build(tmp_path, tiny_model, tiny_text, objective="causal", mode="group")
    blocks = dm.splits["train"]["input_ids"]
    assert all(len(b) == 16 for b in blocks)
    sep = dm.tokenizer.sep_token_id
    assert sum(b.count(sep) for b in blocks) >= 100  # one per document (remainder dropped)


def test_truncate_mode_keeps_one_document_per_example(tmp_path, tiny_model, tiny_text):
    dm = build(tmp_path, tiny_model, tiny_text, objective="causal", mode="truncate")
    assert len(dm.splits["train"]) == 120
    assert max(len(x) for x in dm.splits["train"]["input_ids"]) <= 16


def test_eval_masking_is_seeded_and_training_masking_is_fresh(tmp_path, tiny_model, tiny_text):
    first = build(tmp_path / "a", tiny_model, tiny_text, objective="masked", seed=7)
    second = build(tmp_path / "b", tiny_model, tiny_text, objective="masked", seed=7)
    assert first.splits["validation"]["input_ids"] == second.splits["validation"]["input_ids"]
    labels = [x for row in first.splits["validation"]["labels"] for x in row]
    share = sum(x != -100 for x in labels) / len(labels)
    assert 0.05 < share < 0.3
    other = build(tmp_path / "c", tiny_model, tiny_text, objective="masked", seed=8)
    assert other.splits["validation"]["input_ids"] != first.splits["validation"]["input_ids"]
    collator = first.build_collator()
    rows = [first.splits["train"][i] for i in range(4)]
    torch.manual_seed(0)
    one = collator(rows)["labels"]
    two = collator(rows)["labels"]
    assert not torch.equal(one, two)


def test_whole_word_masking_masks_every_subword_of_a_word(tmp_path, tiny_model):
    text = tmp_path / "t" / "train.txt"
    text.parent.mkdir()
    text.write_text("\n".join(["unbelievably extraordinary internationalization"] * 40) + "\n")
    dm = LanguageModelingDataModule(
        tokenizer=str(tiny_model),
        train_file=str(text),
        cache_dir=str(tmp_path / "cache"),
        objective="masked",
        whole_word_mask=True,
        block_size=16,
        mlm_probability=0.3,
        validation_ratio=0.25,
        test_ratio=0.25,
    )
    dm.prepare_data()
    dm.setup("fit")
    tokenizer = dm.tokenizer
    for ids, labels in zip(
        dm.splits["validation"]["input_ids"], dm.splits["validation"]["labels"], strict=True
    ):
        tokens = tokenizer.convert_ids_to_tokens(
            [lab if lab != -100 else i for i, lab in zip(ids, labels, strict=True)]
        )
        masked = [lab != -100 for lab in labels]
        for k in range(1, len(tokens)):
            if tokens[k].startswith("##"):
                assert masked[k] == masked[k - 1], tokens


def test_masked_lm_needs_a_mask_token(tmp_path, tiny_model, tiny_text):
    dm = LanguageModelingDataModule(
        tokenizer=str(tiny_model), objective="masked", train_file=str(tiny_text / "train.txt")
    )
    dm._ensure_tokenizer().mask_token = None
    with pytest.raises(LmforgeError, match="no mask token"):
        dm._masking_collator()


def test_causal_lm_from_scratch_end_to_end(make_cfg, tmp_path, tiny_text):
    value = train(
        make_cfg(
            "experiment=debian_lm_gpt2_scratch",
            f"data.train_file={tiny_text / 'train.txt'}",
            *TINY_GPT2,
            "data.block_size=16",
            "trainer.max_epochs=8",
            "optimizer.lr=1e-2",
            "data.max_train_samples=null",
            "model.generate_max_new_tokens=5",
        )
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    before = metrics["before_training"]
    assert before["start"]["fresh"] is True and "randomly initialised" in before["note"]
    assert metrics["test"]["test/perplexity"] < before["test"]["test/perplexity"] / 10
    assert metrics["best_validation"]["metric"] == "val/perplexity" and value > 1
    module = load_task_module(tmp_path / "run" / "checkpoints" / "best.ckpt")
    assert module.task_name == "causal_lm"
    assert module.generate(["match goal"])[0].startswith("match goal")
    evaluated = evaluate(
        make_cfg(
            f"ckpt_path={tmp_path / 'run/checkpoints/best.ckpt'}", config_name="eval", run="eval"
        )
    )
    assert evaluated["test/perplexity"] == pytest.approx(metrics["test"]["test/perplexity"])


def test_masked_lm_end_to_end(make_cfg, tmp_path, tiny_text, tiny_model):
    train(
        make_cfg(
            "experiment=debian_mlm_minilm",
            f"model.pretrained={tiny_model}",
            f"data.train_file={tiny_text / 'train.txt'}",
            "data.block_size=32",
            "trainer.max_epochs=2",
            "optimizer.lr=3e-3",
            "data.max_train_samples=null",
        )
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"test/loss", "test/perplexity", "test/masked_acc"} <= set(metrics["test"])
    assert any(
        k.startswith("cls.") for k in metrics["before_training"]["start"]["newly_initialised"]
    )
    assert (
        metrics["test"]["test/perplexity"] < metrics["before_training"]["test"]["test/perplexity"]
    )


def test_text_file_mode_document_reads_one_example_per_file(tmp_path, tiny_model, tiny_text):
    dm = LanguageModelingDataModule(
        tokenizer=str(tiny_model),
        train_file=str(tiny_text / "train.txt"),
        validation_file=str(tiny_text / "validation.txt"),
        test_file=str(tiny_text / "test.txt"),
        cache_dir=str(tmp_path / "cache"),
        objective="causal",
        mode="truncate",
        text_file_mode="document",
        block_size=16,
    )
    dm.prepare_data()
    dm.setup("fit")
    assert {split: len(ds) for split, ds in dm.splits.items()} == {
        "train": 1,
        "validation": 1,
        "test": 1,
    }
    assert dm.meta["stats"]["train"]["truncated"] == 1  # the whole file is far over 16 tokens


def test_lora_on_a_pretrained_causal_lm_saves_adapters_and_generates(
    make_cfg, tmp_path, tiny_text, tiny_gpt2
):
    train(
        make_cfg(
            "experiment=debian_lm_gpt2_scratch",
            "model=gpt2",
            f"model.pretrained={tiny_gpt2}",
            "finetune=lora",
            f"data.train_file={tiny_text / 'train.txt'}",
            "data.block_size=16",
            "debug=limit",
            "model.generate_max_new_tokens=3",
        )
    )
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=False)["state_dict"]
    assert saved and all("lora_" in key for key in saved)  # GPT-2's head is tied: no head weights
    module = load_task_module(ckpt)
    assert module.generate(["match goal"])[0].startswith("match goal")


def test_a_split_shorter_than_one_block_is_refused_with_its_token_count(tmp_path, tiny_model):
    """A small corpus whose carved test split holds less than one block: one paragraph naming
    the split, its source, its tokens and the block size, not a KeyError from datasets."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"line {i} of a small corpus.\n" for i in range(40)))
    dm = LanguageModelingDataModule(
        tokenizer=str(tiny_model),
        train_file=str(corpus),
        block_size=128,
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(LmforgeError) as error:
        dm.prepare_data()
    message = str(error.value)
    assert message.startswith("The test split (carved from data.train_file=")
    assert "data.block_size=128" in message and "data.mode=truncate" in message
    assert "\n" not in message
    # Each line is 7 tokens and its separator; 10% of 40 lines are carved for test.
    assert "about 32 tokens" in message
    # In truncate mode every document is an example: the same corpus prepares.
    LanguageModelingDataModule(
        tokenizer=str(tiny_model),
        train_file=str(corpus),
        block_size=128,
        mode="truncate",
        cache_dir=str(tmp_path / "cache"),
    ).prepare_data()
