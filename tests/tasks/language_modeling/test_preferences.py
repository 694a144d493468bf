"""Preference tuning (DPO/IPO): the loss against hand-computed values, pairs that share their
prompt, the reference computed once (by the base model with LoRA adapters disabled)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from lmforge.data.labels import IGNORE_INDEX
from lmforge.errors import LmforgeError
from lmforge.runtime.checkpoints import read_checkpoint
from lmforge.tasks.language_modeling.preferences import (
    PreferenceDataModule,
    preference_loss,
    sequence_logps,
)
from lmforge.tasks.runs import load_task_module
from tests.tasks.language_modeling.runs import one_file_datamodule, tiny_run

PAIRS = [
    {"prompt": "What is vim for?", "chosen": "Editing text.", "rejected": "Playing music."},
    {"prompt": "What is mutt for?", "chosen": "Reading mail.", "rejected": "Drawing maps."},
]


def _datamodule(tmp_path: Path, rows: list[dict], **options) -> PreferenceDataModule:
    return one_file_datamodule(PreferenceDataModule, tmp_path, rows, **options)


def test_the_dpo_and_ipo_losses_against_hand_computed_values():
    chosen, rejected = torch.tensor([-2.0]), torch.tensor([-5.0])
    reference_chosen, reference_rejected = torch.tensor([-3.0]), torch.tensor([-4.0])
    # h = (-2 + 5) - (-3 + 4) = 2; DPO: -log sigmoid(0.5 * 2) = log(1 + e^-1).
    dpo = preference_loss(chosen, rejected, reference_chosen, reference_rejected, beta=0.5)
    assert float(dpo) == pytest.approx(math.log(1 + math.exp(-1)))
    # IPO: (h - 1 / (2 * 0.5))^2 = (2 - 1)^2.
    ipo = preference_loss(chosen, rejected, reference_chosen, reference_rejected, 0.5, "ipo")
    assert float(ipo) == pytest.approx(1.0)
    # At the start the policy is the reference: the DPO loss is log 2.
    start = preference_loss(chosen, rejected, chosen, rejected, beta=0.1)
    assert float(start) == pytest.approx(math.log(2))


def test_sequence_log_probabilities_count_the_labelled_tokens_only():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]]))
    labels = torch.tensor([[IGNORE_INDEX, 1, 2]])
    # Token 1 is predicted from position 0 (p 0.25), token 2 from position 1 (p 0.1).
    expected = math.log(0.25) + math.log(0.1)
    assert float(sequence_logps(logits, labels)) == pytest.approx(expected, rel=1e-5)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 2]])
    assert float(sequence_logps(logits, labels)) == pytest.approx(math.log(0.1), rel=1e-5)


def test_chosen_and_rejected_share_the_prompt_tokens_and_train_only_the_answers(tmp_path):
    datamodule = _datamodule(tmp_path, PAIRS)
    pair = datamodule.splits["train"][0]
    chosen, rejected = pair["chosen_input_ids"], pair["rejected_input_ids"]
    prompt = next(i for i, label in enumerate(pair["chosen_labels"]) if label != IGNORE_INDEX)
    assert chosen[:prompt] == rejected[:prompt]
    tokenizer = datamodule.tokenizer
    answer = [t for t in pair["chosen_labels"] if t != IGNORE_INDEX]
    assert tokenizer.decode(answer) == "editing text. [SEP]"
    assert tokenizer.decode(chosen[:prompt]).endswith("# # # assistant :")
    batch = datamodule.build_collator()([datamodule.splits["train"][i] for i in range(2)])
    assert batch["input_ids"].shape[0] == 4 and batch["row"].tolist() == [0, 1]


def test_conversation_pairs_must_differ_only_in_their_last_answer(tmp_path):
    rows = [{"chosen": chat("Editing text."), "rejected": chat("Playing music.")}]
    datamodule = _datamodule(tmp_path / "ok", rows, prompt_column="none")
    assert len(datamodule.splits["train"]) == 1
    bad = [{"chosen": chat("Editing text."), "rejected": chat("Playing music.", "Other?")}]
    with pytest.raises(LmforgeError, match="row 1: the chosen and rejected conversations differ"):
        _datamodule(tmp_path / "bad", bad, prompt_column="none")


def test_pairs_with_the_same_answer_on_both_sides_are_dropped_and_named(tmp_path):
    same = {"prompt": "What is less for?", "chosen": "Paging text.", "rejected": " Paging  text. "}
    datamodule = _datamodule(tmp_path / "drop", [PAIRS[0], same, PAIRS[1]])
    assert len(datamodule.splits["train"]) == 2
    dropped = datamodule.data_report["splits"]["train"]["dropped_empty"]
    assert (dropped["count"], dropped["rows"]) == (1, [2])
    assert "the same 'chosen' and 'rejected' answer" in dropped["what"]
    with pytest.raises(
        LmforgeError, match=r"1 row\(s\) with .*the same 'chosen' and 'rejected'.*row\(s\) 2"
    ):
        _datamodule(tmp_path / "refuse", [PAIRS[0], same, PAIRS[1]], drop_empty=False)


def chat(answer: str, question: str = "What is vim for?") -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def test_a_prompt_beside_whole_conversations_reads_their_last_answers(tmp_path):
    """The layout of ultrafeedback_binarized: a prompt string, chosen and rejected as whole
    conversations that repeat it."""
    rows = [
        {"prompt": "What is vim for?", "chosen": chat("Editing text."), "rejected": chat("Music.")}
    ]
    datamodule = _datamodule(tmp_path / "ok", rows)
    pair = datamodule.splits["train"][0]
    answer = [t for t in pair["chosen_labels"] if t != IGNORE_INDEX]
    assert datamodule.tokenizer.decode(answer) == "editing text. [SEP]"
    rendered = datamodule.tokenizer.decode(pair["chosen_input_ids"])
    assert "role" not in rendered and "what is vim for?" in rendered  # not a Python repr
    other = [{"prompt": "What is mutt for?", "chosen": chat("Mail."), "rejected": chat("Maps.")}]
    with pytest.raises(LmforgeError, match="must ask that prompt in its last user turn"):
        _datamodule(tmp_path / "bad", other)


def test_a_missing_rejected_column_is_named(tmp_path):
    rows = [{"prompt": p["prompt"], "chosen": p["chosen"]} for p in PAIRS]
    with pytest.raises(LmforgeError, match="rejected"):
        _datamodule(tmp_path, rows)


@pytest.fixture(scope="module")
def lora_dpo_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lora_dpo")
    return tiny_run(
        root, "debian_dpo_gpt2", "data.max_train_samples=32", "finetune=lora", "optimizer.lr=1e-2"
    )


def test_a_dpo_run_starts_at_log_2_and_logs_its_metrics(lora_dpo_run):
    metrics = json.loads((lora_dpo_run / "metrics.json").read_text())
    assert metrics["task"] == "preference_tuning"
    before = metrics["before_training"]["test"]
    assert before["test/loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert before["test/reward_margin"] == pytest.approx(0.0, abs=1e-6)
    # The starting model is its own reference: every pair is a tie, half right.
    assert before["test/reward_acc"] == pytest.approx(0.5)
    for key in ("val/pref_acc", "val/reward_acc", "val/reward_margin", "val/logp_chosen"):
        assert key in metrics["validation"]


def test_the_lora_reference_is_the_base_model_with_adapters_disabled(lora_dpo_run, tmp_path):
    checkpoint = lora_dpo_run / "checkpoints" / "last.ckpt"
    saved = read_checkpoint(checkpoint)["lmforge"]["reference_logps"]
    assert set(saved) == {"train", "validation", "test"} and len(saved["test"]) == 16
    module = load_task_module(checkpoint)
    # One model in memory: the LoRA wrapper around the frozen base, no reference copy.
    assert sum(1 for m in module.modules() if type(m).__name__ == "GPT2LMHeadModel") == 1
    assert torch.equal(module.reference["test"], torch.as_tensor(saved["test"]))
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lmforge.tasks.runs import run_dir_of

    config = OmegaConf.load(run_dir_of(checkpoint) / "config.yaml")
    with open_dict(config):
        config.data.cache_dir = str(tmp_path / "cache")
    datamodule = instantiate(config.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("test")
    # Recomputed now, with the trained adapters switched off, the reference comes out the same:
    # the frozen base is the starting model.
    kept = {k: v.clone() for k, v in module.reference.items()}
    module.reference = {}
    module.compute_reference(datamodule)
    torch.testing.assert_close(module.reference["test"], kept["test"], rtol=1e-4, atol=1e-4)
    # Computed once: another call keeps the tensors it has.
    same = module.reference["test"]
    module.compute_reference(datamodule)
    assert module.reference["test"] is same
