"""Generated answers of instruction and chat runs scored by exact match and token F1: the
answer each example scores, the prompt it is generated from (what predict renders), and the
figures of a run against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from lmforge.config.resources import embedded_model_path, shipped_data
from lmforge.config.validation import check_config
from lmforge.errors import LmforgeError
from lmforge.evaluation.answers import answer_scores
from lmforge.tasks.language_modeling import predict as causal_predict
from lmforge.tasks.language_modeling.chat import encode_spans, render
from lmforge.tasks.language_modeling.instructions import InstructionDataModule
from tests.helpers import compose_config
from tests.tasks.language_modeling.runs import one_file_datamodule, tiny_run, write_jsonl

SYSTEM = {"role": "system", "content": "Answer briefly."}


def _chat(question: str, answer: str, *more: dict) -> dict:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
            *more,
        ]
    }


CHATS = [
    {"messages": [SYSTEM, *_chat("What is vim for?", "Editing text.")["messages"]]},
    _chat("What is mutt for?", "Reading mail."),
    _chat(
        "What is nano for?",
        "Editing text in a terminal.",
        {"role": "user", "content": "Tell me more."},
        {"role": "assistant", "content": "A small editor."},
    ),
    _chat("What is tar for?", "Archiving files."),
]


def _datamodule(tmp_path: Path, rows: list[dict], **options) -> InstructionDataModule:
    options = {"format": "messages", **options}
    return one_file_datamodule(InstructionDataModule, tmp_path, rows, **options)


def _answer(datamodule: InstructionDataModule, row: int) -> tuple[list[int], str]:
    """The tokens before a validation example's scored answer, and the answer decoded."""
    example = datamodule.splits["validation"][row]
    start, end = example["answer_span"]
    tokenizer = datamodule.tokenizer
    return example["input_ids"][:start], tokenizer.decode(example["input_ids"][start:end])


def test_answer_scores_against_hand_computed_values():
    scores = answer_scores(
        ["Editing text.", "a mail reader", "The editor", ""],
        ["editing text", "reading mail", "editor", "tar"],
    )
    # EM: 1, 0, 1 ("the" is dropped), 0. F1: 1, 0.5 ({mail, reader} vs {reading, mail}), 1, 0.
    assert scores == pytest.approx({"exact_match": 50.0, "f1": 62.5})
    assert answer_scores([], []) == {"exact_match": 0.0, "f1": 0.0}


def test_the_scored_answer_is_the_first_trained_one(tmp_path):
    assistant = _datamodule(tmp_path / "assistant", CHATS)
    assert _answer(assistant, 0)[1] == "editing text. [SEP]"
    assert _answer(assistant, 2)[1] == "editing text in a terminal. [SEP]"
    last = _datamodule(tmp_path / "last", CHATS, train_on="last")
    assert _answer(last, 2)[1] == "a small editor. [SEP]"
    # With every token trained, the first assistant turn is scored.
    everything = _datamodule(tmp_path / "all", CHATS, train_on="all")
    assert _answer(everything, 2)[1] == "editing text in a terminal. [SEP]"
    pairs = _datamodule(
        tmp_path / "pairs",
        [{"prompt": "Q: what is vim for?\nA:", "completion": " Editing text."}],
        format="prompt_completion",
    )
    assert _answer(pairs, 0)[1] == "editing text. [SEP]"
    off = _datamodule(tmp_path / "off", CHATS, score_answers=False)
    assert "answer_span" not in off.splits["validation"].column_names


def test_the_answer_is_generated_from_the_prompt_predict_renders(tmp_path):
    datamodule = _datamodule(tmp_path, CHATS)
    tokenizer = datamodule.tokenizer
    template = Path(shipped_data("chat_templates/plain.jinja")).read_text()
    for row in (0, 1):
        messages = CHATS[row]["messages"][:-1]
        rendered = render(tokenizer, messages, template, add_generation_prompt=True)
        assert _answer(datamodule, row)[0] == encode_spans(tokenizer, rendered, []).input_ids


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    """A tiny chat run whose 'model' answers every prompt with "Editing text." and the EOS."""
    root = tmp_path_factory.mktemp("scored_run")
    path = write_jsonl(root / "chats.jsonl", CHATS)
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path())
    answer = tokenizer("Editing text.", add_special_tokens=False)["input_ids"]
    calls: list[dict] = []

    def answers_editing_text(model, prompts, pad_token_id, **generate):
        calls.append({"prompts": prompts, **generate})
        return [[*answer, tokenizer.sep_token_id] for _ in prompts]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(causal_predict, "continue_prompts", answers_editing_text)
        run = tiny_run(
            root,
            "debian_chat_gpt2",
            f"data.train_file={path}",
            f"data.validation_file={path}",
            f"data.test_file={path}",
            "data.eval_batch_size=3",
            "model.max_generate_samples=2",
        )
    return run, calls


def test_a_run_scores_its_generated_answers(scored_run):
    run, calls = scored_run
    metrics = json.loads((run / "metrics.json").read_text())
    # Test scores every example: vim matches; nano's F1 is 2/3 ("editing text" of "editing
    # text in terminal"); mutt and tar share no word with "editing text".
    assert metrics["test"]["test/answer_exact_match"] == pytest.approx(25.0)
    assert metrics["test"]["test/answer_f1"] == pytest.approx(100 * (1 + 2 / 3) / 4)
    # ROUGE as summaries are scored (Porter stems; articles count): nano's "edit text" against
    # "edit text in a termin" has unigram P 1, R 2/5 (F 4/7) and bigram P 1, R 1/4 (F 0.4).
    assert metrics["test"]["test/answer_rouge1"] == pytest.approx(100 * (1 + 4 / 7) / 4)
    assert metrics["test"]["test/answer_rouge2"] == pytest.approx(100 * (1 + 0.4) / 4)
    assert metrics["test"]["test/answer_rougeL"] == pytest.approx(100 * (1 + 4 / 7) / 4)
    # Validation scores the first max_generate_samples=2 examples of the file (vim and mutt),
    # though its batches come longest first.
    assert metrics["validation"]["val/answer_exact_match"] == pytest.approx(50.0)
    assert metrics["validation"]["val/answer_f1"] == pytest.approx(50.0)
    records = [
        json.loads(line) for line in (run / "test_predictions.jsonl").read_text().splitlines()
    ]
    assert len(records) == 4
    by_reference = {r["reference"]: r for r in records}
    assert by_reference["editing text."]["exact_match"] == 1.0
    assert by_reference["editing text in a terminal."]["score"] == pytest.approx(66.67)
    assert by_reference["editing text in a terminal."]["rougeL"] == pytest.approx(57.14)
    assert by_reference["reading mail."]["generated"] == "editing text."
    assert (
        by_reference["reading mail."]["prompt"]
        == "# # # user : what is mutt for? # # # assistant :"
    )
    # Generation stops at the EOS that ends answers in the data ([SEP] for this tokenizer),
    # greedily, with room for an answer as long as the model's positions allow.
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path())
    assert all(tokenizer.sep_token_id in c["eos_token_id"] for c in calls)
    assert all(c["do_sample"] is False and 0 < c["max_new_tokens"] <= 64 for c in calls)


@pytest.mark.parametrize(
    "override",
    ["model.max_generate_samples=0", "model.answer_max_new_tokens=0", "data.score_answers=maybe"],
)
def test_bad_answer_settings_are_refused_by_name(override):
    with pytest.raises(LmforgeError, match=override.split("=")[0]):
        check_config(compose_config(["experiment=debian_chat_gpt2", override]))
