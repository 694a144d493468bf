"""Data for causal (GPT-style) and masked (BERT-style) language modelling."""

from __future__ import annotations

import logging
from collections.abc import Callable
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar, cast

import datasets
import torch
from transformers import (
    DataCollatorForLanguageModeling,
    DataCollatorForTokenClassification,
    PreTrainedTokenizerBase,
)

from lmforge.data.datamodule import TextDataModule
from lmforge.data.labels import IGNORE_INDEX
from lmforge.data.sources import check_file, load_file, require_columns
from lmforge.errors import LmforgeError

log = logging.getLogger(__name__)

OBJECTIVES = ("causal", "masked")
MODES = ("group", "truncate")

T = TypeVar("T")


def document_separator(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token placed between documents: EOS where the tokenizer has one, else SEP.

    WordPiece (BERT-style) vocabularies have no end-of-text token; their [SEP] marks the end of
    a segment and plays that role.
    """
    for token_id in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if token_id is not None:
            return token_id
    raise LmforgeError(
        f"The tokenizer {tokenizer.name_or_path!r} has neither an end-of-text (EOS) nor a "
        "separator (SEP) token to put between documents."
    )


def group_blocks(sequences: list[list[T]], block_size: int) -> list[list[T]]:
    """Concatenate token sequences and cut them into blocks of `block_size`; the remainder
    shorter than a block is dropped."""
    joined = list(chain.from_iterable(sequences))
    usable = (len(joined) // block_size) * block_size
    return [joined[i : i + block_size] for i in range(0, usable, block_size)]


class CausalCollator:
    """Pads a batch; labels are the input ids with padding set to -100 (the model shifts), or
    the examples' own labels where they have them (instructions: -100 outside the answers).

    Written here because DataCollatorForLanguageModeling(mlm=False) finds padding by token id:
    GPT-style tokenizers pad with their EOS token, so it would also drop every real
    end-of-text target. This uses the attention mask instead.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None = None
    ) -> None:
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.multiple = pad_to_multiple_of or 1

    def __call__(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in examples)
        width = -(-width // self.multiple) * self.multiple
        if "position_ids" in examples[0]:
            return self.packed(examples, width)
        ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            ids[row, :n] = torch.tensor(example["input_ids"])
            mask[row, :n] = 1
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        for row, example in enumerate(examples):
            if "labels" in example:
                own = example["labels"]
                labels[row, : len(own)] = torch.tensor(own)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        # Instructions: each example's row in its split and the answer scored by generation.
        for key in ("row", "answer_span"):
            if key in examples[0]:
                batch[key] = torch.tensor([e[key] for e in examples])
        return batch

    def packed(self, examples: list[dict[str, list[int]]], width: int) -> dict[str, torch.Tensor]:
        """Packed sequences (see `instructions.pack_examples`): no attention mask, so the model
        builds its block-diagonal mask from `position_ids`; padding is one more block of its own
        (positions from 0), outside the loss."""
        ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        positions = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            ids[row, :n] = torch.tensor(example["input_ids"])
            labels[row, :n] = torch.tensor(example["labels"])
            positions[row, :n] = torch.tensor(example["position_ids"])
            positions[row, n:] = torch.arange(width - n)
        return {"input_ids": ids, "labels": labels, "position_ids": positions}


class LanguageModelingDataModule(TextDataModule):
    """Plain text for causal or masked language modelling.

    Sources: `.txt` files (one document per line, or one per file with
    `text_file_mode=document`) or a text column of any supported file or hub data set.
    `mode=group` concatenates documents (separated by EOS, or SEP for WordPiece tokenizers)
    and cuts blocks of `block_size` tokens; `mode=truncate` keeps one document per example,
    cut at `block_size`, with padding left out of the loss. Masked LM masks `mlm_probability`
    of the tokens (whole words with `whole_word_mask`): training batches anew every time,
    validation and test once, with `seed`, so evaluation is the same across runs.
    """

    def __init__(
        self,
        *,
        objective: str = "causal",
        text_column: str = "text",
        text_file_mode: str = "line",
        mode: str = "group",
        block_size: int = 128,
        mlm_probability: float = 0.15,
        whole_word_mask: bool = False,
        **kwargs: Any,
    ) -> None:
        # Blocks are the sequence length here; the shared code reads it as max_length.
        super().__init__(max_length=block_size, **kwargs)
        if objective not in OBJECTIVES:
            raise LmforgeError(f"data.objective={objective!r}; expected one of {OBJECTIVES}.")
        if mode not in MODES:
            raise LmforgeError(f"data.mode={mode!r}; expected one of {MODES}.")
        if text_file_mode not in ("line", "document", "paragraph"):
            raise LmforgeError(
                f"data.text_file_mode={text_file_mode!r}; expected line, paragraph or document."
            )
        if not 0 < mlm_probability < 1:
            raise LmforgeError(f"data.mlm_probability must be in (0, 1), got {mlm_probability}.")
        self.objective = objective
        self.text_column = text_column
        self.text_file_mode = text_file_mode
        self.mode = mode
        self.block_size = block_size
        self.mlm_probability = mlm_probability
        self.whole_word_mask = whole_word_mask

    def run_settings(self) -> dict[str, Any]:
        return {**super().run_settings(), "text_column": self.text_column}

    def preprocessing_settings(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "text_column": self.text_column,
            "text_file_mode": self.text_file_mode,
            "mode": self.mode,
            "block_size": self.block_size,
            "mlm_probability": self.mlm_probability if self.objective == "masked" else None,
            "whole_word_mask": self.whole_word_mask if self.objective == "masked" else None,
            "seed": self.seed if self.objective == "masked" else None,
            "drop_empty": self.drop_empty,
        }

    supports_streaming = True

    def stream_builder(self, file: Path) -> tuple[str, dict]:
        if file.suffix.lower() != ".txt":
            return super().stream_builder(file)
        self.text_column = "text"
        return "text", {"sample_by": self.text_file_mode}

    def stream_keeps(self, row: dict[str, Any]) -> bool:
        return bool(str(row.get(self.text_column) or "").strip())

    @property
    def tokenize_is_row_wise(self) -> bool:
        # Group mode joins the documents of a batch into blocks: one process keeps the batches.
        return self.mode != "group"

    def folder_columns(self) -> tuple[str, str | None]:
        # A folder of documents: each file one document, whatever its text_file_mode.
        return self.text_column, None

    def read_file(self, path: str, key: str) -> datasets.Dataset:
        if Path(path).suffix.lower() != ".txt":
            return load_file(path, key)
        file = check_file(path, key)
        dataset = datasets.load_dataset(
            "text", data_files=str(file), split="train", sample_by=self.text_file_mode
        )
        self.text_column = "text"
        # Blank lines in a text file are layout, not examples: dropped without a report.
        total = len(dataset)
        dataset = dataset.filter(lambda row: bool(row["text"].strip()))
        if len(dataset) == 0:
            raise LmforgeError(
                f"{key}={path!r}: the file holds no text ({total} {self.text_file_mode}(s), all "
                "blank or whitespace); expected at least one line of text."
            )
        return dataset

    def check_split(self, split: str, dataset: datasets.Dataset) -> None:
        require_columns(dataset, {"text_column": self.text_column}, split, self.source_of(split))

    def empty_rows(self, split: str, dataset: datasets.Dataset) -> tuple[list[int], str]:
        empty = [
            i
            for i, text in enumerate(dataset[self.text_column])
            if text is None or not str(text).strip()
        ]
        return empty, f"an empty or missing text in column {self.text_column!r}"

    def row_texts(self, dataset: datasets.Dataset) -> list[str]:
        return [str(t) for t in dataset[self.text_column]]

    def encode_targets(self, raw: datasets.DatasetDict) -> tuple[datasets.DatasetDict, dict]:
        for split, dataset in raw.items():
            keep = [c for c in dataset.column_names if c != self.text_column]
            raw[split] = dataset.remove_columns(keep)
        return raw, {"objective": self.objective, "mode": self.mode}

    def tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        tokenizer = cast(PreTrainedTokenizerBase, self.tokenizer)  # loaded before tokenizing
        texts = [str(t) for t in batch[self.text_column]]
        masked = self.objective == "masked"
        wants_offsets = masked and self.whole_word_mask
        if self.mode == "truncate":
            encoded = tokenizer(
                texts,
                truncation=True,
                max_length=self.block_size,
                return_special_tokens_mask=masked,
                return_offsets_mapping=wants_offsets,
            )
            out = {"input_ids": encoded["input_ids"]}
            if masked:
                out["special_tokens_mask"] = encoded["special_tokens_mask"]
            if wants_offsets:
                out["offset_mapping"] = [
                    [list(o) for o in row] for row in encoded["offset_mapping"]
                ]
            out["_truncated"] = [bool(e.overflowing) for e in encoded.encodings]
            return out
        # group: whole documents, joined with a separator (masked LM keeps [CLS] ... [SEP])
        encoded = tokenizer(
            texts,
            add_special_tokens=masked,
            return_special_tokens_mask=masked,
            verbose=False,
            return_offsets_mapping=wants_offsets,
        )
        ids = [list(row) for row in encoded["input_ids"]]
        if not masked:
            separator = document_separator(tokenizer)
            ids = [[*row, separator] for row in ids]
        out = {"input_ids": group_blocks(ids, self.block_size)}
        if masked:
            out["special_tokens_mask"] = group_blocks(
                encoded["special_tokens_mask"], self.block_size
            )
        if wants_offsets:
            offsets = [[list(o) for o in row] for row in encoded["offset_mapping"]]
            out["offset_mapping"] = group_blocks(offsets, self.block_size)
        out["_truncated"] = [False] * len(out["input_ids"])
        return out

    def no_examples_reason(self, dataset: datasets.Dataset) -> str:
        if self.mode != "group":
            return super().no_examples_reason(dataset)
        tokenizer = cast(PreTrainedTokenizerBase, self.tokenizer)
        texts = [str(t) for t in dataset[self.text_column]]
        tokens = sum(
            len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]
        )
        return (
            f"With data.mode=group its texts are joined and cut into blocks of "
            f"data.block_size={self.block_size} tokens, and they hold about {tokens:,} tokens, "
            "less than one block (a remainder shorter than a block is dropped). Give that split "
            "more text (a carved split gets data.validation_ratio or data.test_ratio of the "
            "training file), lower data.block_size, or set data.mode=truncate (one example per "
            "document)."
        )

    def after_tokenize(self, split: str, dataset: datasets.Dataset) -> datasets.Dataset:
        """Mask validation and test once, with the run's seed (masked LM only)."""
        if self.objective != "masked" or split == "train":
            return dataset
        collator = self._masking_collator()
        collator.generator = torch.Generator().manual_seed(self.seed)

        def mask(row: dict[str, Any]) -> dict[str, Any]:
            inputs = torch.tensor([row["input_ids"]])
            special = torch.tensor([row["special_tokens_mask"]], dtype=torch.bool)
            offsets = torch.tensor([row["offset_mapping"]]) if self.whole_word_mask else None
            masked, labels = collator.torch_mask_tokens(inputs, special, offsets)
            return {"input_ids": masked[0].tolist(), "labels": labels[0].tolist()}

        dataset = dataset.map(mask, desc=f"Masking {split} (seed {self.seed})")
        drop = [c for c in ("special_tokens_mask", "offset_mapping") if c in dataset.column_names]
        return dataset.remove_columns(drop)

    def _masking_collator(self) -> DataCollatorForLanguageModeling:
        tokenizer = cast(PreTrainedTokenizerBase, self.tokenizer)  # loaded before encoding
        if tokenizer.mask_token is None:
            raise LmforgeError(
                f"model.tokenizer={self.tokenizer_name!r} has no mask token, so it cannot be "
                "used for masked language modelling."
            )
        return DataCollatorForLanguageModeling(
            tokenizer,
            mlm=True,
            mlm_probability=self.mlm_probability,
            whole_word_mask=self.whole_word_mask,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )

    def build_collator(self) -> Callable[..., Any]:
        if self.objective == "causal":
            return CausalCollator(self._ensure_tokenizer(), self.pad_to_multiple_of)
        return self._masking_collator()

    def eval_collator(self) -> Callable[..., Any]:
        if self.objective == "causal":
            return CausalCollator(self._ensure_tokenizer(), self.pad_to_multiple_of)
        # Masking was fixed at preprocessing: pad inputs, and labels with -100.
        return DataCollatorForTokenClassification(
            self._ensure_tokenizer(),
            label_pad_token_id=IGNORE_INDEX,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
