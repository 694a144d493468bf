"""Preference data and the DPO / IPO losses: a causal LM learns to prefer one answer to another.

Each row holds a prompt and two answers, `chosen` and `rejected` (strings), or `chosen` and
`rejected` conversations that share everything but their last assistant turn. Both are
rendered with the run's chat template (the tokenizer's own, a user's file, or lmforge's plain
one) exactly as instruction data is, and the prompt's tokens must be the same leading tokens of
both (checked). Only the answer tokens count in a sequence's log-probability.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import datasets
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from lmforge.data.labels import IGNORE_INDEX
from lmforge.errors import LmforgeError
from lmforge.tasks.language_modeling.chat import as_messages, encode_spans, render
from lmforge.tasks.language_modeling.data import CausalCollator
from lmforge.tasks.language_modeling.instructions import InstructionDataModule

LOSSES = ("dpo", "ipo")
SIDES = ("chosen", "rejected")


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of each row's labelled tokens (the model shifts by one):
    logits (rows, seq, vocab), labels (rows, seq) with IGNORE_INDEX elsewhere -> (rows,)."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != IGNORE_INDEX
    picked = torch.gather(
        F.log_softmax(logits, dim=-1), 2, labels.clamp(min=0).unsqueeze(-1)
    ).squeeze(-1)  # (rows, seq - 1)
    return (picked * mask).sum(dim=-1)


def preference_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
    loss: str = "dpo",
) -> torch.Tensor:
    """Per-pair loss from summed log-probabilities of the policy and the reference.

    DPO: -log sigmoid(beta * h); IPO: (h - 1 / (2 beta))^2, where
    h = (chosen - rejected) - (reference_chosen - reference_rejected).
    """
    h = (chosen - rejected) - (reference_chosen - reference_rejected)
    if loss == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    return -F.logsigmoid(beta * h)


def _same_answer(chosen: Any, rejected: Any) -> bool:
    """Whether two answers (strings, or conversations ending in the answer) are the same, up to
    runs of whitespace."""
    if isinstance(chosen, str) and isinstance(rejected, str):
        return chosen.split() == rejected.split()
    return chosen == rejected


class PreferenceDataModule(InstructionDataModule):
    """Prompt + chosen + rejected answers, tokenized as two sequences sharing the prompt.

    Args:
        prompt_column, chosen_column, rejected_column: the columns. A prompt string becomes a
            user turn (after `system_prompt`, if set); chosen/rejected strings become the
            assistant's answer. Chosen and rejected may also hold whole conversations
            (role/content lists) that differ only in their last assistant turn; beside a
            prompt column, their last user turn must be that prompt. Pairs whose two answers
            are the same are dropped and counted (refused with `data.drop_empty=false`).
    The other options are those of `InstructionDataModule` (template, max_length, ...).
    """

    # Reference log-probabilities are computed once over the whole training split.
    supports_streaming = False

    def __init__(
        self,
        *,
        prompt_column: str = "prompt",
        chosen_column: str = "chosen",
        rejected_column: str = "rejected",
        **kwargs: Any,
    ) -> None:
        kwargs.pop("packing", None)  # a pair is two sequences: never packed
        kwargs.pop("format", None)  # pairs are conversations, rendered with the chat template
        super().__init__(format="messages", prompt_column=prompt_column, **kwargs)
        self.chosen_column = chosen_column
        self.rejected_column = rejected_column

    def run_settings(self) -> dict[str, Any]:
        return {**super().run_settings(), "data_format": "messages", "text_column": "text"}

    def preprocessing_settings(self) -> dict[str, Any]:
        return {
            **super().preprocessing_settings(),
            "pair_columns": [self.prompt_column, self.chosen_column, self.rejected_column],
        }

    def _columns(self) -> dict[str, str]:
        return {"chosen_column": self.chosen_column, "rejected_column": self.rejected_column}

    def _has_prompt(self, dataset: datasets.Dataset) -> bool:
        return bool(self.prompt_column) and self.prompt_column in dataset.column_names

    def empty_rows(self, split: str, dataset: datasets.Dataset) -> tuple[list[int], str]:
        columns = [self.chosen_column, self.rejected_column]
        if self._has_prompt(dataset):
            columns.append(self.prompt_column)
        values = {c: dataset[c] for c in columns}
        chosen, rejected = values[self.chosen_column], values[self.rejected_column]
        empty = [
            i
            for i in range(len(dataset))
            if any(not values[c][i] or not str(values[c][i]).strip() for c in columns)
            # The same answer on both sides gives no gradient and no preference to learn.
            or _same_answer(chosen[i], rejected[i])
        ]
        return empty, (
            f"an empty {' / '.join(map(repr, columns))}, or the same {self.chosen_column!r} and "
            f"{self.rejected_column!r} answer (nothing to prefer)"
        )

    def row_texts(self, dataset: datasets.Dataset) -> list[str]:
        return [str(pair[0]) for pair in dataset["example"]]

    def encode_targets(self, raw: datasets.DatasetDict) -> tuple[datasets.DatasetDict, dict]:
        """Every split as `example`: [chosen conversation, rejected conversation], checked to
        differ only in the last assistant turn."""
        encoded = {}
        for split, dataset in raw.items():
            source = self.source_of(split)
            pairs = []
            prompts = dataset[self.prompt_column] if self._has_prompt(dataset) else None
            for row in range(len(dataset)):
                where = f"The {split} split ({source}), row {row + 1}"
                sides = []
                for column in (self.chosen_column, self.rejected_column):
                    value = dataset[column][row]
                    if prompts is not None and isinstance(value, str):
                        messages = [
                            {"role": "user", "content": str(prompts[row])},
                            {"role": "assistant", "content": value},
                        ]
                    else:
                        messages = as_messages(value, f"{where}, {column!r}", column, False)
                        if prompts is not None:
                            self._check_prompt(messages, str(prompts[row]), f"{where}, {column!r}")
                    if self.system_prompt and messages[0]["role"] != "system":
                        messages = [{"role": "system", "content": self.system_prompt}, *messages]
                    if messages[-1]["role"] != "assistant":
                        raise LmforgeError(
                            f"{where}: the {column!r} conversation does not end with an "
                            "assistant turn (the answer being compared)."
                        )
                    sides.append(messages)
                if sides[0][:-1] != sides[1][:-1]:
                    raise LmforgeError(
                        f"{where}: the chosen and rejected conversations differ before their "
                        "last assistant turn; a preference pair compares two answers to one "
                        "prompt."
                    )
                pairs.append(sides)
            encoded[split] = datasets.Dataset.from_dict({"example": pairs})
        return datasets.DatasetDict(encoded), {"format": "preferences"}

    def _check_prompt(self, messages: list[dict[str, str]], prompt: str, where: str) -> None:
        """A conversation given beside a prompt column (the layout of ultrafeedback_binarized)
        must ask that prompt in the user turn before its answer."""
        asked = [m["content"] for m in messages[:-1] if m["role"] == "user"]
        if not asked or " ".join(asked[-1].split()) != " ".join(prompt.split()):
            found = repr(asked[-1][:80]) if asked else "no user turn"
            raise LmforgeError(
                f"{where}: with a {self.prompt_column!r} column, a conversation in "
                f"{self.chosen_column!r}/{self.rejected_column!r} must ask that prompt in its "
                f"last user turn before the answer; found {found}, expected "
                f"{prompt[:80]!r}. Give the answers as strings beside the prompt, or read the "
                "whole conversations alone with data.prompt_column=null."
            )

    def _side(self, messages: list[dict[str, str]]) -> tuple[list[int], list[int], int]:
        """One side's tokens, its labels (the last answer and its EOS) and the prompt length."""
        tokenizer = self._ensure_tokenizer()
        template = cast(str, self.template)
        prompt = render(tokenizer, messages[:-1], template, add_generation_prompt=True)
        full = render(tokenizer, messages, template)
        if not full.startswith(prompt):
            raise LmforgeError(
                "The chat template renders the answer's conversation with a different "
                "beginning than its prompt; give a template whose prompts are prefixes "
                "(data.chat_template=path.jinja)."
            )
        encoded = encode_spans(tokenizer, full, [(len(prompt), len(full))])
        prompt_length = len(encode_spans(tokenizer, prompt, []).input_ids)
        labels = [
            t if keep else IGNORE_INDEX
            for t, keep in zip(encoded.input_ids, encoded.trained, strict=True)
        ]
        return encoded.input_ids, labels, prompt_length

    def tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        tokenizer = cast(PreTrainedTokenizerBase, self.tokenizer)
        out: dict[str, list] = {
            k: []
            for k in (
                "chosen_input_ids",
                "chosen_labels",
                "rejected_input_ids",
                "rejected_labels",
                "length",
                "_truncated",
                "_dropped",
                "_eos",
                "_trained",
            )
        }
        for chosen, rejected in batch["example"]:
            chosen_ids, chosen_labels, prompt_length = self._side(chosen)
            rejected_ids, rejected_labels, _ = self._side(rejected)
            if chosen_ids[:prompt_length] != rejected_ids[:prompt_length]:
                raise LmforgeError(
                    "A preference pair's chosen and rejected sequences do not start with the "
                    f"same prompt tokens (prompt: {chosen[-2]['content'][:60]!r}): the "
                    "tokenizer merges the prompt's end with the answers' first characters. "
                    "End the prompt (or the template's generation prompt) with a space or a "
                    "line break."
                )
            out["chosen_input_ids"].append(chosen_ids)
            out["chosen_labels"].append(chosen_labels)
            out["rejected_input_ids"].append(rejected_ids)
            out["rejected_labels"].append(rejected_labels)
            longest = max(len(chosen_ids), len(rejected_ids))
            out["length"].append(longest)  # what batches are grouped and capped by
            out["_truncated"].append(False)
            out["_dropped"].append(longest > self.max_length)
            ends = [
                tokenizer.eos_token_id in [t for t in labels if t != IGNORE_INDEX]
                for labels in (chosen_labels, rejected_labels)
            ]
            out["_eos"].append(all(ends))
            out["_trained"].append(
                any(t != IGNORE_INDEX for t in chosen_labels)
                and any(t != IGNORE_INDEX for t in rejected_labels)
            )
        return out

    def encode_example(self, messages: Any) -> Any:
        """The chosen side of a pair (what lmforge-check's show_labels prints)."""
        from lmforge.tasks.language_modeling.chat import assistant_spans

        tokenizer = self._ensure_tokenizer()
        chosen = messages[0]
        text, spans = assistant_spans(tokenizer, chosen, cast(str, self.template), "last")
        return encode_spans(tokenizer, text, spans)

    def build_collator(self) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
        return PairCollator(cast(PreTrainedTokenizerBase, self.tokenizer), self.pad_to_multiple_of)


class PairCollator:
    """Pads the chosen and rejected sequences of a batch into one batch of 2 x rows (chosen
    first), with the row ids that index the reference log-probabilities."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None) -> None:
        self.collate = CausalCollator(tokenizer, pad_to_multiple_of)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sides = [
            {"input_ids": e[f"{side}_input_ids"], "labels": e[f"{side}_labels"]}
            for side in SIDES
            for e in examples
        ]
        batch = self.collate(sides)
        batch["row"] = torch.tensor([e["row"] for e in examples])
        return batch
