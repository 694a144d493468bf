"""Golden values: a seeded tiny run per task family gives exactly the pinned numbers.

Written before the task-family redesign and kept through it: moving code must not change what a
run computes. The numbers are this suite's own tiny runs (random tiny models, generated data,
plain float32 on the CPU); a change in data handling, the model, the loss, the metrics or the
training loop moves them. Tolerances allow for CPUs that round float32 sums differently.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch.testing import assert_close

from lmforge.train import train
from tests.helpers import TINY_GPT2

COMMON = ("evaluate_before=true", "seed=11")


def family_overrides(family: str, tiny_model: Path, tiny_ner: Path, tiny_text: Path) -> list[str]:
    if family == "text_classification":
        return ["compare.baselines=[majority]", "trainer.max_epochs=5", "optimizer.lr=5e-3"]
    if family == "token_classification":
        return [
            "experiment=debian_ner_minilm",
            f"data.train_file={tiny_ner / 'train.conll'}",
            "data.max_length=32",
            "trainer.max_epochs=4",
            "optimizer.lr=5e-3",
            "compare.baselines=[]",
        ]
    text = [f"data.train_file={tiny_text / 'train.txt'}", "data.max_train_samples=null"]
    if family == "causal_lm":
        return [
            "experiment=debian_lm_gpt2_scratch",
            *text,
            *TINY_GPT2,
            "data.block_size=16",
            "optimizer.lr=1e-2",
            "trainer.max_epochs=2",
            "model.generate_prompts=[]",
        ]
    return [
        "experiment=debian_mlm_minilm",
        f"model.pretrained={tiny_model}",
        *text,
        "data.block_size=32",
        "optimizer.lr=3e-3",
        "trainer.max_epochs=2",
    ]


GOLDEN: dict[str, dict[str, dict[str, float]]] = {
    "text_classification": {
        "before": {
            "test/loss": 1.098644,
            "test/acc": 0.3333333,
            "test/f1_macro": 0.1666667,
            "test/f1_cooking": 0.0,
            "test/f1_music": 0.5,
            "test/f1_sports": 0.0,
        },
        "test": {
            "test/loss": 0.9441423,
            "test/acc": 0.6666667,
            "test/f1_macro": 0.5555556,
            "test/f1_cooking": 0.0,
            "test/f1_music": 0.6666667,
            "test/f1_sports": 1.0,
        },
        "validation": {
            "val/loss": 0.9459275,
            "val/acc": 0.6666667,
            "val/f1_macro": 0.5555556,
            "val/f1_cooking": 0.0,
            "val/f1_music": 0.6666667,
            "val/f1_sports": 1.0,
        },
    },
    "token_classification": {
        "before": {
            "test/loss": 1.61896,
            "test/precision": 0.0,
            "test/recall": 0.0,
            "test/f1": 0.0,
            "test/f1_LANG": 0.0,
            "test/f1_OS": 0.0,
            "test/token_acc": 0.06293707,
        },
        "test": {
            "test/loss": 0.3468831,
            "test/precision": 1.0,
            "test/recall": 1.0,
            "test/f1": 1.0,
            "test/f1_LANG": 1.0,
            "test/f1_OS": 1.0,
            "test/token_acc": 1.0,
        },
        "validation": {
            "val/loss": 0.3462232,
            "val/precision": 1.0,
            "val/recall": 1.0,
            "val/f1": 1.0,
            "val/f1_LANG": 1.0,
            "val/f1_OS": 1.0,
            "val/token_acc": 1.0,
        },
    },
    "causal_lm": {
        "before": {
            "test/loss": 10.30515,
            "test/perplexity": 29886.11,
        },
        "test": {
            "test/loss": 7.220399,
            "test/perplexity": 1367.034,
        },
        "validation": {
            "val/loss": 7.204268,
            "val/perplexity": 1345.16,
        },
    },
    "masked_lm": {
        "before": {
            "test/loss": 10.33281,
            "test/perplexity": 30724.31,
            "test/masked_acc": 0.0,
        },
        "test": {
            "test/loss": 9.83437,
            "test/perplexity": 18664.33,
            "test/masked_acc": 0.0625,
        },
        "validation": {
            "val/loss": 9.811944,
            "val/perplexity": 18250.43,
            "val/masked_acc": 0.02857143,
        },
    },
}


@pytest.mark.parametrize(
    "family", ["text_classification", "token_classification", "causal_lm", "masked_lm"]
)
def test_a_seeded_tiny_run_gives_the_pinned_numbers(
    family, make_cfg, tmp_path, tiny_model, tiny_ner, tiny_text
):
    train(make_cfg(*family_overrides(family, tiny_model, tiny_ner, tiny_text), *COMMON))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    found = {
        "before": metrics["before_training"]["test"],
        "test": metrics["test"],
        "validation": metrics["validation"],
    }
    expected = GOLDEN[family]
    assert found.keys() == expected.keys()
    for part, values in expected.items():
        assert found[part].keys() == values.keys(), part
        assert_close(found[part], values, rtol=1e-3, atol=1e-4, msg=lambda m, p=part: f"{p}: {m}")
