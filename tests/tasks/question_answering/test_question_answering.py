"""Extractive question answering: data layouts, answer checks, windows, decoding, metrics, the
no-answer threshold, predict and export."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from lmforge.errors import LmforgeError
from lmforge.export import export
from lmforge.predict import predict
from lmforge.runtime.checkpoints import read_checkpoint
from lmforge.tasks.question_answering.baselines import word_overlap_answer
from lmforge.tasks.question_answering.data import (
    QuestionAnsweringDataModule,
    WindowCollator,
    answer_tokens,
    encode_windows,
)
from lmforge.tasks.question_answering.metrics import (
    best_null_threshold,
    best_over_golds,
    normalize_answer,
    squad_scores,
    token_f1,
)
from lmforge.tasks.question_answering.spans import Span, WindowSpans, best_answer, window_spans
from tests.helpers import QUIET, compose_config, train_run

LANGUAGES = ["Python", "Perl", "Rust", "Haskell"]
THINGS = ["images", "music", "mail", "maps", "fonts"]


def _questions(n: int, seed: int) -> list[dict]:
    """Contexts that end by naming a language; two in three questions ask for it, the third
    asks what the context never says (unanswerable)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        name, language = f"tool{rng.randint(0, 999)}", rng.choice(LANGUAGES)
        filler = " ".join(rng.choice(THINGS) for _ in range(rng.randint(2, 40)))
        context = f"{name} handles {filler}. It is written in {language}."
        if i % 3 == 2:
            question, answers = f"What does {name} print?", {"text": [], "answer_start": []}
        else:
            question = f"What language is {name} written in?"
            answers = {"text": [language], "answer_start": [context.rindex(language)]}
        rows.append(
            {"id": f"q{seed}-{i}", "question": question, "context": context, "answers": answers}
        )
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _nested(rows: list[dict]) -> dict:
    """The same questions in the nested SQuAD layout (one paragraph per context)."""
    paragraphs: dict[str, list] = {}
    for row in rows:
        answers = [
            {"text": t, "answer_start": s}
            for t, s in zip(row["answers"]["text"], row["answers"]["answer_start"], strict=True)
        ]
        qa = {"id": row["id"], "question": row["question"], "answers": answers}
        if not answers:
            qa["is_impossible"] = True
        paragraphs.setdefault(row["context"], []).append(qa)
    return {
        "version": "v2.0",
        "data": [
            {
                "title": "tools",
                "paragraphs": [{"context": c, "qas": q} for c, q in paragraphs.items()],
            }
        ],
    }


@pytest.fixture(scope="module")
def squad(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("squad")
    for split, n, seed in (("train", 60, 1), ("validation", 15, 2), ("test", 15, 3)):
        _write_jsonl(root / f"{split}.jsonl", _questions(n, seed))
    return root


def _datamodule(tiny_model: Path, tmp_path: Path, **options) -> QuestionAnsweringDataModule:
    settings = {
        "tokenizer": str(tiny_model),
        "cache_dir": str(tmp_path / "cache"),
        "version_2_with_negative": True,
        "max_length": 48,
        "doc_stride": 16,
        **options,
    }
    return QuestionAnsweringDataModule(**settings)


def _prepared(datamodule: QuestionAnsweringDataModule) -> QuestionAnsweringDataModule:
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


# ----- metrics ------------------------------------------------------------------------------------
def test_answers_are_normalised_as_squad_does():
    assert normalize_answer("The  Quick, brown FOX!") == "quick brown fox"
    assert normalize_answer("an apple a day") == "apple day"
    # Articles inside words stay.
    assert normalize_answer("theory and anthem") == "theory and anthem"


def test_exact_match_and_f1_against_hand_computed_values():
    # "a library for images" vs "the image library": tokens {library, for, images} vs
    # {image, library}: 1 in common, precision 1/3, recall 1/2, F1 = 0.4.
    assert token_f1("a library for images", "the image library") == pytest.approx(0.4)
    assert best_over_golds("The Python.", ["python", "perl"]) == (1.0, 1.0)
    # The best of several golds counts: F1 2/3 against "Python 3" (precision 1, recall 1/2).
    em, f1 = best_over_golds("Python", ["Rust", "Python 3"])
    assert em == 0.0 and f1 == pytest.approx(2 / 3)
    # Unanswerable: only the empty answer scores.
    assert best_over_golds("", []) == (1.0, 1.0)
    assert best_over_golds("Rust", []) == (0.0, 0.0)
    assert best_over_golds("", ["Rust"]) == (0.0, 0.0)


def test_scores_split_into_answerable_and_unanswerable_questions():
    predictions = {"a": "Python", "b": "the Perl language", "c": "", "d": "Rust"}
    golds = {"a": ["Python"], "b": ["Perl"], "c": [], "d": []}
    scores = squad_scores(predictions, golds, with_negative=True)
    # F1 of b: {perl, language} vs {perl}: precision 1/2, recall 1 -> 2/3.
    assert scores["exact_match"] == pytest.approx(100 * 2 / 4)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1 + 0) / 4)
    assert scores["has_ans_exact_match"] == pytest.approx(50.0)
    assert scores["has_ans_f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert scores["no_ans_exact_match"] == scores["no_ans_f1"] == pytest.approx(50.0)
    assert set(squad_scores(predictions, golds, with_negative=False)) == {"exact_match", "f1"}


def test_the_null_threshold_maximises_the_summed_score():
    # Probabilities of "no answer", F1 when answering, F1 when abstaining.
    probabilities = [0.9, 0.8, 0.6, 0.3]
    answered = [0.0, 1.0, 0.0, 1.0]
    abstained = [1.0, 0.0, 1.0, 0.0]
    # Abstain above 0.8: 1 + 1 + 0 + 1 = 3; above 0.6 would lose question 2; above 0.3 gains
    # question 3 but loses 2: 1 + 0 + 1 + 1 = 3, a tie that keeps the higher threshold.
    threshold, f1 = best_null_threshold(probabilities, answered, abstained)
    assert threshold == 0.8 and f1 == pytest.approx(75.0)
    # Nothing to gain from abstaining: never abstain.
    assert best_null_threshold([0.7, 0.2], [1.0, 1.0], [0.0, 0.0]) == (1.0, 100.0)


# ----- data ---------------------------------------------------------------------------------------
def test_nested_and_flat_files_give_the_same_questions(tiny_model, tmp_path):
    rows = _questions(12, seed=5)
    (tmp_path / "flat").mkdir()
    (tmp_path / "nested").mkdir()
    flat = _write_jsonl(tmp_path / "flat" / "train.jsonl", rows)
    nested = tmp_path / "nested" / "train.json"
    nested.write_text(json.dumps(_nested(rows)))
    read = {}
    for name, path in (("flat", flat), ("nested", nested)):
        datamodule = _datamodule(
            tiny_model,
            tmp_path / name,
            train_file=str(path),
            validation_ratio=0.25,
            test_ratio=0.25,
        )
        raw = datamodule.raw_splits()
        read[name] = sorted(
            (
                r["id"],
                r["question"],
                r["context"],
                tuple(r["answer_text"]),
                tuple(r["answer_start"]),
            )
            for split in raw.values()
            for r in split
        )
    assert read["flat"] == read["nested"] and len(read["flat"]) == 12


def test_answers_given_as_json_text_in_a_csv_column(tiny_model, tmp_path):
    import csv

    rows = _questions(9, seed=6)
    path = tmp_path / "train.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "q", "c", "a"])
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {
                    "id": r["id"],
                    "q": r["question"],
                    "c": r["context"],
                    "a": json.dumps(r["answers"]),
                }
            )
    datamodule = _datamodule(
        tiny_model,
        tmp_path,
        train_file=str(path),
        question_column="q",
        context_column="c",
        answers_column="a",
        validation_ratio=0.2,
        test_ratio=0.2,
    )
    raw = datamodule.raw_splits()
    assert sum(len(d) for d in raw.values()) == 9
    first = next(r for r in raw["train"] if r["answer_text"])
    assert first["context"][first["answer_start"][0] :].startswith(first["answer_text"][0])


def test_misaligned_answers_are_named_dropped_or_fixed(tiny_model, tmp_path):
    rows = _questions(9, seed=7)
    answered = [r for r in rows if r["answers"]["text"]]
    answered[0]["answers"]["answer_start"] = [answered[0]["answers"]["answer_start"][0] - 3]
    answered[1]["answers"]["answer_start"] = [10_000]
    path = _write_jsonl(tmp_path / "train.jsonl", rows)
    options = {"train_file": str(path), "validation_ratio": 0.2, "test_ratio": 0.2}
    with pytest.raises(LmforgeError) as error:
        _datamodule(tiny_model, tmp_path / "error", **options).raw_splits()
    message = str(error.value)
    assert answered[0]["id"] in message and answered[1]["id"] in message
    assert "outside the context" in message and "data.misaligned=drop" in message

    dropped = _prepared(_datamodule(tiny_model, tmp_path / "drop", misaligned="drop", **options))
    report = dropped.data_report["splits"]["train"]["misaligned_answers"]
    kept = {r["id"] for split in dropped.raw_splits().values() for r in split}
    assert report["dropped"] == 2 and answered[0]["id"] not in kept
    assert any("dropped because an answer" in w for w in dropped.data_report["warnings"])
    assert any(n.startswith("train: ") and " windows " in n for n in dropped.data_report["notes"])

    fixed = _datamodule(tiny_model, tmp_path / "fix", misaligned="fix", **options)
    rows_fixed = {r["id"]: r for split in fixed.raw_splits().values() for r in split}
    # The shifted start moves back onto the text; the out-of-range one is moved too (the text
    # occurs once), so nothing is dropped.
    assert len(rows_fixed) == 9
    for row in answered[:2]:
        fixed_row = rows_fixed[row["id"]]
        assert fixed_row["context"][fixed_row["answer_start"][0] :].startswith(
            row["answers"]["text"][0]
        )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"answers": None}, "no answers column 'answers'"),
        ({"context": ""}, "empty question ('question') or context ('context')"),
    ],
)
def test_bad_data_gets_one_clear_message(tiny_model, tmp_path, change, expected):
    rows = _questions(6, seed=8)
    for row in rows:
        for key, value in change.items():
            if value is None:
                row.pop(key)
            else:
                row[key] = value
    path = _write_jsonl(tmp_path / "train.jsonl", rows)
    datamodule = _datamodule(tiny_model, tmp_path, train_file=str(path), drop_empty=False)
    with pytest.raises(
        LmforgeError, match="has no usable rows|" + expected.replace("(", r"\(").replace(")", r"\)")
    ) as error:
        datamodule.raw_splits()
    assert "train" in str(error.value)


def test_unanswerable_questions_need_version_2(tiny_model, tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", _questions(6, seed=9))
    datamodule = _datamodule(
        tiny_model, tmp_path, train_file=str(path), version_2_with_negative=False
    )
    with pytest.raises(LmforgeError, match="version_2_with_negative is false"):
        datamodule.raw_splits()


def test_doc_stride_must_leave_room_in_a_window(tiny_model, tmp_path):
    with pytest.raises(
        LmforgeError, match=r"data.doc_stride=48 must be less than data.max_length=48"
    ):
        _datamodule(tiny_model, tmp_path, train_file="x.jsonl", doc_stride=48)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    long_question = "what " * 40
    with pytest.raises(LmforgeError, match=r"question 0: .* never cut"):
        encode_windows(
            tokenizer, [long_question], ["some context"], 48, 16, where=lambda i: f"question {i}"
        )


def test_an_answer_beyond_the_first_window_is_labelled_in_a_later_one(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    context = " ".join(["maps"] * 60) + " It is written in Rust."
    start = context.rindex("Rust")
    features = encode_windows(tokenizer, ["What language?"], [context], 32, 8, where=str)
    assert len(features["example"]) > 2
    spans = [answer_tokens(offsets, start, start + 4) for offsets in features["offsets"]]
    assert spans[0] is None  # not in the first window: labelled with the null position
    last = spans[-1]
    assert last is not None
    ids = features["input_ids"][-1][last[0] : last[1] + 1]
    assert tokenizer.decode(ids) == "rust"
    assert features["null_position"][0] == 0  # [CLS]


def test_the_data_checks_count_windows_and_answers_no_window_holds(tiny_model, tmp_path):
    long_answer = " ".join(["fonts"] * 40)
    context = f"tool1 handles {long_answer}. It is written in Rust."
    rows = [
        {
            "id": "long",
            "question": "What does tool1 handle?",
            "context": context,
            "answers": {"text": [long_answer], "answer_start": [context.index(long_answer)]},
        },
        *_questions(8, seed=10),
    ]
    path = _write_jsonl(tmp_path / "train.jsonl", rows)
    options = {"validation_file": str(path), "test_file": str(path)}
    datamodule = _prepared(_datamodule(tiny_model, tmp_path, train_file=str(path), **options))
    windows = datamodule.data_report["splits"]["train"]["windows"]
    assert windows["questions"] == 9 and windows["answers_lost"] == 1
    assert windows["windows"] == len(datamodule.splits["train"]) > 9
    assert windows["answerable"] == 1 + sum(1 for r in rows[1:] if r["answers"]["text"])
    assert any("1 of" in w and "no window whole" in w for w in datamodule.data_report["warnings"])


@pytest.mark.parametrize("side", ["right", "left"])
def test_labels_and_offsets_follow_the_padding_side(tiny_model, side):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model, padding_side=side)
    contexts = [
        "It is written in Rust.",
        "tool7 handles maps and fonts and mail. It is written in Perl.",
    ]
    features = encode_windows(
        tokenizer, ["Language?", "Which language is it?"], contexts, 64, 16, where=str
    )
    rows = []
    for w in range(2):
        context = contexts[w]
        answer = "Rust" if w == 0 else "Perl"
        begin = context.index(answer)
        first, last = answer_tokens(features["offsets"][w], begin, begin + 4)
        rows.append(
            {
                "input_ids": features["input_ids"][w],
                "attention_mask": features["attention_mask"][w],
                "token_type_ids": features["token_type_ids"][w],
                "offsets": features["offsets"][w],
                "start_positions": first,
                "end_positions": last,
                "row": w,
            }
        )
    batch = WindowCollator(tokenizer, None)(rows)
    padded = int((batch["attention_mask"][0] == 0).sum())
    assert padded > 0
    assert bool(batch["attention_mask"][0, 0] == (0 if side == "left" else 1))
    for w, answer in enumerate(("rust", "perl")):
        s, e = int(batch["start_positions"][w]), int(batch["end_positions"][w])
        assert tokenizer.decode(batch["input_ids"][w, s : e + 1]) == answer
        begin, end = batch["offsets"][w, s, 0], batch["offsets"][w, e, 1]
        assert contexts[w][begin:end].lower() == answer
    # Decoding the batch with logits peaked at the labels gives the answers back.
    start_logits = torch.full(batch["input_ids"].shape, -5.0)
    end_logits = torch.full(batch["input_ids"].shape, -5.0)
    for w in range(2):
        start_logits[w, batch["start_positions"][w]] = 5.0
        end_logits[w, batch["end_positions"][w]] = 5.0
    from lmforge.tasks.question_answering.spans import null_position

    nulls = torch.tensor(
        [
            null_position(ids, mask, tokenizer.cls_token_id)
            for ids, mask in zip(
                batch["input_ids"].tolist(), batch["attention_mask"].tolist(), strict=True
            )
        ]
    )
    assert int(batch["input_ids"][0, nulls[0]]) == tokenizer.cls_token_id
    found = window_spans(
        start_logits, end_logits, batch["offsets"], batch["attention_mask"], nulls, 5, 30
    )
    for w, answer in enumerate(("Rust", "Perl")):
        assert best_answer([found[w]], contexts[w], False, 0.5)["answer"] == answer


def test_the_best_answer_comes_from_any_window_and_the_null_from_the_surest_one():
    context = "alpha beta gamma delta"
    windows = [
        WindowSpans(null_score=4.0, spans=[Span(0, 5, 1.0, 0.2)]),
        WindowSpans(null_score=-1.0, spans=[Span(6, 10, 3.0, 0.7), Span(11, 16, 2.0, 0.1)]),
    ]
    record = best_answer(windows, context, with_negative=True, null_threshold=0.5, alternatives=2)
    # Best span "beta" (3.0); null = min(4, -1) = -1; P(no answer) = sigmoid(-1 - 3).
    assert record["answer"] == "beta" and (record["start"], record["end"]) == (6, 10)
    assert record["no_answer_probability"] == pytest.approx(1 / (1 + torch.e**4))
    assert [a["answer"] for a in record["alternatives"]] == ["gamma", "alpha"]
    abstained = best_answer(windows, context, with_negative=True, null_threshold=0.01)
    assert abstained["answer"] == "" and abstained["no_answer"]
    # Without unanswerable questions the best span is always given.
    assert (
        best_answer(windows, context, with_negative=False, null_threshold=0.0)["answer"] == "beta"
    )


def test_window_spans_score_every_valid_pair():
    # Start logits favour position 3, end logits position 1 (before it): the best valid pair
    # is not the pair of the top start and the top end.
    start = torch.tensor([[0.0, 0.5, 0.5, 9.0, 0.0]])
    end = torch.tensor([[0.0, 9.0, 0.5, 0.0, 1.0]])
    offsets = torch.tensor([[[-1, -1], [0, 1], [2, 3], [4, 5], [6, 7]]])
    found = window_spans(start, end, offsets, torch.ones(1, 5), torch.tensor([0]), 3, 30)
    best = found[0].spans[0]
    assert (best.start, best.end, best.score) == (4, 7, 10.0)  # start 3 + end 4
    assert found[0].null_score == 0.0


def test_the_word_overlap_baseline_answers_next_to_the_question_words():
    context = "Many tools exist for maps. The viewer is written in the Rust language."
    # "Rust": language at distance 1, written at 3, viewer at 5; "maps" has viewer at 2 and
    # written at 4 only.
    assert word_overlap_answer("What language is the viewer written in?", context, 1) == "Rust"
    # A span never holds a question word nor starts or ends with a common word.
    assert word_overlap_answer("What is Rust?", "Rust", 1) == ""


# ----- training, threshold, predict, export -------------------------------------------------
@pytest.fixture(scope="module")
def qa_run(tiny_model, squad, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("qa_run")
    return train_run(
        root,
        [
            "experiment=debian_qa_minilm",
            f"model.pretrained={tiny_model}",
            f"data.train_file={squad / 'train.jsonl'}",
            "data.max_length=48",
            "data.doc_stride=16",
            "trainer.max_epochs=2",
            "optimizer.lr=3e-3",
            *QUIET,
        ],
    )


def test_a_run_scores_answers_runs_the_baselines_and_writes_its_records(qa_run, squad):
    metrics = json.loads((qa_run / "metrics.json").read_text())
    assert metrics["task"] == "question_answering"
    for key in ("val/loss", "val/exact_match", "val/f1", "val/has_ans_f1", "val/no_ans_f1"):
        assert key in metrics["validation"]
    baselines = metrics["comparison"]["baselines"]
    # Always "no answer": exact match = the share of unanswerable test questions (5 of 15).
    assert baselines["no_answer"]["metrics"]["test/exact_match"] == pytest.approx(100 / 3)
    assert baselines["no_answer"]["metrics"]["test/has_ans_f1"] == 0.0
    assert "words" in baselines["word_overlap"]["details"]
    records = [
        json.loads(line) for line in (qa_run / "test_predictions.jsonl").read_text().splitlines()
    ]
    assert len(records) == 15
    # The test F1 is the mean of the records' per-question F1.
    assert sum(r["score"] for r in records) / 15 == pytest.approx(
        metrics["test"]["test/f1"], abs=0.01
    )


def test_the_tuned_threshold_is_stored_and_reused(qa_run, tmp_path):
    metrics = json.loads((qa_run / "metrics.json").read_text())
    threshold = metrics["evaluation_details"]["null_threshold"]
    assert metrics["evaluation_details"]["null_threshold_tuned_on"]["split"] == "validation"
    checkpoint = qa_run / "checkpoints" / "best.ckpt"
    assert read_checkpoint(checkpoint)["lmforge"]["null_threshold"] == threshold
    # The predictions decide "no answer" by the stored threshold.
    cfg = compose_config(
        [f"ckpt_path={checkpoint}", f"input={_test_file(qa_run)}"], config_name="predict"
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "predict")
    records = [json.loads(line) for line in predict(cfg).read_text().splitlines()]
    assert len(records) == 15
    for record in records:
        assert record["no_answer"] == (record["no_answer_probability"] > threshold)
        assert record["no_answer"] == (record["answer"] == "")
    # The test predictions of the run are the same answers.
    written = [
        json.loads(line) for line in (qa_run / "test_predictions.jsonl").read_text().splitlines()
    ]
    by_question = {r["question"]: r["answer"] for r in written}
    assert all(by_question[r["question"]] == r["answer"] for r in records)


def _test_file(run: Path) -> str:
    config = (run / "config.yaml").read_text()
    train_file = next(
        line.split(": ", 1)[1] for line in config.splitlines() if "train_file:" in line
    )
    return str(Path(train_file.strip()).with_name("test.jsonl"))


def test_typed_inputs_and_bad_typed_inputs(qa_run, tmp_path):
    checkpoint = qa_run / "checkpoints" / "best.ckpt"
    typed = (
        "input=[{question:'What language is tool1 written in?',"
        "context:'tool1 handles maps. It is written in Rust.'}]"
    )
    cfg = compose_config(
        [f"ckpt_path={checkpoint}", typed, "alternatives=2"], config_name="predict"
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "typed")
    (record,) = [json.loads(line) for line in predict(cfg).read_text().splitlines()]
    assert set(record) >= {
        "answer",
        "start",
        "end",
        "score",
        "no_answer_probability",
        "alternatives",
    }
    if record["answer"]:
        context = "tool1 handles maps. It is written in Rust."
        assert context[record["start"] : record["end"]] == record["answer"]
    for bad, expected in (
        ("input='just a question'", "reads text pairs"),
        ("input=[{question:'What?'}]", "no text for 'context'"),
        ("input=[{question:'What?',context:'  '}]", "no text for 'context'"),
    ):
        cfg = compose_config([f"ckpt_path={checkpoint}", bad], config_name="predict")
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "bad")
        with pytest.raises(LmforgeError, match=expected):
            predict(cfg)


def test_the_hf_export_runs_without_lmforge_and_gives_the_same_answers(qa_run, tmp_path):
    checkpoint = qa_run / "checkpoints" / "best.ckpt"
    cfg = compose_config([f"ckpt_path={checkpoint}", "format=hf"], config_name="export")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "hf")
    folder = export(cfg)
    info = json.loads((folder / "lmforge.json").read_text())
    assert info["outputs"] == ["start_logits", "end_logits"]
    metrics = json.loads((qa_run / "metrics.json").read_text())
    assert info["null_threshold"] == metrics["evaluation_details"]["null_threshold"]
    # The model card's code, run in a fresh interpreter that never imports lmforge.
    card = (folder / "README.md").read_text()
    code = (
        card.split("```python\n", 1)[1]
        .split("```", 1)[0]
        .replace("path/to/this/folder", str(folder))
    )
    inputs = [
        (
            "What language is tool5 written in?",
            "tool5 handles maps and fonts. It is written in Perl.",
        ),
        ("What does tool9 print?", "tool9 handles mail. It is written in Rust."),
    ]
    script = "import json, sys\nresults = []\n"
    for question, context in inputs:
        body = code.replace(
            'question = "What does the package provide?"', f"question = {question!r}"
        ).replace(
            'context = "This package provides a library for reading spreadsheets."',
            f"context = {context!r}",
        )
        script += body + "\nresults.append([answer, no_answer_probability])\n"
    script += "assert 'lmforge' not in sys.modules\nprint(json.dumps(results))\n"
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-I", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    plain = json.loads(result.stdout.strip().splitlines()[-1])
    typed = "[" + ",".join(f"{{question:'{q}',context:'{c}'}}" for q, c in inputs) + "]"
    cfg = compose_config([f"model_dir={folder}", f"input={typed}"], config_name="predict")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "predict")
    records = [json.loads(line) for line in predict(cfg).read_text().splitlines()]
    for (answer, probability), record in zip(plain, records, strict=True):
        assert record["no_answer_probability"] == pytest.approx(probability, abs=1e-5)
        assert record["answer"] == ("" if probability > info["null_threshold"] else answer)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_onnx_and_torchscript_exports_match_both_outputs(qa_run, tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    cfg = compose_config(
        [f"ckpt_path={qa_run / 'checkpoints' / 'best.ckpt'}", f"format={fmt}"], config_name="export"
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / fmt)
    folder = export(cfg)
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["passed"] and parity["outputs"] == ["start_logits", "end_logits"]
    for record in parity["inputs"]:
        assert set(record["outputs"]) == {"start_logits", "end_logits"}
    if fmt == "onnx":  # lmforge-predict runs the ONNX folder through ONNX Runtime
        typed = (
            "[{question:'What language is tool5 written in?',context:'tool5 handles maps. It is "
            "written in Perl.'},{question:'What does tool9 print?',context:'tool9 handles mail.'}]"
        )
        records = {}
        for source in (f"model_dir={folder}", f"ckpt_path={qa_run / 'checkpoints' / 'best.ckpt'}"):
            predict_cfg = compose_config([source, f"input={typed}"], config_name="predict")
            with open_dict(predict_cfg):
                predict_cfg.paths.output_dir = str(tmp_path / source.split("=")[0])
            path = predict(predict_cfg)
            records[source[:5]] = [json.loads(line) for line in path.read_text().splitlines()]
        for got, want in zip(records["model"], records["ckpt_"], strict=True):
            assert got["answer"] == want["answer"] and got["start"] == want["start"]
            assert got["score"] == pytest.approx(want["score"], abs=1e-5)
            assert got["no_answer_probability"] == pytest.approx(
                want["no_answer_probability"], abs=1e-5
            )


def test_a_fixed_null_threshold_is_kept_and_a_bad_one_refused(tiny_model):
    from lmforge.tasks.question_answering.module import QuestionAnsweringModule

    module = QuestionAnsweringModule(
        pretrained=str(tiny_model), version_2_with_negative=True, null_threshold=0.3
    )
    assert module.run_settings()["null_threshold"] == 0.3
    with pytest.raises(LmforgeError, match=r"model.null_threshold must be in \[0, 1\]"):
        QuestionAnsweringModule(pretrained=str(tiny_model), null_threshold=1.5)
    with pytest.raises(LmforgeError, match=r"model\.n_best must be a whole number"):
        QuestionAnsweringModule(pretrained=str(tiny_model), n_best=0)
