"""Multiple choice: answers written as index/number/letter/text, a varying number of choices,
head and causal scoring against scores computed by hand, baselines, runs, predict and serve."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from lmforge.errors import LmforgeError
from lmforge.evaluation.continuations import continuation_scores
from lmforge.tasks.multiple_choice.baselines import overlap_credit
from lmforge.tasks.multiple_choice.data import MultipleChoiceCollator, answer_index
from tests.helpers import QUIET, TOPICS, compose_config, make_rows, read_records, train_run

NAMES = list(TOPICS)


def make_questions(n: int, seed: int) -> list[dict]:
    """Questions whose words reveal a topic; 2 to 3 choices (the topic names), the answer
    as the choice's text."""
    rng = random.Random(seed)
    rows = []
    for row in make_rows(n, seed):
        count = rng.choice((2, 3))
        others = [name for name in NAMES if name != row["label"]]
        choices = [row["label"], *rng.sample(others, count - 1)]
        rng.shuffle(choices)
        rows.append({"question": row["text"], "choices": choices, "label": row["label"]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def mc_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mc_data")
    for split, n, seed in (("train", 60, 1), ("validation", 18, 2), ("test", 18, 3)):
        write_jsonl(root / f"{split}.jsonl", make_questions(n, seed))
    return root


@pytest.fixture(scope="module")
def tiny_mc_model(tmp_path_factory, tiny_model) -> Path:
    return tiny_model


# ----- answers ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "keys", "fmt", "expected"),
    [
        (2, None, "auto", 2),
        ("2", None, "auto", 2),
        ("C", None, "auto", 2),
        ("c", None, "letter", 2),
        (3, None, "number", 2),
        ("blue", None, "auto", 1),
        ("blue", None, "text", 1),
        # ARC-style: the choices' own labels come first ("1".."4" there are 1-based).
        ("3", ["1", "2", "3"], "auto", 2),
        ("B", ["A", "B", "C"], "auto", 1),
    ],
)
def test_answers_are_read_as_index_number_letter_or_text(value, keys, fmt, expected):
    assert answer_index(value, ["red", "blue", "green"], keys, fmt) == expected


@pytest.mark.parametrize(
    ("value", "fmt", "why"),
    [
        (3, "auto", "3 is outside 0..2 for 3 choices"),
        (0, "number", "0 is outside 1..3 for 3 choices"),
        ("D", "auto", "not one of the letters A..C"),
        ("purple", "auto", "is not the text of any choice"),
        ("", "auto", "no answer"),
        ("x", "index", "is not a whole number"),
    ],
)
def test_unusable_answers_say_why(value, fmt, why):
    assert why in str(answer_index(value, ["red", "blue", "green"], None, fmt))


def test_a_letter_that_is_also_another_choice_text_is_ambiguous():
    assert "both a letter and the text" in str(answer_index("A", ["B", "A"], None, "auto"))
    assert answer_index("A", ["B", "A"], None, "text") == 1


# ----- data -------------------------------------------------------------------------------------
def _datamodule(tmp_path: Path, train_file: Path, tokenizer: Path, **options):
    from lmforge.tasks.multiple_choice.data import MultipleChoiceDataModule

    module = MultipleChoiceDataModule(
        train_file=str(train_file),
        tokenizer=str(tokenizer),
        cache_dir=str(tmp_path / "cache"),
        max_length=32,
        **options,
    )
    module.prepare_data()
    module.setup("fit")
    return module


def test_csv_choices_split_at_the_separator_and_columns_with_empty_cells(tmp_path, tiny_model):
    from tests.helpers import write_csv

    rows = [
        {"q": f"question {i}", "a": "yes", "b": "no", "c": "maybe" if i % 2 else "", "ans": "B"}
        for i in range(30)
    ]
    data = _datamodule(
        tmp_path,
        write_csv(tmp_path / "cols.csv", rows),
        tiny_model,
        question_column="q",
        choices_column=["a", "b", "c"],
        label_column="ans",
    )
    counts = {len(ids) for split in data.splits.values() for ids in split["input_ids"]}
    assert counts == {2, 3}  # the empty cell is no choice
    assert set(data.splits["train"]["labels"]) == {1}
    assert data.data_report["splits"]["train"]["labels"]["B"] == len(data.splits["train"])

    joined = [{"q": f"question {i}", "opts": "yes | no | maybe", "ans": "maybe"} for i in range(30)]
    data = _datamodule(
        tmp_path,
        write_csv(tmp_path / "joined.csv", joined),
        tiny_model,
        question_column="q",
        choices_column="opts",
        label_column="ans",
    )
    assert set(data.splits["train"]["labels"]) == {2}
    examples = data.examples("test")
    assert next(iter(examples.values()))["choices"] == ["yes", "no", "maybe"]


def test_rows_with_unusable_choices_or_answers_are_refused_naming_them(tmp_path, tiny_model):
    rows = make_questions(30, 0)
    rows[4]["choices"] = ["only one"]
    rows[6]["label"] = "not a choice"
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(LmforgeError) as caught:
        _datamodule(tmp_path, path, tiny_model)
    message = str(caught.value)
    assert "bad.jsonl" in message and "row 5: 1 choice(s)" in message
    assert "row 7: 'not a choice' is not the text of any choice" in message
    assert "\n" not in message


def test_the_collator_pads_choices_and_tokens_and_masks_them():
    features = [
        {
            "input_ids": [[1, 2, 3], [1, 4]],
            "attention_mask": [[1, 1, 1], [1, 1]],
            "choice_start": [2, 1],
            "labels": 1,
            "row": 0,
        },
        {
            "input_ids": [[1, 5], [1, 6], [1, 7, 8, 9]],
            "attention_mask": [[1, 1], [1, 1], [1] * 4],
            "choice_start": [1, 1, 1],
            "labels": 2,
            "row": 1,
        },
    ]
    batch = MultipleChoiceCollator(pad_id=0)(features)
    assert batch["input_ids"].shape == (2, 3, 4)
    assert batch["choice_mask"].tolist() == [[True, True, False], [True, True, True]]
    assert batch["input_ids"][0, 1].tolist() == [1, 4, 0, 0]
    assert batch["attention_mask"][0, 2].sum() == 0
    assert batch["labels"].tolist() == [1, 2] and batch["row"].tolist() == [0, 1]


# ----- scoring ----------------------------------------------------------------------------------
def test_head_scores_are_the_model_logits_of_each_question_alone(tmp_path, tiny_model, mc_data):
    from lmforge.tasks.multiple_choice.module import MultipleChoiceModule

    data = _datamodule(tmp_path, mc_data / "train.jsonl", tiny_model)
    module = MultipleChoiceModule(pretrained=str(tiny_model)).eval()
    features = [data.splits["train"][i] for i in range(6)]
    batch = data.build_collator()(features)
    with torch.no_grad():
        scores = module.choice_scores(batch)
        for row, feature in enumerate(features):
            count = len(feature["input_ids"])
            width = max(len(ids) for ids in feature["input_ids"])
            own = MultipleChoiceCollator(data.tokenizer.pad_token_id)([feature])
            logits = module.model(
                **{
                    k: own[k][:, :, :width]
                    for k in ("input_ids", "attention_mask", "token_type_ids")
                }
            ).logits[0]
            torch.testing.assert_close(scores[row, :count], logits, atol=1e-5, rtol=1e-4)
            assert torch.isinf(scores[row, count:]).all()


def test_causal_scores_are_the_continuations_log_probs_by_hand(tiny_gpt2):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
    prompts = [[101, 2023, 2003], [101, 7592]]
    continuations = [[[2204], [3899, 2015]], [[2204, 2003, 1037], [3899], [2000, 2000]]]

    def by_hand(prompt: list[int], continuation: list[int]) -> float:
        ids = torch.tensor([prompt + continuation])
        logps = model(input_ids=ids).logits[0].log_softmax(-1)
        return sum(float(logps[len(prompt) - 1 + i, t]) for i, t in enumerate(continuation))

    with torch.no_grad():
        total = continuation_scores(model, prompts, continuations, pad_id=0, normalize="sum")
        mean = continuation_scores(model, prompts, continuations, pad_id=0, normalize="mean")
        for p, (prompt, own) in enumerate(zip(prompts, continuations, strict=True)):
            for c, continuation in enumerate(own):
                expected = by_hand(prompt, continuation)
                assert float(total[p, c]) == pytest.approx(expected, abs=1e-4)
                assert float(mean[p, c]) == pytest.approx(expected / len(continuation), abs=1e-4)
    assert total.shape == (2, 3) and torch.isinf(total[0, 2])


def test_word_overlap_credit_by_hand():
    question = "a game of chess against the computer"
    assert overlap_credit(question, ["chess game", "video player", "mail reader"], 0) == 1.0
    # "game" and "computer" tie two choices: half the credit.
    assert overlap_credit(question, ["a game", "computer algebra", "mail"], 1) == 0.5
    assert overlap_credit(question, ["a game", "computer algebra", "mail"], 2) == 0.0


# ----- runs -------------------------------------------------------------------------------------
def _run(root: Path, mc_data: Path, model: Path, *overrides: str) -> Path:
    return train_run(
        root,
        [
            "model=multiple_choice",
            "data=multiple_choice",
            f"model.pretrained={model}",
            f"data.train_file={mc_data / 'train.jsonl'}",
            "data.max_length=32",
            "data.batch_size=8",
            "trainer.max_epochs=2",
            "optimizer.lr=3e-3",
            "compare.baselines=[random_choice,word_overlap]",
            *QUIET,
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def head_run(tmp_path_factory, mc_data, tiny_model) -> Path:
    return _run(tmp_path_factory.mktemp("mc_run"), mc_data, tiny_model)


def test_a_head_run_records_accuracy_baselines_and_test_records(head_run, mc_data):
    metrics = json.loads((head_run / "metrics.json").read_text())
    assert metrics["task"] == "multiple_choice"
    assert set(metrics["test"]) == {"test/loss", "test/acc"}
    test_rows = [json.loads(line) for line in (mc_data / "test.jsonl").read_text().splitlines()]
    chance = sum(1 / len(r["choices"]) for r in test_rows) / len(test_rows)
    rows = metrics["comparison"]["rows"]["test/acc"]
    assert rows["random_choice"] == pytest.approx(chance)
    records = read_records(head_run / "test_predictions.jsonl")
    assert len(records) == len(test_rows)
    right = sum(r["score"] for r in records) / len(records)
    assert metrics["test"]["test/acc"] == pytest.approx(right)
    assert all(r["predicted"] in r["choices"] for r in records)


def test_a_checkpoint_predicts_typed_and_file_inputs_and_refuses_bad_ones(head_run, tmp_path):
    from lmforge.predict import predict
    from tests.helpers import write_csv

    checkpoint = head_run / "checkpoints" / "best.ckpt"

    def predicted(value: str, name: str) -> list[dict]:
        cfg = compose_config([f"ckpt_path={checkpoint}", f"input={value}"], config_name="predict")
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / name)
        return read_records(predict(cfg))

    typed = predicted("{question:'bake the bread',choices:[cooking,music,sports,cooking2]}", "t")
    assert typed[0]["answer"] in ("cooking", "music", "sports", "cooking2")
    assert len(typed[0]["probabilities"]) == 4
    assert sum(typed[0]["probabilities"]) == pytest.approx(1.0, abs=1e-4)
    file = write_csv(
        tmp_path / "in.csv",
        [{"question": "bake the bread", "choices": "cooking|music|sports|cooking2"}],
    )
    assert predicted(str(file), "f")[0]["probabilities"] == typed[0]["probabilities"]
    with pytest.raises(LmforgeError, match="at least two non-empty choices"):
        predicted("{question:'bake',choices:[cooking]}", "bad")


def test_the_server_takes_choices_as_a_list_and_refuses_an_empty_one(head_run):
    from lmforge.serve.checks import Limits, RequestRefused, read_inputs
    from tests.tasks.test_contract import served_records

    checkpoint = head_run / "checkpoints" / "best.ckpt"
    example = {"question": "bake the bread", "choices": ["cooking", "music"]}
    [record] = served_records(checkpoint, (example,))
    assert record["answer"] in ("cooking", "music") and len(record["probabilities"]) == 2
    with pytest.raises(RequestRefused, match=r"inputs\.choices is an empty list"):
        read_inputs({"inputs": {"question": "q", "choices": []}}, Limits(8, 1000))


def test_causal_zero_shot_scores_choices_with_the_untouched_lm(tmp_path, mc_data, tiny_gpt2):
    run = _run(
        tmp_path,
        mc_data,
        tiny_gpt2,
        "model.scorer=causal",
        "train=false",
        "compare.baselines=[random_choice]",
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 0
    assert metrics["before_training"]["start"]["newly_initialised"] == []
    assert metrics["test"]["test/acc"] == pytest.approx(
        metrics["before_training"]["test"]["test/acc"]
    )


def test_bad_patterns_are_refused():
    from lmforge.tasks.multiple_choice.module import check_pattern

    with pytest.raises(LmforgeError, match=r"\{question\} exactly once"):
        check_pattern("Answer:")
    with pytest.raises(LmforgeError, match=r"found \{context\}, \{question\}"):
        check_pattern("{context} {question}")
