"""Data for multiple choice: a question (with an optional context) and its answer choices.

A row's choices come from one list column (`["red", "blue"]`), a column of objects holding
`text` and `label` lists (ARC, OpenBookQA, CommonsenseQA on the hub), a text column whose
choices are separated by `choice_separator` (csv files), or several columns, one choice each
(SWAG's `ending0`..`ending3`; an empty cell is no choice). The number of choices may vary from
row to row. The answer is an index (0-based), a number (1-based), a letter, or the choice's
text (`label_format`; `auto` tells them apart, see `answer_index`).

Each (question, choice) pair is tokenized as a sentence pair; a batch is padded to its widest
row in choices and tokens, and `choice_mask` says which choices are real.
"""

from __future__ import annotations

import math
import string
from collections import Counter
from typing import Any, cast

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from lmforge.data.datamodule import TextDataModule
from lmforge.data.sources import require_columns
from lmforge.errors import LmforgeError

LABEL_FORMATS = ("auto", "index", "number", "letter", "text")
LETTERS = string.ascii_uppercase
# Columns this datamodule adds to the raw rows: the text before the choices, the choices.
FIRST, CHOICES = "mc_first", "mc_choices"


def _is_missing(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, float) and math.isnan(value))


def position_name(index: int) -> str:
    """A choice position as users name it: A, B, ... (then 27, 28, ... past Z)."""
    return LETTERS[index] if index < len(LETTERS) else str(index + 1)


def answer_index(
    value: Any, choices: list[str], keys: list[str] | None, label_format: str
) -> int | str:
    """The 0-based index of the answer `value` among `choices`, or why it is none.

    `keys`: the choices' own labels where the data gives them (ARC's `["A", "B", ...]`), which
    `auto` matches first. Then, under `auto`: an integer is a 0-based index, a single letter a
    position (A is the first), any other text must equal one choice's text."""
    text = str(value).strip() if not _is_missing(value) else ""
    if not text:
        return "no answer"
    n = len(choices)
    if label_format == "auto" and keys and text in keys:
        return keys.index(text)
    integer = None
    if isinstance(value, bool):
        integer = None
    elif isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        integer = int(value)
    elif text.lstrip("-").isdigit():
        integer = int(text)
    if label_format in ("index", "number") or (label_format == "auto" and integer is not None):
        if integer is None:
            return f"{text!r} is not a whole number"
        index = integer - 1 if label_format == "number" else integer
        if not 0 <= index < n:
            first, last = (1, n) if label_format == "number" else (0, n - 1)
            return f"{integer} is outside {first}..{last} for {n} choices"
        return index
    if label_format == "letter" or (label_format == "auto" and len(text) == 1 and text.isalpha()):
        index = LETTERS.find(text.upper()) if len(text) == 1 else -1
        if not 0 <= index < n:
            return f"{text!r} is not one of the letters A..{position_name(n - 1)} of {n} choices"
        if label_format == "auto" and text in choices and choices.index(text) != index:
            return f"{text!r} is both a letter and the text of another choice"
        return index
    matches = [i for i, choice in enumerate(choices) if choice.strip() == text]
    if len(matches) == 1:
        return matches[0]
    if matches:
        return f"{text!r} is the text of {len(matches)} choices"
    return f"{text[:60]!r} is not the text of any choice"


class MultipleChoiceDataModule(TextDataModule):
    """Questions (an optional context before each) with a varying number of answer choices.

    Args:
        question_column: the question (or the start of the sentence to complete).
        context_column: a passage read before the question; None: none.
        choices_column: one column holding each row's choices (a list, an object with `text`
            and `label` lists, or a text split at `choice_separator`), or a list of columns
            holding one choice each.
        label_column: the answer (see `label_format`).
        label_format: auto, index (0-based), number (1-based), letter (A, B, ...) or text.
        choice_separator: what separates the choices of a text cell (csv files).
    """

    def __init__(
        self,
        *,
        question_column: str = "question",
        context_column: str | None = None,
        choices_column: str | list[str] = "choices",
        label_column: str = "label",
        label_format: str = "auto",
        choice_separator: str = "|",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if label_format not in LABEL_FORMATS:
            raise LmforgeError(
                f"data.label_format={label_format!r}; expected one of {', '.join(LABEL_FORMATS)}."
            )
        if not choice_separator:
            raise LmforgeError("data.choice_separator must not be empty (the default is '|').")
        columns = [choices_column] if isinstance(choices_column, str) else list(choices_column)
        if not columns or any(not str(c).strip() for c in columns):
            raise LmforgeError(
                f"data.choices_column={choices_column!r}: name the column of the choices, or a "
                "list of columns holding one choice each (e.g. [ending0,ending1,ending2])."
            )
        if len(columns) == 1 and not isinstance(choices_column, str):
            columns = [str(columns[0])]
        self.question_column = question_column
        self.context_column = context_column
        self.choice_columns = [str(c) for c in columns]
        self.label_column = label_column
        self.label_format = label_format
        self.choice_separator = choice_separator

    # ----- what the model and predict are told ------------------------------------------------
    def run_settings(self) -> dict[str, Any]:
        return {
            **super().run_settings(),
            "text_column": self.question_column,
            "context_column": self.context_column,
            "choice_separator": self.choice_separator,
        }

    def preprocessing_settings(self) -> dict[str, Any]:
        return {
            **super().preprocessing_settings(),
            "question_column": self.question_column,
            "context_column": self.context_column,
            "choice_columns": self.choice_columns,
            "label_column": self.label_column,
            "label_format": self.label_format,
            "choice_separator": self.choice_separator,
        }

    def gold_labels(self, split: str) -> list[int]:
        """The answer's position per example of `split`."""
        return list(self.splits[split]["labels"])

    def examples(self, split: str) -> dict[int, dict[str, Any]]:
        """Row id (the `row` of a batch) -> the question, its choices and the answer's index,
        for a split (read again, with the same checks, carving and caps)."""
        raw = self.raw_splits()[split]
        return {
            int(row): {"question": first, "choices": list(choices), "answer": int(label)}
            for row, first, choices, label in zip(
                raw["row"], raw[FIRST], raw[CHOICES], raw["labels"], strict=True
            )
        }

    # ----- checks -------------------------------------------------------------------------------
    def _columns(self) -> dict[str, str | None]:
        columns: dict[str, str | None] = {
            "question_column": self.question_column,
            "context_column": self.context_column,
            "label_column": self.label_column,
        }
        for column in self.choice_columns:
            columns[
                f"choices_column ({column!r})" if len(self.choice_columns) > 1 else "choices_column"
            ] = column
        return columns

    def check_split(self, split: str, dataset: datasets.Dataset) -> None:
        require_columns(dataset, self._columns(), split, self.source_of(split))

    def empty_rows(self, split: str, dataset: datasets.Dataset) -> tuple[list[int], str]:
        empty = [i for i, q in enumerate(dataset[self.question_column]) if _is_missing(q)]
        return empty, f"an empty or missing question in column {self.question_column!r}"

    def row_texts(self, dataset: datasets.Dataset) -> list[str]:
        return [
            f"{first} / {' | '.join(choices)}"
            for first, choices in zip(dataset[FIRST], dataset[CHOICES], strict=True)
        ]

    def label_counts(self, dataset: datasets.Dataset, meta: dict[str, Any]) -> dict[str, int]:
        """How often the answer is at each position (a skew lets a model guess by position)."""
        counts = Counter(dataset["labels"])
        return {position_name(i): counts.get(i, 0) for i in range(meta["max_choices"])}

    # ----- rows -> questions, choices, answers --------------------------------------------------
    def _row_choices(self, row: dict[str, Any], where: str) -> tuple[list[str], list[str] | None]:
        """A row's choices (and their own labels, where the data gives them)."""
        if len(self.choice_columns) > 1:
            values = [row[c] for c in self.choice_columns]
            return [str(v).strip() for v in values if not _is_missing(v)], None
        value = row[self.choice_columns[0]]
        keys = None
        if isinstance(value, dict):
            if "text" not in value:
                raise LmforgeError(
                    f"{where}: the choices object has the keys {', '.join(map(repr, value))}; "
                    "expected a 'text' list (and optionally a 'label' list), or a plain list."
                )
            keys = [str(k).strip() for k in value.get("label") or []] or None
            value = value["text"]
        if isinstance(value, str):
            value = value.split(self.choice_separator)
        if not isinstance(value, list | tuple):
            raise LmforgeError(
                f"{where}: the choices in column {self.choice_columns[0]!r} are "
                f"{type(value).__name__} {str(value)[:60]!r}; expected a list of texts, an "
                f"object with a 'text' list, or a text with choices separated by "
                f"{self.choice_separator!r} (data.choice_separator)."
            )
        choices = [str(v).strip() for v in value]
        if keys is not None and len(keys) != len(choices):
            raise LmforgeError(
                f"{where}: the choices object has {len(choices)} texts but {len(keys)} labels."
            )
        return choices, keys

    def encode_targets(self, raw: datasets.DatasetDict) -> tuple[datasets.DatasetDict, dict]:
        encoded, widest = {}, 0
        for split, dataset in raw.items():
            source = self.source_of(split)
            firsts, all_choices, labels, bad = [], [], [], []
            for index, row in enumerate(dataset):
                where = f"The {split} split ({source}), row {index + 1}"
                choices, keys = self._row_choices(row, where)
                if len(choices) < 2 or any(not c for c in choices):
                    bad.append(
                        (
                            index,
                            f"{len(choices)} choice(s), some empty"
                            if any(not c for c in choices)
                            else f"{len(choices)} choice(s)",
                        )
                    )
                    continue
                answer = answer_index(row[self.label_column], choices, keys, self.label_format)
                if isinstance(answer, str):
                    bad.append((index, answer))
                    continue
                question = str(row[self.question_column]).strip()
                context = row[self.context_column] if self.context_column else None
                firsts.append(question if _is_missing(context) else f"{context}\n{question}")
                all_choices.append(choices)
                labels.append(answer)
            if bad:
                shown = "; ".join(f"row {i + 1}: {why}" for i, why in bad[:5])
                more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
                raise LmforgeError(
                    f"The {split} split ({source}) has {len(bad)} row(s) whose choices or answer "
                    f"cannot be used: {shown}{more} (1-based, a csv header line not counted). "
                    f"Expected at least two non-empty choices (data.choices_column="
                    f"{self._choices_key()}) and an answer in column {self.label_column!r} that "
                    f"names one of them (data.label_format={self.label_format}: "
                    "an index from 0, a number from 1, a letter A, B, ... or the choice's text)."
                )
            widest = max([widest, *(len(c) for c in all_choices)])
            encoded[split] = datasets.Dataset.from_dict(
                {
                    FIRST: firsts,
                    CHOICES: all_choices,
                    "labels": labels,
                    "row": list(range(len(labels))),
                }
            )
        return datasets.DatasetDict(encoded), {"max_choices": widest}

    def _choices_key(self) -> str:
        return self.choice_columns[0] if len(self.choice_columns) == 1 else str(self.choice_columns)

    # ----- tokenization -------------------------------------------------------------------------
    def tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        tokenizer = cast(PreTrainedTokenizerBase, self.tokenizer)  # loaded before tokenizing
        out: dict[str, list] = {"input_ids": [], "attention_mask": [], "choice_start": []}
        types = "token_type_ids" in tokenizer.model_input_names
        if types:
            out["token_type_ids"] = []
        truncated, lengths = [], []
        for first, choices in zip(batch[FIRST], batch[CHOICES], strict=True):
            encoded = tokenizer(
                [first] * len(choices), choices, truncation=True, max_length=self.max_length
            )
            out["input_ids"].append(encoded["input_ids"])
            out["attention_mask"].append(encoded["attention_mask"])
            if types:
                out["token_type_ids"].append(encoded["token_type_ids"])
            out["choice_start"].append([choice_start(encoded, i) for i in range(len(choices))])
            if encoded.encodings is not None:
                truncated.append(any(bool(e.overflowing) for e in encoded.encodings))
            else:
                truncated.append(any(len(ids) >= self.max_length for ids in encoded["input_ids"]))
            lengths.append(max(len(ids) for ids in encoded["input_ids"]))
        out["labels"] = batch["labels"]
        out["row"] = batch["row"]
        out["length"] = lengths
        out["_truncated"] = truncated
        return out

    def build_collator(self) -> MultipleChoiceCollator:
        tokenizer = cast(PreTrainedTokenizerBase, self.tokenizer)  # loaded before batching
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return MultipleChoiceCollator(pad, self.pad_to_multiple_of)


def choice_start(encoded: Any, index: int) -> int:
    """Where the choice's tokens start in pair `index` of a tokenizer's output (its length when
    the tokenizer cannot tell: the choice was cut away)."""
    ids = encoded["input_ids"][index]
    try:
        sequence = encoded.sequence_ids(index)
    except (ValueError, AttributeError):  # slow tokenizers keep no sequence ids
        return len(ids)
    return next((p for p, s in enumerate(sequence) if s == 1), len(ids))


class MultipleChoiceCollator:
    """Pads examples to (batch, choices, tokens): `input_ids`, `attention_mask` (and
    `token_type_ids`), `choice_mask` (batch, choices) true for real choices, `choice_start`
    (where each choice's tokens start), `labels` and `row`."""

    def __init__(self, pad_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_id = pad_id
        self.multiple = pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        choices = max(len(f["input_ids"]) for f in features)
        width = max(len(ids) for f in features for ids in f["input_ids"])
        if self.multiple:
            width = -(-width // self.multiple) * self.multiple
        shape = (len(features), choices, width)
        batch = {
            "input_ids": torch.full(shape, self.pad_id, dtype=torch.long),
            "attention_mask": torch.zeros(shape, dtype=torch.long),
            "choice_mask": torch.zeros(shape[:2], dtype=torch.bool),
            "choice_start": torch.zeros(shape[:2], dtype=torch.long),
        }
        if "token_type_ids" in features[0]:
            batch["token_type_ids"] = torch.zeros(shape, dtype=torch.long)
        for b, feature in enumerate(features):
            for c, ids in enumerate(feature["input_ids"]):
                batch["input_ids"][b, c, : len(ids)] = torch.tensor(ids)
                batch["attention_mask"][b, c, : len(ids)] = 1
                if "token_type_ids" in batch:
                    types = feature["token_type_ids"][c]
                    batch["token_type_ids"][b, c, : len(types)] = torch.tensor(types)
            count = len(feature["input_ids"])
            batch["choice_mask"][b, :count] = True
            batch["choice_start"][b, :count] = torch.tensor(feature["choice_start"])
        batch["labels"] = torch.tensor([f["labels"] for f in features])
        if "row" in features[0]:
            batch["row"] = torch.tensor([f["row"] for f in features])
        return batch
