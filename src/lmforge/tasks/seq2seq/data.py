"""Data for sequence-to-sequence tasks: a source text and a target text per row.

Two layouts: a source and a target column (csv/tsv/json/jsonl/parquet/hub), or Hugging Face's
translation format, one column of `{"en": ..., "de": ...}` dicts read with `source_lang` and
`target_lang`. Targets become `labels` padded with the ignore index, so padding never reaches
the loss.
"""

from __future__ import annotations

from typing import Any, cast

import datasets
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from lmforge.data.datamodule import TextDataModule
from lmforge.data.labels import IGNORE_INDEX
from lmforge.data.sources import require_columns
from lmforge.errors import LmforgeError


def _text(value: Any) -> str:
    return "" if value is None else str(value)


class Seq2SeqDataModule(TextDataModule):
    """Source -> target pairs, tokenized with one tokenizer for both sides.

    Args:
        source_column, target_column: the columns of the source and target texts.
        translation_column: the column of translation dicts; used when `source_lang` and
            `target_lang` are set (then the two column keys are not read).
        source_lang, target_lang: the keys of the source and target texts in those dicts.
        source_prefix: text put before every source (T5's "summarize: ").
        max_source_length: sources are cut at this many tokens.
        max_target_length: targets are cut at this many tokens (a cut target teaches the model
            to stop early: the data checks report how many are cut).
    """

    def __init__(
        self,
        *,
        source_column: str = "source",
        target_column: str = "target",
        translation_column: str = "translation",
        source_lang: str | None = None,
        target_lang: str | None = None,
        source_prefix: str = "",
        max_source_length: int = 256,
        max_target_length: int = 64,
        **kwargs: Any,
    ) -> None:
        if (source_lang is None) != (target_lang is None):
            raise LmforgeError(
                "data.source_lang and data.target_lang go together: set both (translation "
                f"dicts in data.translation_column) or neither; got source_lang={source_lang!r}, "
                f"target_lang={target_lang!r}."
            )
        if max_target_length < 1:
            raise LmforgeError(
                f"data.max_target_length must be 1 or more, got {max_target_length}."
            )
        super().__init__(max_length=max_source_length, **kwargs)
        self.source_column = source_column
        self.target_column = target_column
        self.translation_column = translation_column
        self.source_lang = source_lang
        self.target_lang = target_lang
        self.source_prefix = source_prefix or ""
        self.max_target_length = max_target_length
        # Targets cut at max_target_length per split, counted while tokenizing.
        self._targets_cut: dict[str, int] = {}

    @property
    def translation(self) -> bool:
        return self.source_lang is not None

    def model_inputs(self) -> dict[str, Any]:
        return {"source_prefix": self.source_prefix}

    def run_settings(self) -> dict[str, Any]:
        return {
            **super().run_settings(),
            "text_column": self.source_column,
            "source_prefix": self.source_prefix,
            "max_target_length": self.max_target_length,
        }

    def preprocessing_settings(self) -> dict[str, Any]:
        return {
            **super().preprocessing_settings(),
            "columns": self._columns(),
            "source_prefix": self.source_prefix,
            "max_target_length": self.max_target_length,
        }

    # ----- reading rows -------------------------------------------------------------------------
    def _columns(self) -> dict[str, str | None]:
        if self.translation:
            return {"translation_column": self.translation_column}
        return {"source_column": self.source_column, "target_column": self.target_column}

    def pairs(self, dataset: datasets.Dataset) -> tuple[list[str], list[str]]:
        """The source and target text of every row (the prefix not added)."""
        if not self.translation:
            return (
                [_text(v) for v in dataset[self.source_column]],
                [_text(v) for v in dataset[self.target_column]],
            )
        rows = dataset[self.translation_column]
        return (
            [_text((row or {}).get(self.source_lang)) for row in rows],
            [_text((row or {}).get(self.target_lang)) for row in rows],
        )

    def check_split(self, split: str, dataset: datasets.Dataset) -> None:
        """The configured columns exist; translation dicts hold both languages."""
        source = self.source_of(split)
        require_columns(dataset, self._columns(), split, source)
        if not self.translation:
            return
        for index, row in enumerate(dataset[self.translation_column]):
            if not isinstance(row, dict):
                raise LmforgeError(
                    f"The {split} split ({source}), row {index + 1}: column "
                    f"{self.translation_column!r} (data.translation_column) holds "
                    f"{type(row).__name__}, expected a dict of texts by language "
                    '({"en": ..., "de": ...}).'
                )
            present = {k for k, v in row.items() if v is not None}
            for key, lang in (("source_lang", self.source_lang), ("target_lang", self.target_lang)):
                if lang not in present:
                    raise LmforgeError(
                        f"data.{key}={lang!r} is not a language of the {split} split ({source}): "
                        f"row {index + 1} of column {self.translation_column!r} has "
                        f"{', '.join(map(repr, sorted(present))) or 'no languages'}."
                    )

    def empty_rows(self, split: str, dataset: datasets.Dataset) -> tuple[list[int], str]:
        sources, targets = self.pairs(dataset)
        empty = [
            i
            for i, (s, t) in enumerate(zip(sources, targets, strict=True))
            if not s.strip() or not t.strip()
        ]
        if self.translation:
            what = f"an empty {self.source_lang!r} or {self.target_lang!r} text"
        else:
            what = f"an empty source ({self.source_column!r}) or target ({self.target_column!r})"
        return empty, what

    def row_texts(self, dataset: datasets.Dataset) -> list[str]:
        """The source of each row of an encoded split (`encode_targets`' layout)."""
        return [str(s) for s in dataset["source"]]

    def encode_targets(self, raw: datasets.DatasetDict) -> tuple[datasets.DatasetDict, dict]:
        """Put every split in one layout: `source` and `target` text columns."""
        encoded = {}
        for split, dataset in raw.items():
            sources, targets = self.pairs(dataset)
            # `row` follows each pair through carving, caps and batching, so generated text is
            # scored against the raw target text.
            encoded[split] = datasets.Dataset.from_dict(
                {"source": sources, "target": targets, "row": list(range(len(sources)))}
            )
        return datasets.DatasetDict(encoded), {}

    def texts(self, split: str) -> dict[int, tuple[str, str]]:
        """Row id (the `row` of a batch) -> the raw source and target text, for a split (read
        from the raw data again, with the same checks and carving)."""
        raw = self.raw_splits()[split]
        return {
            int(row): (str(source), str(target))
            for row, source, target in zip(raw["row"], raw["source"], raw["target"], strict=True)
        }

    # ----- tokenization -------------------------------------------------------------------------
    def tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        tokenizer = cast(PreTrainedTokenizerBase, self.tokenizer)  # loaded before tokenizing
        sources = [self.source_prefix + s for s in batch["source"]]
        encoded = tokenizer(sources, truncation=True, max_length=self.max_length)
        out = dict(encoded)
        if encoded.encodings is not None:
            out["_truncated"] = [bool(e.overflowing) for e in encoded.encodings]
        else:  # slow tokenizers do not report overflow; a full-length row was likely cut
            out["_truncated"] = [len(ids) >= self.max_length for ids in encoded["input_ids"]]
        targets = tokenizer(text_target=batch["target"])["input_ids"]
        end = (
            tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        )
        labels = []
        for ids in targets:
            cut = list(ids[: self.max_target_length])
            if len(ids) > self.max_target_length and end is not None and ids[-1] == end:
                cut[-1] = end  # a cut target keeps its end token: the model still learns to stop
            labels.append(cut)
        out["labels"] = labels
        out["row"] = batch["row"]
        out["_target_cut"] = [len(ids) > self.max_target_length for ids in targets]
        return out

    # Pairs are tokenized one by one: the training split may stream (data.streaming=true).
    supports_streaming = True

    def stream_examples(self, encoded: dict[str, list]) -> dict[str, list]:
        encoded.pop("_target_cut")
        return super().stream_examples(encoded)

    def after_tokenize(self, split: str, dataset: datasets.Dataset) -> datasets.Dataset:
        self._targets_cut[split] = int(sum(dataset["_target_cut"]))
        return dataset.remove_columns("_target_cut")

    def _data_checks(
        self, raw: datasets.DatasetDict, stats: dict[str, dict], meta: dict[str, Any]
    ) -> dict[str, Any]:
        report = super()._data_checks(raw, stats, meta)
        for split, cut in self._targets_cut.items():
            entry = report["splits"][split]
            entry["targets_truncated"] = cut
            examples = max(int(entry.get("examples") or 0), 1)
            if cut:
                report["warnings"].append(
                    f"{split}: {cut} of {examples} targets ({100 * cut / examples:.1f}%) are "
                    f"longer than data.max_target_length={self.max_target_length} tokens and were "
                    "cut (the model learns to stop early on them); raise it to keep them whole."
                )
        return report

    def build_collator(self) -> DataCollatorForSeq2Seq:
        return DataCollatorForSeq2Seq(
            cast(PreTrainedTokenizerBase, self.tokenizer),  # loaded before batching
            label_pad_token_id=IGNORE_INDEX,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
