"""Data for sequence classification: single-label, multi-label and sentence pairs."""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any, cast

import datasets
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from lmforge.data.checks import row_numbers
from lmforge.data.datamodule import TextDataModule
from lmforge.data.sources import require_columns
from lmforge.data.splits import SPLITS
from lmforge.errors import LmforgeError

log = logging.getLogger(__name__)


def _is_missing(value: Any) -> bool:
    """No value: None, NaN (pandas' empty csv cell), or a blank string."""
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, float) and math.isnan(value))


class TextClassificationDataModule(TextDataModule):
    """Texts (or text pairs) with one label, or a set of labels, per row.

    Label names come from `label_names` (in id order) or from the training split: sorted
    strings, or sorted integers, or the names of a hub data set's ClassLabel feature. Labels
    of validation/test rows must be among them.
    """

    def __init__(
        self,
        *,
        text_column: str = "text",
        text_pair_column: str | None = None,
        label_column: str = "label",
        label_names: list[str] | None = None,
        multi_label: bool = False,
        label_separator: str = "|",
        few_shot_k: int | None = None,
        few_shot_validation: bool = False,
        few_shot_strict: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if few_shot_k is not None and few_shot_k < 1:
            raise LmforgeError(f"data.few_shot_k must be 1 or more (or null), got {few_shot_k}.")
        if few_shot_k is not None and multi_label:
            raise LmforgeError(
                "data.few_shot_k draws K examples per class of single-label data; with "
                "model.multi_label=true an example has several classes. Use "
                "data.max_train_samples to cap multi-label data instead."
            )
        self.few_shot_k = few_shot_k
        self.few_shot_validation = few_shot_validation
        self.few_shot_strict = few_shot_strict
        self.text_column = text_column
        self.text_pair_column = text_pair_column
        self.label_column = label_column
        self.configured_label_names = list(label_names) if label_names else None
        self.multi_label = multi_label
        self.label_separator = label_separator
        self.stratify_column = None if multi_label else "labels"

    @property
    def label_names(self) -> list[str]:
        """Label names in id order (known after `setup`)."""
        return self.meta["label_names"]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def gold_labels(self, split: str) -> list[Any]:
        """Gold label id per example of `split` (multi-label: the list of ids)."""
        labels = self.splits[split]["labels"]
        if self.multi_label:
            return [[i for i, on in enumerate(row) if on] for row in labels]
        return list(labels)

    def model_inputs(self) -> dict[str, Any]:
        return {"label_names": self.label_names}

    supports_streaming = True

    def stream_refusal(self) -> str | None:
        if not self.configured_label_names:
            return (
                "a stream's labels are not known before it is read: list them, in id order, "
                "in data.label_names"
            )
        if self.few_shot_k is not None:
            return "data.few_shot_k draws its examples from the whole training split"
        return None

    def select_rows(self, split: str, dataset: datasets.Dataset) -> datasets.Dataset:
        """Few-shot: `few_shot_k` examples of every class drawn with the seed from training
        (and validation with `few_shot_validation`), in file order; a class with fewer is
        refused (`few_shot_strict`) or kept whole with a warning."""
        if self.few_shot_k is None or split not in (
            ("train", "validation") if self.few_shot_validation else ("train",)
        ):
            return dataset
        import numpy as np

        k = self.few_shot_k
        labels = np.asarray(dataset["labels"])
        # One generator per split: the draw of validation does not depend on train's size.
        generator = np.random.default_rng([self.seed, SPLITS.index(split)])
        chosen, counts, short = [], {}, []
        for label, name in enumerate(self.label_names):
            rows = np.flatnonzero(labels == label)
            if len(rows) < k:
                short.append(f"{name!r} has {len(rows)}")
            picked = generator.permutation(rows)[:k]
            chosen += picked.tolist()
            counts[name] = len(picked)
        if short:
            message = (
                f"data.few_shot_k={k}: the {split} split ({self.source_of(split)}) has fewer "
                f"than {k} examples of {len(short)} class(es): {', '.join(short)}."
            )
            if self.few_shot_strict:
                raise LmforgeError(
                    message + " Lower data.few_shot_k, or set data.few_shot_strict=false to "
                    "keep every example of such a class."
                )
            log.warning("%s Every example of those is used.", message)
        self.selection_notes[split] = (
            f"{split}: few-shot draw of {k} per class (seed {self.seed}): "
            + ", ".join(f"{name} {count}" for name, count in counts.items())
        )
        return dataset.select(sorted(chosen))

    def folder_columns(self) -> tuple[str, str | None]:
        # A folder per class, one text file per example (aclImdb's train/pos, train/neg).
        return self.text_column, self.label_column

    def run_settings(self) -> dict[str, Any]:
        return {
            **super().run_settings(),
            "text_column": self.text_column,
            "text_pair_column": self.text_pair_column,
        }

    def preprocessing_settings(self) -> dict[str, Any]:
        return {
            **super().preprocessing_settings(),
            "text_column": self.text_column,
            "text_pair_column": self.text_pair_column,
            "label_column": self.label_column,
            "label_names": self.configured_label_names,
            "multi_label": self.multi_label,
            "label_separator": self.label_separator,
        }

    # ----- labels -----------------------------------------------------------------------------
    def _row_labels(self, value: Any) -> list:
        """The labels of one row as a list (one item unless multi-label)."""
        if not self.multi_label:
            return [value]
        if isinstance(value, str):
            return [v.strip() for v in value.split(self.label_separator) if v.strip()]
        if isinstance(value, list | tuple):
            return list(value)
        return [value]

    def _columns(self) -> dict[str, str | None]:
        return {
            "text_column": self.text_column,
            "text_pair_column": self.text_pair_column,
            "label_column": self.label_column,
        }

    def check_split(self, split: str, dataset: datasets.Dataset) -> None:
        """Configured columns exist; every row has a label (an empty text is only dropped)."""
        source = self.source_of(split)
        require_columns(dataset, self._columns(), split, source)
        missing = [i for i, v in enumerate(dataset[self.label_column]) if _is_missing(v)]
        if missing:
            raise LmforgeError(
                f"The {split} split ({source}) has {len(missing)} row(s) with no label in column "
                f"{self.label_column!r} (data.label_column): row(s) {row_numbers(missing)} "
                "(1-based, a csv header line not counted). Expected a label in every row; fill "
                "or remove them."
            )

    def empty_rows(self, split: str, dataset: datasets.Dataset) -> tuple[list[int], str]:
        columns = [c for c in (self.text_column, self.text_pair_column) if c]
        values = zip(*(dataset[c] for c in columns), strict=True)
        empty = [i for i, row in enumerate(values) if any(_is_missing(v) for v in row)]
        return empty, f"an empty or missing text in column(s) {', '.join(map(repr, columns))}"

    def row_texts(self, dataset: datasets.Dataset) -> list[str]:
        """The text of each raw row; a sentence pair's two texts joined by " / "."""
        texts = [str(t) for t in dataset[self.text_column]]
        if self.text_pair_column:
            pairs = dataset[self.text_pair_column]
            texts = [f"{t} / {p}" for t, p in zip(texts, pairs, strict=True)]
        return texts

    def label_counts(self, dataset: datasets.Dataset, meta: dict[str, Any]) -> dict[str, int]:
        names = meta["label_names"]
        if self.multi_label:
            counts = Counter(names[j] for row in dataset["labels"] for j, v in enumerate(row) if v)
        else:
            counts = Counter(names[j] for j in dataset["labels"])
        return {name: counts.get(name, 0) for name in names}

    def _infer_label_names(self, train: datasets.Dataset) -> list[str]:
        feature = train.features[self.label_column]
        if isinstance(feature, datasets.ClassLabel):
            return list(feature.names)
        inner = getattr(feature, "feature", None)
        if isinstance(inner, datasets.ClassLabel):
            return list(inner.names)
        values = {v for row in train[self.label_column] for v in self._row_labels(row)}
        if all(
            isinstance(v, bool | int) or (isinstance(v, float) and v.is_integer()) for v in values
        ):
            return [str(v) for v in sorted(int(v) for v in values)]
        return sorted(str(v) for v in values)

    def encode_targets(self, raw: datasets.DatasetDict) -> tuple[datasets.DatasetDict, dict]:
        label_names = self.configured_label_names or self._infer_label_names(raw["train"])
        if not self.multi_label and len(label_names) < 2:
            raise LmforgeError(
                f"The train split ({self.source_of('train')}) has a single label "
                f"({', '.join(map(repr, label_names))}, all {len(raw['train'])} rows) in column "
                f"{self.label_column!r}; classification needs at least two labels in training."
            )
        feature = raw["train"].features[self.label_column]
        class_label = feature if isinstance(feature, datasets.ClassLabel) else None
        index = {name: i for i, name in enumerate(label_names)}

        def to_id(value: Any) -> int | None:
            if class_label is not None and isinstance(value, int) and value >= 0:
                value = class_label.int2str(value)
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if str(value) in index:
                return index[str(value)]
            # Integer labels with configured names: the integer is the id.
            if (
                self.configured_label_names
                and isinstance(value, int)
                and not isinstance(value, bool)
                and 0 <= value < len(label_names)
            ):
                return value
            return None

        encoded = {}
        for split, dataset in raw.items():
            rows = [self._row_labels(v) for v in dataset[self.label_column]]
            ids = [[to_id(v) for v in row] for row in rows]
            unknown = Counter(
                str(v)
                for row, row_ids in zip(rows, ids, strict=True)
                for v, i in zip(row, row_ids, strict=True)
                if i is None
            )
            if unknown:
                known = "data.label_names" if self.configured_label_names else "the train split"
                found = ", ".join(f"{k!r} ({n} row(s))" for k, n in unknown.most_common(10))
                raise LmforgeError(
                    f"The {split} split ({self.source_of(split)}) has {sum(unknown.values())} "
                    f"row label(s) in column {self.label_column!r} that {known} does not have: "
                    f"{found}. Expected one of the known labels: "
                    f"{', '.join(map(repr, label_names))}; add examples of the new labels to "
                    "training, or fix or remove those rows."
                )
            if self.multi_label:
                labels: list[Any] = [
                    [1.0 if j in row else 0.0 for j in range(len(label_names))] for row in ids
                ]
            else:
                labels = [row[0] for row in ids]
            encoded[split] = dataset.add_column("labels", labels)
        # Label counts per split are in the data checks (after carving).
        return datasets.DatasetDict(encoded), {
            "label_names": label_names,
            "multi_label": self.multi_label,
        }

    # ----- tokenization -------------------------------------------------------------------------
    def tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        texts = [str(t) for t in batch[self.text_column]]
        pairs = [str(t) for t in batch[self.text_pair_column]] if self.text_pair_column else None
        tokenizer = cast(PreTrainedTokenizerBase, self.tokenizer)  # loaded before tokenizing
        encoded = tokenizer(texts, pairs, truncation=True, max_length=self.max_length)
        out = dict(encoded)
        if encoded.encodings is not None:
            out["_truncated"] = [bool(e.overflowing) for e in encoded.encodings]
        else:  # slow tokenizers do not report overflow; a full-length row was likely cut
            out["_truncated"] = [len(ids) >= self.max_length for ids in encoded["input_ids"]]
        out["labels"] = batch["labels"]
        return out

    def build_collator(self) -> DataCollatorWithPadding:
        return DataCollatorWithPadding(
            cast(PreTrainedTokenizerBase, self.tokenizer),  # loaded before batching
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
