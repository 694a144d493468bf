"""Data for sequence classification: single-label, multi-label and sentence pairs."""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any

import datasets
from transformers import DataCollatorWithPadding

from lmforge.data.datamodule import TextDataModule
from lmforge.data.sources import require_columns
from lmforge.errors import LmforgeError

log = logging.getLogger(__name__)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _rows(indices: list[int], limit: int = 5) -> str:
    shown = ", ".join(str(i + 1) for i in indices[:limit])
    return shown + (f" and {len(indices) - limit} more" if len(indices) > limit else "")


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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
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

    def _check_split(self, dataset: datasets.Dataset, split: str) -> None:
        columns = {
            "text_column": self.text_column,
            "text_pair_column": self.text_pair_column,
            "label_column": self.label_column,
        }
        require_columns(dataset, columns, split)
        for key in ("text_column", "text_pair_column", "label_column"):
            column = columns[key]
            if not column:
                continue
            missing = [i for i, v in enumerate(dataset[column]) if _is_missing(v)]
            if missing:
                raise LmforgeError(
                    f"The {split} split has {len(missing)} row(s) with no value in column "
                    f"{column!r} (data.{key}): row(s) {_rows(missing)} (1-based, header not "
                    "counted). Fill or remove them."
                )

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
        for split, dataset in raw.items():
            self._check_split(dataset, split)
        label_names = self.configured_label_names or self._infer_label_names(raw["train"])
        if not self.multi_label and len(label_names) < 2:
            raise LmforgeError(
                f"The training split has a single label ({label_names!r}) in column "
                f"{self.label_column!r}; classification needs at least two."
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

        encoded, distribution = {}, {}
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
                source = "data.label_names" if self.configured_label_names else "the training split"
                found = ", ".join(f"{k!r} ({n} rows)" for k, n in unknown.most_common(10))
                raise LmforgeError(
                    f"The {split} split has label(s) in column {self.label_column!r} that "
                    f"{source} does not have: {found}. "
                    f"Known labels: {', '.join(map(repr, label_names))}."
                )
            if self.multi_label:
                labels = [
                    [1.0 if j in row else 0.0 for j in range(len(label_names))] for row in ids
                ]
                counts = Counter(label_names[j] for row in ids for j in row)
            else:
                labels = [row[0] for row in ids]
                counts = Counter(label_names[j] for j in labels)
            distribution[split] = dict(sorted(counts.items()))
            encoded[split] = dataset.add_column("labels", labels)
        for split, counts in distribution.items():
            log.info("Label distribution (%s): %s", split, counts)
        return datasets.DatasetDict(encoded), {
            "label_names": label_names,
            "multi_label": self.multi_label,
            "label_distribution": distribution,
        }

    # ----- tokenization -------------------------------------------------------------------------
    def tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        texts = [str(t) for t in batch[self.text_column]]
        pairs = [str(t) for t in batch[self.text_pair_column]] if self.text_pair_column else None
        encoded = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length)
        out = dict(encoded)
        if encoded.encodings is not None:
            out["_truncated"] = [bool(e.overflowing) for e in encoded.encodings]
        else:  # slow tokenizers do not report overflow; a full-length row was likely cut
            out["_truncated"] = [len(ids) >= self.max_length for ids in encoded["input_ids"]]
        out["labels"] = batch["labels"]
        return out

    def build_collator(self) -> DataCollatorWithPadding:
        return DataCollatorWithPadding(self.tokenizer)
