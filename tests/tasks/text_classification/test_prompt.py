"""Prompt-based classification: patterns and verbalizers, masked and causal scoring against
scores computed by hand, calibration, zero-shot and fine-tuned runs, predict and export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

from lmforge.config.resources import embedded_model_path
from lmforge.errors import LmforgeError
from lmforge.tasks.text_classification.prompt import (
    PromptScorer,
    calibrated,
    check_pattern,
    verbalizer_words,
)
from tests.helpers import QUIET, compose_config, read_records, train_run

WORDS = ["cooking", "music", "sports"]


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT with its masked-LM head and the embedded tokenizer."""
    root = tmp_path_factory.mktemp("tiny_mlm")
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path())
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertForMaskedLM(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def _scorer(folder: Path, scorer: str, pattern: str, **options) -> PromptScorer:
    options = {"chat_template": False, "normalize": "mean", "max_length": 64, **options}
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return PromptScorer(tokenizer, pattern, options.pop("words", WORDS), scorer, **options)


def test_masked_scores_are_the_word_logits_at_the_mask(tiny_mlm):
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(tiny_mlm).eval()
    scorer = _scorer(tiny_mlm, "masked", "{text} It is about [MASK].")
    tokenizer = scorer.tokenizer
    text = "Bake the bread in a hot oven"
    # The pattern put around the text's tokens is the tokenization of the filled pattern.
    filled = tokenizer(f"{text} It is about {tokenizer.mask_token}.")["input_ids"]
    assert scorer.sequences([scorer.text_tokens(text)]) == [filled]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([filled])).logits[0]
        scores = scorer.scores(model, [scorer.text_tokens(text)])
    at_mask = logits[filled.index(tokenizer.mask_token_id)]
    expected = at_mask[tokenizer.convert_tokens_to_ids(WORDS)]
    torch.testing.assert_close(scores[0], expected)


def test_causal_scores_are_mean_or_summed_continuation_log_probs(tiny_gpt2):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
    # "hamradio" is three WordPiece tokens (ham ##rad ##io): length normalisation matters.
    words = ["cooking", "hamradio"]
    mean = _scorer(tiny_gpt2, "causal", "{text} topic:", words=words)
    total = _scorer(tiny_gpt2, "causal", "{text} topic:", words=words, normalize="sum")
    tokenizer = mean.tokenizer
    assert [len(ids) for ids in mean.label_ids] == [1, 3]
    text = "guitar chords"
    with torch.no_grad():
        got_mean = mean.scores(model, [mean.text_tokens(text)])[0]
        got_sum = total.scores(model, [total.text_tokens(text)])[0]
        for index, word in enumerate(words):
            context = [
                tokenizer.cls_token_id,
                *tokenizer(f"{text} topic:", add_special_tokens=False)["input_ids"],
            ]
            answer = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
            logps = model(input_ids=torch.tensor([context + answer])).logits[0].log_softmax(-1)
            by_hand = sum(
                float(logps[len(context) - 1 + i, token]) for i, token in enumerate(answer)
            )
            assert float(got_sum[index]) == pytest.approx(by_hand, abs=1e-4)
            assert float(got_mean[index]) == pytest.approx(by_hand / len(answer), abs=1e-4)


def test_causal_scores_of_a_padded_batch_equal_those_of_each_text_alone(tmp_path, tiny_gpt2):
    """Texts of different lengths share a batch (left-padded, one pass over the texts and the
    cache repeated per label), for GPT-2's learned positions and a Llama's rotary ones."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=64,
        )
    )
    models = [AutoModelForCausalLM.from_pretrained(tiny_gpt2), llama]
    scorer = _scorer(tiny_gpt2, "causal", "{text} topic:", words=["cooking", "hamradio", "vcs"])
    texts = [scorer.text_tokens(t) for t in ("guitar", "bake bread in the oven today")]
    for model in models:
        model.eval()
        with torch.no_grad():
            together = scorer.scores(model, texts)
            alone = torch.cat([scorer.scores(model, [t]) for t in texts])
        torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)


def test_a_long_text_is_cut_and_the_pattern_kept(tiny_mlm):
    scorer = _scorer(tiny_mlm, "masked", "{text} It is about [MASK].", max_length=16)
    [sequence] = scorer.sequences([list(range(1000, 1100))])
    assert len(sequence) == 16 and scorer.tokenizer.mask_token_id in sequence


def test_calibration_divides_by_the_content_free_probabilities():
    scores = torch.tensor([[0.0, math.log(3.0)]])  # probabilities 1/4, 3/4
    prior = torch.tensor([0.2, 0.8])
    # 0.25 / 0.2 = 1.25 against 0.75 / 0.8 = 0.9375: calibration flips the answer.
    out = calibrated(scores, prior).softmax(-1)[0]
    assert out.tolist() == pytest.approx([1.25 / 2.1875, 0.9375 / 2.1875])
    assert calibrated(scores, None).exp()[0].tolist() == pytest.approx([0.25, 0.75])


@pytest.mark.parametrize(
    ("pattern", "scorer", "expected"),
    [
        ("It is about [MASK].", "masked", r"\{text\} exactly once"),
        ("{text} {title} [MASK]", "masked", r"no other \(found \{text\}, \{title\}\)"),
        ("{text} [MASK] or [MASK]", "masked", r"exactly one \[MASK\].*it has 2"),
        ("{text} It is [MASK].", "causal", r"scorer=causal continues the pattern.*no \[MASK\]"),
    ],
)
def test_bad_patterns_are_refused(pattern, scorer, expected):
    with pytest.raises(LmforgeError, match=expected):
        check_pattern(pattern, scorer)


def test_bad_verbalizers_are_refused(tiny_mlm):
    labels = ["neg", "pos"]
    assert verbalizer_words({"pos": "great"}, labels) == ["neg", "great"]
    with pytest.raises(LmforgeError, match="'neutral', which the data's labels"):
        verbalizer_words({"neutral": "okay"}, labels)
    with pytest.raises(LmforgeError, match="'good' to more than one label"):
        verbalizer_words({"neg": "good", "pos": "good"}, labels)
    with pytest.raises(
        LmforgeError, match=r"'hamradio' -> \['ham', '##rad', '##io'\].*scorer=causal"
    ):
        _scorer(tiny_mlm, "masked", "{text} [MASK]", words=["music", "hamradio"])
    with pytest.raises(LmforgeError, match="leaving no room for the text"):
        _scorer(tiny_mlm, "masked", "{text} " + "word " * 20 + "[MASK]", max_length=16)


# ----- runs -----------------------------------------------------------------------------------
def _run(root: Path, tiny_data: Path, model: Path, *overrides: str) -> Path:
    return train_run(
        root,
        [
            "model=prompt_classification",
            f"model.pretrained={model}",
            f"data.train_file={tiny_data / 'train.csv'}",
            "data.max_length=48",
            "data.batch_size=8",
            "trainer.max_epochs=1",
            "optimizer.lr=1e-3",
            "compare.baselines=[majority]",
            *QUIET,
            *overrides,
        ],
    )


def test_zero_shot_evaluates_the_untouched_model(tmp_path, tiny_data, tiny_gpt2):
    run = _run(tmp_path, tiny_data, tiny_gpt2, "train=false", "model.calibrate=true")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "prompt_classification"
    assert metrics["epochs_completed"] == 0
    before = metrics["before_training"]["test"]["test/acc"]
    assert metrics["test"]["test/acc"] == pytest.approx(before)
    assert metrics["comparison"]["rows"]["test/acc"]["majority"] == pytest.approx(1 / 3, abs=0.05)
    assert metrics["parameters"]["trainable"] == metrics["parameters"]["total"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data, tiny_mlm) -> Path:
    root = tmp_path_factory.mktemp("prompt_run")
    return _run(
        root,
        tiny_data,
        tiny_mlm,
        "model.scorer=masked",
        "model.pattern='{text} It is about [MASK].'",
        "data.few_shot_k=8",
        "trainer.max_epochs=3",
    )


def test_a_few_shot_run_trains_through_the_pattern_and_predicts_alike(trained, tmp_path):
    from lmforge.export import export
    from lmforge.predict import predict

    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["data"]["train"] == 24  # 8 per class
    # No new weights: the start is the pretrained masked LM, head included.
    assert metrics["before_training"]["start"]["newly_initialised"] == []
    assert metrics["global_step"] == 9  # 3 epochs of 3 batches
    recorded = read_records(trained / "test_predictions.jsonl")
    texts = [r["text"] for r in recorded]

    def predicted(source: str, name: str) -> list[str]:
        cfg = compose_config([source, f"input={texts}"], config_name="predict")
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / name)
        return [r["label"] for r in read_records(predict(cfg))]

    from_checkpoint = predicted(f"ckpt_path={trained / 'checkpoints' / 'best.ckpt'}", "ckpt")
    assert from_checkpoint == [r["predicted"] for r in recorded]
    cfg = compose_config(
        [f"ckpt_path={trained / 'checkpoints' / 'best.ckpt'}"], config_name="export"
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "export")
    folder = export(cfg)
    info = json.loads((folder / "lmforge.json").read_text())
    assert info["task"] == "prompt_classification" and info["auto_class"] == "AutoModelForMaskedLM"
    assert info["pattern"] == "{text} It is about [MASK]." and info["scorer"] == "masked"
    assert predicted(f"model_dir={folder}", "export") == from_checkpoint


def test_sentence_pairs_are_refused(tmp_path, tiny_gpt2):
    from tests.helpers import make_rows, write_csv

    rows = [{**r, "other": r["text"]} for r in make_rows(30, 0)]
    path = write_csv(tmp_path / "pairs.csv", rows)
    with pytest.raises(LmforgeError, match=r"text_pair_column='other'.*not supported"):
        _run(
            tmp_path,
            path.parent,
            tiny_gpt2,
            f"data.train_file={path}",
            "data.text_pair_column=other",
            "train=false",
        )


def test_lora_trains_adapters_through_the_pattern(tmp_path, tiny_data, tiny_gpt2):
    from lmforge.predict import predict

    run = _run(tmp_path, tiny_data, tiny_gpt2, "finetune=lora", "evaluate_before=false")
    metrics = json.loads((run / "metrics.json").read_text())
    # Rank 8 on each of the 2 layers' c_attn (32 in, 96 out): 2 * (32 * 8 + 8 * 96) weights.
    assert metrics["parameters"]["trainable"] == 2 * (32 * 8 + 8 * 96)
    assert metrics["finetune"]["name"] == "lora"
    recorded = read_records(run / "test_predictions.jsonl")
    cfg = compose_config(
        [
            f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
            f"input={[r['text'] for r in recorded]}",
        ],
        config_name="predict",
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "predict")
    assert [r["label"] for r in read_records(predict(cfg))] == [r["predicted"] for r in recorded]
