"""Data for extractive question answering: a question, a context and the answer spans in it.

Two layouts: the original nested SQuAD JSON (`data` -> `paragraphs` -> `qas`), and flat rows
(json/jsonl/csv/tsv/parquet or a hub data set) with a question, a context and an `answers`
column of `{"text": [...], "answer_start": [...]}` as in the hub's squad (a JSON string of one
in csv cells). Every answer is checked against its context. Long contexts become overlapping
windows of `max_length` tokens (`doc_stride` shared); each window keeps its character offsets
and is labelled with the answer's tokens, or with the null position when the answer is not
whole in it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from lmforge.data.checks import SHOWN
from lmforge.data.datamodule import TextDataModule
from lmforge.data.sources import check_file, load_file, require_columns
from lmforge.errors import LmforgeError
from lmforge.tasks.question_answering.spans import NOT_CONTEXT, null_position

MISALIGNED = ("error", "drop", "fix")
# The inputs a model reads; the other feature columns are for decoding.
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def read_nested_squad(path: str, key: str) -> datasets.Dataset | None:
    """A nested SQuAD file flattened to one row per question (`id`, `title`, `context`,
    `question`, `answers`), or None when the file is not in that layout. Errors name the
    article, paragraph and question that lack a field."""
    file = check_file(path, key)
    if file.suffix.lower() != ".json":
        return None
    try:
        with open(file, encoding="utf-8") as f:
            document = json.load(f)
    except ValueError:
        return None  # JSON lines, or not JSON at all: the flat reader says what is wrong
    if not (isinstance(document, dict) and isinstance(document.get("data"), list)):
        return None
    rows: dict[str, list[Any]] = {k: [] for k in ("id", "title", "context", "question", "answers")}
    for a, article in enumerate(document["data"]):
        where_article = f"{key}={path!r}: data[{a}]"
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise LmforgeError(
                f"{where_article} has no 'paragraphs' list; a nested SQuAD file holds articles "
                "of {'title', 'paragraphs': [{'context', 'qas': [...]}]}."
            )
        for p, paragraph in enumerate(paragraphs):
            where = f"{where_article}.paragraphs[{p}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("context"), str):
                raise LmforgeError(f"{where} has no 'context' text.")
            if not isinstance(paragraph.get("qas"), list):
                raise LmforgeError(f"{where} has no 'qas' list of questions.")
            for q, qa in enumerate(paragraph["qas"]):
                here = f"{where}.qas[{q}]"
                if not isinstance(qa, dict) or not isinstance(qa.get("question"), str):
                    raise LmforgeError(f"{here} has no 'question' text.")
                answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                if not isinstance(answers, list) or not all(
                    isinstance(x, dict) and "text" in x and "answer_start" in x for x in answers
                ):
                    raise LmforgeError(
                        f"{here}: 'answers' must be a list of {{'text', 'answer_start'}} "
                        f"objects; found {str(answers)[:80]!r}."
                    )
                rows["id"].append(str(qa.get("id", f"{a}-{p}-{q}")))
                rows["title"].append(str(article.get("title", "")))
                rows["context"].append(paragraph["context"])
                rows["question"].append(qa["question"])
                rows["answers"].append(
                    {
                        "text": [str(x["text"]) for x in answers],
                        "answer_start": [x["answer_start"] for x in answers],
                    }
                )
    if not rows["id"]:
        raise LmforgeError(f"{key}={path!r}: the nested SQuAD file holds no questions.")
    return datasets.Dataset.from_dict(rows)


def parse_answers(value: Any, where: str, column: str) -> tuple[list[str], list[Any]]:
    """The answer texts and starts of one cell: `{"text": [...], "answer_start": [...]}`, one
    answer as `{"text": str, "answer_start": int}`, a JSON string of either, or a list of
    answer objects."""
    if isinstance(value, str):
        if not value.strip():
            return [], []
        try:
            value = json.loads(value)
        except ValueError as err:
            raise LmforgeError(
                f"{where}: column {column!r} holds {value[:60]!r}, which is not JSON; expected "
                '{"text": [...], "answer_start": [...]}.'
            ) from err
    if value is None:
        return [], []
    if isinstance(value, list) and all(isinstance(x, dict) for x in value):
        value = {
            "text": [x.get("text") for x in value],
            "answer_start": [x.get("answer_start") for x in value],
        }
    if not isinstance(value, dict) or "text" not in value or "answer_start" not in value:
        raise LmforgeError(
            f"{where}: column {column!r} holds {str(value)[:80]!r}; expected "
            '{"text": [...], "answer_start": [...]} (the hub squad layout).'
        )
    texts, starts = value["text"], value["answer_start"]
    if not isinstance(texts, list):
        texts, starts = [texts], [starts]
    if not isinstance(starts, list) or len(texts) != len(starts):
        raise LmforgeError(
            f"{where}: column {column!r} has {len(texts)} answer text(s) but "
            f"{len(starts) if isinstance(starts, list) else 'no list of'} answer_start(s); "
            "expected one start per text."
        )
    return [str(t) for t in texts], list(starts)


def misalignment(context: str, text: str, start: Any) -> str | None:
    """Why an answer does not sit at its start in the context, or None when it does."""
    if not text:
        return "the answer text is empty"
    if isinstance(start, bool) or not isinstance(start, int):
        return f"answer_start {start!r} is not a whole number"
    if not 0 <= start < len(context):
        return f"answer_start {start} is outside the context ({len(context)} characters)"
    if context[start : start + len(text)] != text:
        found = context[start : start + len(text)]
        return f"the context has {found!r} at {start}, not the answer {text!r}"
    return None


def relocated(context: str, text: str, start: Any) -> int | None:
    """The start of the occurrence of `text` in the context nearest to `start`, or None."""
    if not text:
        return None
    near = start if isinstance(start, int) and not isinstance(start, bool) else 0
    found, position = [], context.find(text)
    while position != -1:
        found.append(position)
        position = context.find(text, position + 1)
    return min(found, key=lambda p: abs(p - near)) if found else None


class QuestionAnsweringDataModule(TextDataModule):
    """Questions over contexts, with answer spans (SQuAD v1.1) or possibly none (v2.0).

    Args:
        id_column, question_column, context_column, answers_column: the flat layout's columns
            (a missing id column numbers the rows).
        version_2_with_negative: questions may have no answer (SQuAD v2.0 style).
        doc_stride: tokens shared by consecutive windows of a long context.
        misaligned: what to do with an answer whose text is not at its start in the context:
            `error` (name the rows), `drop` the question, or `fix` it by moving the start to
            the nearest occurrence of the text (dropping it when there is none).
    """

    def __init__(
        self,
        *,
        id_column: str = "id",
        question_column: str = "question",
        context_column: str = "context",
        answers_column: str = "answers",
        version_2_with_negative: bool = False,
        doc_stride: int = 128,
        misaligned: str = "error",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if misaligned not in MISALIGNED:
            raise LmforgeError(
                f"data.misaligned={misaligned!r}; expected one of {', '.join(MISALIGNED)}."
            )
        if isinstance(doc_stride, bool) or not isinstance(doc_stride, int) or doc_stride < 0:
            raise LmforgeError(f"data.doc_stride must be a whole number >= 0, got {doc_stride!r}.")
        if doc_stride >= self.max_length:
            raise LmforgeError(
                f"data.doc_stride={doc_stride} must be less than data.max_length="
                f"{self.max_length}: it is how many tokens consecutive windows of a long "
                "context share, and each window needs room for new context tokens (e.g. "
                f"doc_stride={self.max_length // 4})."
            )
        self.columns = {
            "id_column": id_column,
            "question_column": question_column,
            "context_column": context_column,
            "answers_column": answers_column,
        }
        self.version_2_with_negative = version_2_with_negative
        self.doc_stride = doc_stride
        self.misaligned = misaligned
        # Per split: questions dropped or fixed for misaligned answers; answers no window
        # holds whole; windows per question.
        self._misaligned: dict[str, dict[str, Any]] = {}
        self._windows: dict[str, dict[str, Any]] = {}

    # ----- settings -----------------------------------------------------------------------------
    def model_inputs(self) -> dict[str, Any]:
        return {"version_2_with_negative": self.version_2_with_negative}

    def run_settings(self) -> dict[str, Any]:
        # Prediction reads a question and a context per row.
        return {
            **super().run_settings(),
            "text_column": self.columns["question_column"],
            "text_pair_column": self.columns["context_column"],
            "doc_stride": self.doc_stride,
        }

    def preprocessing_settings(self) -> dict[str, Any]:
        return {
            **super().preprocessing_settings(),
            **self.columns,
            "version_2_with_negative": self.version_2_with_negative,
            "doc_stride": self.doc_stride,
            "misaligned": self.misaligned,
        }

    # ----- reading and checking -----------------------------------------------------------------
    def read_file(self, path: str, key: str) -> datasets.Dataset:
        nested = read_nested_squad(path, key)
        if nested is None:
            return load_file(path, key)
        # A nested file's fields have fixed names.
        self.columns = {
            "id_column": "id",
            "question_column": "question",
            "context_column": "context",
            "answers_column": "answers",
        }
        return nested

    def _column(self, name: str) -> str:
        return self.columns[f"{name}_column"]

    def check_split(self, split: str, dataset: datasets.Dataset) -> None:
        required = {k: v for k, v in self.columns.items() if k != "id_column"}
        if self._column("answers") not in dataset.column_names:
            found = ", ".join(dataset.column_names)
            raise LmforgeError(
                f"The {split} split ({self.source_of(split)}) has no answers column "
                f"{self._column('answers')!r} (data.answers_column); columns found: {found}. "
                'Expected {"text": [...], "answer_start": [...]} per row, as in the hub\'s '
                "squad, or the nested SQuAD JSON layout (data -> paragraphs -> qas)."
            )
        require_columns(dataset, required, split, self.source_of(split))

    def empty_rows(self, split: str, dataset: datasets.Dataset) -> tuple[list[int], str]:
        questions, contexts = dataset[self._column("question")], dataset[self._column("context")]
        empty = [
            i
            for i, (q, c) in enumerate(zip(questions, contexts, strict=True))
            if not str(q or "").strip() or not str(c or "").strip()
        ]
        what = (
            f"an empty question ({self._column('question')!r}) or context "
            f"({self._column('context')!r})"
        )
        return empty, what

    def row_texts(self, dataset: datasets.Dataset) -> list[str]:
        return [f"{q}\n{c}" for q, c in zip(dataset["question"], dataset["context"], strict=True)]

    def label_counts(self, dataset: datasets.Dataset, meta: dict[str, Any]) -> dict[str, int]:
        """Answerable and unanswerable questions."""
        answerable = sum(1 for texts in dataset["answer_text"] if texts)
        return {"answerable": answerable, "unanswerable": len(dataset) - answerable}

    def encode_targets(self, raw: datasets.DatasetDict) -> tuple[datasets.DatasetDict, dict]:
        """One layout for every split: id, question, context, answer texts and starts (all of
        them; training labels use the first), and `row`, which follows each question through
        carving, caps and windows. Answers are checked against their contexts."""
        encoded = {}
        for split, dataset in raw.items():
            encoded[split] = self._checked_split(split, dataset)
        return datasets.DatasetDict(encoded), {
            "version_2_with_negative": self.version_2_with_negative
        }

    def _checked_split(self, split: str, dataset: datasets.Dataset) -> datasets.Dataset:
        source = self.source_of(split)
        column = self._column("answers")
        id_column = self._column("id")
        ids = (
            [str(i) for i in dataset[id_column]]
            if id_column in dataset.column_names
            else [f"row-{i + 1}" for i in range(len(dataset))]
        )
        rows: dict[str, list[Any]] = {
            k: [] for k in ("id", "question", "context", "answer_text", "answer_start", "row")
        }
        bad: list[tuple[str, str]] = []
        fixed = unanswerable_refused = 0
        first_unanswerable = ""
        questions, contexts = dataset[self._column("question")], dataset[self._column("context")]
        for index, (key, question, context, cell) in enumerate(
            zip(ids, questions, contexts, dataset[column], strict=True)
        ):
            where = f"The {split} split ({source}), question {key!r}"
            context = str(context)
            texts, starts = parse_answers(cell, where, column)
            if not texts and not self.version_2_with_negative:
                unanswerable_refused += 1
                if unanswerable_refused == 1:
                    first_unanswerable = key
                continue
            problem = None
            for n, (text, start) in enumerate(zip(texts, starts, strict=True)):
                problem = misalignment(context, text, start)
                if problem and self.misaligned == "fix":
                    moved = relocated(context, text, start)
                    if moved is not None:
                        starts[n], problem = moved, None
                        fixed += 1
                if problem:
                    break
            if problem:
                bad.append((key, problem))
                continue
            rows["id"].append(key)
            rows["question"].append(str(question))
            rows["context"].append(context)
            rows["answer_text"].append(texts)
            rows["answer_start"].append([int(s) for s in starts])
            rows["row"].append(index)
        if unanswerable_refused:
            raise LmforgeError(
                f"The {split} split ({source}) has {unanswerable_refused} question(s) without "
                f"an answer (e.g. {first_unanswerable!r}), but data.version_2_with_negative is "
                "false; set it to true for data with unanswerable questions (SQuAD v2.0 "
                "style), or give every question an answer."
            )
        if bad and self.misaligned == "error":
            shown = "; ".join(f"{key!r}: {why}" for key, why in bad[:SHOWN])
            raise LmforgeError(
                f"The {split} split ({source}) has {len(bad)} question(s) whose answer is not "
                f"at its answer_start in the context: {shown}"
                f"{' ...' if len(bad) > SHOWN else ''}. Expected context[answer_start:] to "
                "start with the answer text; fix the data, or set data.misaligned=drop (leave "
                "them out) or data.misaligned=fix (move each start to the nearest occurrence "
                "of its text)."
            )
        self._misaligned[split] = {
            "dropped": len(bad),
            "fixed": fixed,
            "ids": [key for key, _ in bad[:SHOWN]],
        }
        if not rows["id"]:
            raise LmforgeError(
                f"The {split} split ({source}) has no usable question left after dropping "
                f"{len(bad)} with misaligned answers."
            )
        return datasets.Dataset.from_dict(rows)

    def examples(self, split: str) -> dict[int, dict[str, Any]]:
        """Row id (the `row` of a batch) -> the question's id, question, context and gold
        answer texts, for a split (read again, with the same checks, carving and caps)."""
        raw = self.raw_splits()[split]
        return {
            int(row): {"id": key, "question": q, "context": c, "answers": list(texts)}
            for row, key, q, c, texts in zip(
                raw["row"],
                raw["id"],
                raw["question"],
                raw["context"],
                raw["answer_text"],
                strict=True,
            )
        }

    def _capped(self, split: str, dataset: datasets.Dataset) -> datasets.Dataset:
        """The first `max_<split>_samples` questions, with all of their windows."""
        cap = self.caps[split]
        if cap is None:
            return dataset
        wanted: set[int] = set()
        kept: list[int] = []
        for index, row in enumerate(dataset["row"]):
            if row not in wanted:
                if len(wanted) == cap:
                    break
                wanted.add(row)
            kept.append(index)
        return dataset.select(kept) if len(kept) < len(dataset) else dataset

    # ----- windows ------------------------------------------------------------------------------
    def tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        tokenizer = cast(PreTrainedTokenizerBase, self.tokenizer)  # loaded before tokenizing
        features = encode_windows(
            tokenizer,
            batch["question"],
            batch["context"],
            self.max_length,
            self.doc_stride,
            where=lambda i: f"question {batch['id'][i]!r}",
        )
        starts, ends, whole = [], [], []
        for window, example in enumerate(features["example"]):
            texts, answer_starts = batch["answer_text"][example], batch["answer_start"][example]
            offsets = features["offsets"][window]
            null = features["null_position"][window]
            if texts:
                first = answer_starts[0]
                span = answer_tokens(offsets, first, first + len(texts[0]))
            else:
                span = None
            starts.append(null if span is None else span[0])
            ends.append(null if span is None else span[1])
            whole.append(span is not None)
        out = {name: features[name] for name in MODEL_INPUTS if name in features}
        out["offsets"] = features["offsets"]
        out["start_positions"], out["end_positions"] = starts, ends
        out["row"] = [batch["row"][e] for e in features["example"]]
        out["_answerable"] = [bool(batch["answer_text"][e]) for e in features["example"]]
        out["_answer_whole"] = whole
        # Windows are how long contexts are read, not truncation: answers lost are counted
        # in `after_tokenize` instead.
        out["_truncated"] = [False] * len(starts)
        return out

    def after_tokenize(self, split: str, dataset: datasets.Dataset) -> datasets.Dataset:
        """Count windows per question and answers that no window holds whole."""
        windows: dict[int, int] = {}
        found: dict[int, bool] = {}
        for row, answerable, whole in zip(
            dataset["row"], dataset["_answerable"], dataset["_answer_whole"], strict=True
        ):
            windows[row] = windows.get(row, 0) + 1
            if answerable:
                found[row] = found.get(row, False) or whole
        counts = list(windows.values())
        self._windows[split] = {
            "questions": len(counts),
            "windows": len(dataset),
            "windows_per_question": round(len(dataset) / max(len(counts), 1), 3),
            "max_windows": max(counts, default=0),
            "multi_window_questions": sum(1 for c in counts if c > 1),
            "answers_lost": sum(1 for whole in found.values() if not whole),
            "answerable": len(found),
        }
        return dataset.remove_columns(["_answerable", "_answer_whole"])

    def _data_checks(
        self, raw: datasets.DatasetDict, stats: dict[str, dict], meta: dict[str, Any]
    ) -> dict[str, Any]:
        report = super()._data_checks(raw, stats, meta)
        for split, entry in report["splits"].items():
            windows = self._windows.get(split, {})
            entry["windows"] = windows
            misaligned = self._misaligned.get(split, {"dropped": 0, "fixed": 0, "ids": []})
            entry["misaligned_answers"] = misaligned
            if misaligned["dropped"]:
                report["warnings"].append(
                    f"{split}: {misaligned['dropped']} question(s) dropped because an answer is "
                    f"not at its answer_start (data.misaligned={self.misaligned}), e.g. "
                    f"{', '.join(map(repr, misaligned['ids']))}."
                )
            if windows:
                report["notes"].append(
                    f"{split}: {windows['questions']} questions in {windows['windows']} windows "
                    f"({windows['windows_per_question']} per question, up to "
                    f"{windows['max_windows']}; {windows['multi_window_questions']} questions "
                    f"read in several windows); {windows['answers_lost']} of "
                    f"{windows['answerable']} answers in no window whole"
                )
            lost = windows.get("answers_lost", 0)
            if lost:
                report["warnings"].append(
                    f"{split}: {lost} of {windows['answerable']} answers lie in no window whole "
                    f"(data.max_length={self.max_length}, data.doc_stride={self.doc_stride}): "
                    "those questions train and score as unanswerable in every window; a longer "
                    "max_length or doc_stride keeps more of them."
                )
        return report

    def build_collator(self) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
        tokenizer = cast(PreTrainedTokenizerBase, self.tokenizer)  # loaded before batching
        return WindowCollator(tokenizer, self.pad_to_multiple_of)


def encode_windows(
    tokenizer: PreTrainedTokenizerBase,
    questions: list[str],
    contexts: list[str],
    max_length: int,
    doc_stride: int,
    where: Callable[[int], str],
) -> dict[str, list[Any]]:
    """Question + context windows: the context is cut into windows of at most `max_length`
    tokens that share `doc_stride` tokens; the question is never cut. The question comes first
    when the tokenizer pads on the right and second when it pads on the left (so padding never
    sits between the context and the end). Per window: the model inputs, `offsets` (character
    span of each context token, NOT_CONTEXT elsewhere), `null_position` and `example` (the
    index of its question)."""
    if not tokenizer.is_fast:
        raise LmforgeError(
            f"The tokenizer {tokenizer.name_or_path!r} is not a fast tokenizer; question "
            "answering needs one to map tokens back to characters of the context."
        )
    # Leading spaces in questions only waste window room (SQuAD has some).
    questions = [str(q).lstrip() for q in questions]
    question_first = tokenizer.padding_side == "right"
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    for i, length in enumerate(lengths):
        room = max_length - specials - length
        if room <= doc_stride:
            raise LmforgeError(
                f"{where(i)}: the question is {length} tokens long, which leaves {room} tokens "
                f"of each {max_length}-token window for the context, not more than "
                f"data.doc_stride={doc_stride}; questions are never cut. Raise data.max_length, "
                "lower data.doc_stride, or shorten the question."
            )
    first, second = (questions, contexts) if question_first else (contexts, questions)
    encoded = tokenizer(
        first,
        second,
        truncation="only_second" if question_first else "only_first",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    context_sequence = 1 if question_first else 0
    features: dict[str, list[Any]] = {name: [] for name in MODEL_INPUTS if name in encoded}
    features.update(offsets=[], null_position=[], example=[])
    for window, example in enumerate(encoded["overflow_to_sample_mapping"]):
        sequence = encoded.sequence_ids(window)
        for name in MODEL_INPUTS:
            if name in encoded:
                features[name].append(encoded[name][window])
        features["offsets"].append(
            [
                list(span) if sequence[t] == context_sequence else [NOT_CONTEXT, NOT_CONTEXT]
                for t, span in enumerate(encoded["offset_mapping"][window])
            ]
        )
        features["null_position"].append(
            null_position(encoded["input_ids"][window], None, tokenizer.cls_token_id)
        )
        features["example"].append(example)
    return features


def answer_tokens(offsets: list[list[int]], start: int, end: int) -> tuple[int, int] | None:
    """The first and last token of the character span [start, end) in a window, or None when
    the window does not hold the whole span."""
    context = [t for t, (s, _) in enumerate(offsets) if s != NOT_CONTEXT]
    if not context or offsets[context[0]][0] > start or offsets[context[-1]][1] < end:
        return None
    first = next(t for t in context if offsets[t][1] > start)
    last = next(t for t in reversed(context) if offsets[t][0] < end)
    return first, last


class WindowCollator:
    """Pads windows into a batch on the tokenizer's padding side; with left padding the
    start/end labels move right by the padding, and the offsets are padded on the same side,
    so labels, offsets and the null position stay on their tokens."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None) -> None:
        self.tokenizer = tokenizer
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        inputs = [{k: f[k] for k in MODEL_INPUTS if k in f} for f in features]
        batch = dict(
            self.tokenizer.pad(
                inputs, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt"
            )
        )
        width = batch["input_ids"].shape[1]
        left = self.tokenizer.padding_side == "left"
        offsets = torch.full((len(features), width, 2), NOT_CONTEXT, dtype=torch.long)
        shifts = []
        for i, feature in enumerate(features):
            length = len(feature["input_ids"])
            shift = width - length if left else 0
            shifts.append(shift)
            offsets[i, shift : shift + length] = torch.tensor(feature["offsets"], dtype=torch.long)
        batch["offsets"] = offsets  # (batch, seq, 2)
        shift = torch.tensor(shifts)
        for name in ("start_positions", "end_positions"):
            if name in features[0]:
                batch[name] = torch.tensor([f[name] for f in features]) + shift
        if "row" in features[0]:
            batch["row"] = torch.tensor([f["row"] for f in features])
        return batch
