"""Instruction and chat data for causal LMs (supervised fine-tuning): a data format of the
causal-LM family, trained by its module with the loss on the answer tokens only.

Formats (`data.format`):
- `prompt_completion`: a prompt column (or `prompt_template` over named columns, e.g. the
  alpaca layout) and a completion column; the completion and EOS train.
- `messages`: a column of role/content lists (system, user, assistant), multi-turn.
- `sharegpt`: a column of from/value lists (human, gpt, system), converted to messages.
Conversations are rendered with the chat template (see `chat.py`); `train_on` picks the
assistant turns that train (`assistant`: all, `last`: the last one, `all`: every token).
"""

from __future__ import annotations

import logging
import string
from collections.abc import Callable
from typing import Any, cast

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from lmforge.data.datamodule import TextDataModule
from lmforge.data.labels import IGNORE_INDEX
from lmforge.data.sources import require_columns
from lmforge.errors import LmforgeError
from lmforge.tasks.language_modeling.chat import (
    TRAIN_ON,
    Encoded,
    Span,
    as_messages,
    assistant_spans,
    chat_template_of,
    drop_first_turns,
    encode_spans,
    marked_text,
)
from lmforge.tasks.language_modeling.data import CausalCollator

log = logging.getLogger(__name__)

FORMATS = ("prompt_completion", "messages", "sharegpt")
TRUNCATION = ("drop_turns", "drop")


def template_fields(template: str) -> list[str]:
    """The column names a prompt template names (`{instruction}` -> instruction)."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


class InstructionDataModule(TextDataModule):
    """Supervised fine-tuning data: prompts/conversations with the answers that train.

    Args:
        format: prompt_completion, messages or sharegpt.
        prompt_column, completion_column: prompt_completion's columns.
        prompt_template: a Python format string over columns, used instead of prompt_column
            ("### Instruction:\\n{instruction}\\n\\n### Response:\\n").
        messages_column: the conversation column of messages and sharegpt data.
        system_prompt: a system message put first in conversations that have none.
        chat_template: a jinja template file; null: the tokenizer's own, else lmforge's plain
            one. The run's tokenizer is saved with the template, so predict and export use it.
        apply_chat_template: prompt_completion rows render as a user turn (the prompt) and an
            assistant turn (the completion) through the chat template, as an instruct model
            was trained to read them; false: prompt + completion + EOS as plain text.
        train_on: assistant (every assistant turn), last (the last one) or all (every token).
        truncation: a sequence over max_length drops its first exchanges (keeping the system
            message) until it fits (`drop_turns`), or is left out (`drop`).
        show_labels: examples printed with their trained tokens marked (lmforge-check).
        packing: training batches hold several examples per sequence, each attending only to
            itself (see `pack_examples`); validation and test stay one example per sequence.
        score_answers: every example carries the token span of its first trained answer
            (`answer_span`), which the module generates from the conversation before it and
            scores by exact match and token F1 (`answer_exact_match`, `answer_f1`).
    """

    def __init__(
        self,
        *,
        format: str = "messages",
        prompt_column: str = "prompt",
        completion_column: str = "completion",
        prompt_template: str | None = None,
        messages_column: str = "messages",
        system_prompt: str | None = None,
        chat_template: str | None = None,
        apply_chat_template: bool = False,
        train_on: str = "assistant",
        truncation: str = "drop_turns",
        show_labels: int = 0,
        packing: bool = False,
        score_answers: bool = True,
        max_length: int = 512,
        **kwargs: Any,
    ) -> None:
        super().__init__(max_length=max_length, **kwargs)
        for key, value, allowed in (
            ("format", format, FORMATS),
            ("train_on", train_on, TRAIN_ON),
            ("truncation", truncation, TRUNCATION),
        ):
            if value not in allowed:
                raise LmforgeError(f"data.{key}={value!r}; expected one of {', '.join(allowed)}.")
        self.format = format
        self.prompt_column = prompt_column
        self.completion_column = completion_column
        # A shell passes "\n" typed in a template as a backslash and an n: a line break meant.
        self.prompt_template = (
            prompt_template.replace("\\n", "\n").replace("\\t", "\t") if prompt_template else None
        )
        self.messages_column = messages_column
        self.system_prompt = system_prompt or None
        self.chat_template_path = chat_template
        self.apply_chat_template = bool(apply_chat_template)
        self.train_on = train_on
        self.truncation = truncation
        self.show_labels = int(show_labels or 0)
        self.packing = bool(packing)
        self.score_answers = bool(score_answers)
        self.template: str | None = None
        self._counts: dict[str, dict[str, int]] = {}

    @property
    def chat_rendered(self) -> bool:
        """Whether examples render through a chat template (conversations always do)."""
        return self.format != "prompt_completion" or self.apply_chat_template

    # ----- the tokenizer: an EOS to train, and the template it is saved with -------------------
    def _ensure_tokenizer(self) -> PreTrainedTokenizerBase:
        if self.tokenizer is not None:
            return self.tokenizer
        tokenizer = super()._ensure_tokenizer()
        if tokenizer.eos_token is None:
            if tokenizer.sep_token is None:
                raise LmforgeError(
                    f"The tokenizer {self.tokenizer_name!r} has no EOS (or SEP) token to end "
                    "answers with; a model that never sees one never learns to stop."
                )
            # WordPiece vocabularies end segments with [SEP]: it ends answers here.
            tokenizer.eos_token = tokenizer.sep_token
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token  # labels are explicit: EOS still trains
        if self.chat_rendered:
            self.template = chat_template_of(tokenizer, self.chat_template_path)
            tokenizer.chat_template = self.template
        return tokenizer

    def run_settings(self) -> dict[str, Any]:
        column = self.prompt_column if self.format == "prompt_completion" else "text"
        return {
            **super().run_settings(),
            "text_column": column,
            # Not `format`: an export's lmforge.json uses that key for its own format.
            "data_format": self.format,
            "apply_chat_template": self.chat_rendered,
            "prompt_template": self.prompt_template,
            "system_prompt": self.system_prompt,
        }

    def preprocessing_settings(self) -> dict[str, Any]:
        return {
            **super().preprocessing_settings(),
            "format": self.format,
            "columns": [self.prompt_column, self.completion_column, self.messages_column],
            "prompt_template": self.prompt_template,
            "system_prompt": self.system_prompt,
            "chat_template": self.chat_template_path,
            "apply_chat_template": self.apply_chat_template,
            "train_on": self.train_on,
            "truncation": self.truncation,
            "show_labels": self.show_labels,
            "score_answers": self.score_answers,
        }

    # ----- reading rows ------------------------------------------------------------------------
    def _columns(self) -> dict[str, str]:
        if self.format != "prompt_completion":
            return {"messages_column": self.messages_column}
        if self.prompt_template:
            return {
                f"prompt_template field {{{f}}}": f for f in template_fields(self.prompt_template)
            } | {"completion_column": self.completion_column}
        return {"prompt_column": self.prompt_column, "completion_column": self.completion_column}

    def check_split(self, split: str, dataset: datasets.Dataset) -> None:
        require_columns(dataset, self._columns(), split, self.source_of(split))

    def empty_rows(self, split: str, dataset: datasets.Dataset) -> tuple[list[int], str]:
        if self.format != "prompt_completion":
            rows = dataset[self.messages_column]
            return [i for i, r in enumerate(rows) if not r], f"no turns in {self.messages_column!r}"
        prompts = self._prompts(dataset)
        return [i for i, p in enumerate(prompts) if not p.strip()], "an empty prompt"

    def _prompts(self, dataset: datasets.Dataset) -> list[str]:
        if not self.prompt_template:
            return ["" if p is None else str(p) for p in dataset[self.prompt_column]]
        fields = template_fields(self.prompt_template)
        columns = {f: dataset[f] for f in fields}
        return [
            self.prompt_template.format(
                **{f: "" if columns[f][i] is None else columns[f][i] for f in fields}
            )
            for i in range(len(dataset))
        ]

    def row_texts(self, dataset: datasets.Dataset) -> list[str]:
        return [str(t) for t in dataset["example"]]

    def encode_targets(self, raw: datasets.DatasetDict) -> tuple[datasets.DatasetDict, dict]:
        """Every split as `example`: a checked conversation (JSON-ready messages) or a
        prompt/completion pair, one per row."""
        encoded = {}
        for split, dataset in raw.items():
            source = self.source_of(split)
            examples = []
            if self.format == "prompt_completion":
                completions = dataset[self.completion_column]
                for row, (prompt, completion) in enumerate(
                    zip(self._prompts(dataset), completions, strict=True), 1
                ):
                    if completion is None or not str(completion).strip():
                        raise LmforgeError(
                            f"The {split} split ({source}), row {row}: the completion "
                            f"({self.completion_column!r}) is empty; the model would learn to "
                            "answer with nothing."
                        )
                    system = (
                        [{"role": "system", "content": self.system_prompt}]
                        if self.system_prompt and self.apply_chat_template
                        else []
                    )
                    examples.append(
                        [
                            *system,
                            {"role": "user", "content": prompt},
                            {"role": "assistant", "content": str(completion)},
                        ]
                    )
            else:
                sharegpt = self.format == "sharegpt"
                for row, value in enumerate(dataset[self.messages_column], 1):
                    where = f"The {split} split ({source}), row {row}"
                    messages = as_messages(value, where, self.messages_column, sharegpt)
                    if self.system_prompt and messages[0]["role"] != "system":
                        messages = [{"role": "system", "content": self.system_prompt}, *messages]
                    examples.append(messages)
            encoded[split] = datasets.Dataset.from_dict({"example": examples})
        return datasets.DatasetDict(encoded), {"format": self.format}

    # ----- tokens and labels -------------------------------------------------------------------
    def _rendered(self, messages: list[dict[str, str]]) -> tuple[str, list[Span], Span | None]:
        """One example's text, the character spans that train, and the span of the answer
        scored by generation (the first trained answer; with train_on=all, the first
        assistant turn)."""
        tokenizer = self._ensure_tokenizer()
        if not self.chat_rendered:
            prompt, completion = messages[0]["content"], messages[1]["content"]
            text = prompt + completion + str(tokenizer.eos_token)
            return text, [(len(prompt), len(text))], (len(prompt), len(text))
        template = cast(str, self.template)
        text, spans = assistant_spans(tokenizer, messages, template, self.train_on)
        answers = (
            assistant_spans(tokenizer, messages, template, "assistant")[1]
            if self.train_on == "all"
            else spans
        )
        return text, spans, answers[0] if answers else None

    def encode_example(self, messages: list[dict[str, str]]) -> Encoded:
        """One example's tokens and trained mask (no truncation)."""
        text, spans, _ = self._rendered(messages)
        return encode_spans(self._ensure_tokenizer(), text, spans)

    def _encoded_with_answer(self, messages: list[dict[str, str]]) -> tuple[Encoded, list[int]]:
        """An example's tokens and trained mask, and the [start, end) token span of its scored
        answer ([0, 0] without one)."""
        text, spans, answer = self._rendered(messages)
        encoded = encode_spans(self._ensure_tokenizer(), text, spans)
        inside = [
            i
            for i, (start, _) in enumerate(encoded.offsets)
            if answer is not None and answer[0] <= start < answer[1]
        ]
        # Tokens start inside a span in one run: the answer's text is contiguous.
        return encoded, [inside[0], inside[-1] + 1] if inside else [0, 0]

    def tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        tokenizer = cast(PreTrainedTokenizerBase, self.tokenizer)
        out: dict[str, list] = {
            k: [] for k in ("input_ids", "labels", "answer_span", "_truncated", "_dropped", "_eos")
        }
        out["_trained"] = []
        for messages in batch["example"]:
            (encoded, answer), dropped_turns = self._encoded_with_answer(messages), False
            while len(encoded.input_ids) > self.max_length and self.truncation == "drop_turns":
                shorter = drop_first_turns(messages) if self.format != "prompt_completion" else None
                if shorter is None:
                    break
                messages, dropped_turns = shorter, True
                encoded, answer = self._encoded_with_answer(messages)
            too_long = len(encoded.input_ids) > self.max_length
            labels = [
                t if keep else IGNORE_INDEX
                for t, keep in zip(encoded.input_ids, encoded.trained, strict=True)
            ]
            out["input_ids"].append(encoded.input_ids[: self.max_length])
            out["labels"].append(labels[: self.max_length])
            out["answer_span"].append(answer)
            out["_truncated"].append(dropped_turns)
            out["_dropped"].append(too_long)
            out["_eos"].append(
                tokenizer.eos_token_id
                in [t for t, keep in zip(encoded.input_ids, encoded.trained, strict=True) if keep]
            )
            out["_trained"].append(any(encoded.trained))
        if not self.score_answers:
            del out["answer_span"]
        return out

    def after_tokenize(self, split: str, dataset: datasets.Dataset) -> datasets.Dataset:
        """Leave out sequences still too long and those with nothing to train; count both and
        refuse training data whose labels never hold the EOS token."""
        dropped = dataset["_dropped"]
        trained = dataset["_trained"]
        eos = dataset["_eos"]
        keep = [i for i in range(len(dataset)) if not dropped[i] and trained[i]]
        counts = {
            "dropped_too_long": int(sum(dropped)),
            "no_trained_tokens": sum(
                1 for i in range(len(dataset)) if not dropped[i] and not trained[i]
            ),
            "eos_trained": sum(1 for i in keep if eos[i]),
            "kept": len(keep),
        }
        self._counts[split] = counts
        if split == "train" and keep and counts["eos_trained"] == 0:
            tokenizer = cast(PreTrainedTokenizerBase, self.tokenizer)
            raise LmforgeError(
                f"No training example trains the EOS token {tokenizer.eos_token!r}: the model "
                "would never learn to stop. The chat template must end assistant turns with "
                "the tokenizer's EOS token (lmforge's plain template does; see "
                "data.chat_template), or the completions must be followed by it."
            )
        if not keep:
            raise LmforgeError(
                f"The {split} split has no example left to train on: {counts['dropped_too_long']} "
                f"are longer than data.max_length={self.max_length} tokens and "
                f"{counts['no_trained_tokens']} have no trained token."
            )
        dataset = dataset.select(keep).remove_columns(["_dropped", "_eos", "_trained"])
        # Each example's place in its split: which answers validation scores, and which
        # reference log-probabilities a preference pair has.
        return dataset.add_column("row", list(range(len(dataset))))

    # Conversations are tokenized one by one; packing packs each batch the stream is read in.
    supports_streaming = True

    def stream_examples(self, encoded: dict[str, list]) -> dict[str, list]:
        """`after_tokenize` and packing on a batch of the stream: sequences too long or with
        nothing to train left out, and with packing, the batch's examples packed together (the
        map-style split packs all of its examples at once; a stream packs the 1,000 rows
        `datasets` maps at a time)."""
        keep = [
            i
            for i, (dropped, trained) in enumerate(
                zip(encoded["_dropped"], encoded["_trained"], strict=True)
            )
            if not dropped and trained
        ]
        rows = {key: [encoded[key][i] for i in keep] for key in ("input_ids", "labels")}
        if self.packing and keep:
            rows = pack_examples(datasets.Dataset.from_dict(rows), self.max_length).to_dict()
            rows.pop("length")
        return rows

    def _capped(self, split: str, dataset: datasets.Dataset) -> datasets.Dataset:
        """The capped split; with packing, the capped training examples packed (caps count
        examples either way)."""
        dataset = super()._capped(split, dataset)
        if self.packing and split == "train" and "input_ids" in dataset.column_names:
            packed = pack_examples(dataset, self.max_length)
            log.info(
                "Packing: %d training examples in %d sequences of up to %d tokens "
                "(%.1f%% of their tokens are examples' own).",
                len(dataset),
                len(packed),
                self.max_length,
                100 * sum(dataset["length"]) / max(len(packed) * self.max_length, 1),
            )
            return packed
        return dataset

    def _data_checks(
        self, raw: datasets.DatasetDict, stats: dict[str, dict], meta: dict[str, Any]
    ) -> dict[str, Any]:
        report = super()._data_checks(raw, stats, meta)
        for split, counts in self._counts.items():
            report["splits"][split]["sequences"] = counts
            report["notes"].append(
                f"{split}: {counts['kept']} sequences train; {stats[split]['truncated']} lost "
                f"their first exchanges to data.max_length={self.max_length}, "
                f"{counts['dropped_too_long']} were too long even so and "
                f"{counts['no_trained_tokens']} had no trained token (both left out)"
            )
            lost = counts["dropped_too_long"] + counts["no_trained_tokens"]
            if lost:
                report["warnings"].append(
                    f"{split}: {lost} sequence(s) left out ({counts['dropped_too_long']} over "
                    f"data.max_length={self.max_length} tokens, {counts['no_trained_tokens']} "
                    "with no trained token)."
                )
        if self.show_labels and "train" in raw:
            for messages in raw["train"]["example"][: self.show_labels]:
                encoded = self.encode_example(messages)
                report["notes"].append("trained tokens between ⟦ ⟧:\n" + marked_text(encoded))
        return report

    def build_collator(self) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
        # Padding is left out by the attention mask, the prompts by the labels set per token,
        # so an EOS used as pad still trains where it ends an answer.
        return CausalCollator(
            cast(PreTrainedTokenizerBase, self.tokenizer), self.pad_to_multiple_of
        )


def pack_examples(dataset: datasets.Dataset, max_length: int) -> datasets.Dataset:
    """Examples packed into sequences of at most `max_length` tokens, without cross-talk.

    Longest first, each into the open sequence with the most room left (a heap: n log n).
    A packed sequence carries `position_ids` that restart at 0 for every example: transformers
    builds a block-diagonal causal mask from them when no attention mask is given, on every
    attention implementation, so each token attends only to its own example (written here
    because transformers' flattening collator packs a batch with no length bound, and TRL's
    packing needs FlashAttention for the same isolation). The first token of each example is
    no target (it would be predicted from the previous example's end), as in an unpacked batch.
    """
    import heapq

    ids, labels = dataset["input_ids"], dataset["labels"]
    lengths = [len(row) for row in ids]
    order = sorted(range(len(dataset)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    rooms: list[tuple[int, int]] = []  # (-room left, bin index)
    for index in order:
        if rooms and -rooms[0][0] >= lengths[index]:
            room, b = heapq.heappop(rooms)
            bins[b].append(index)
            heapq.heappush(rooms, (room + lengths[index], b))
        else:
            bins.append([index])
            heapq.heappush(rooms, (-(max_length - lengths[index]), len(bins) - 1))
    packed: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": [], "length": []}
    for members in bins:
        members.sort()  # examples in data order within a sequence
        row_ids: list[int] = []
        row_labels: list[int] = []
        row_positions: list[int] = []
        for index in members:
            row_ids.extend(ids[index])
            row_labels.extend([IGNORE_INDEX, *labels[index][1:]])
            row_positions.extend(range(len(ids[index])))
        packed["input_ids"].append(row_ids)
        packed["labels"].append(row_labels)
        packed["position_ids"].append(row_positions)
        packed["length"].append(len(row_ids))
    return datasets.Dataset.from_dict(packed)


@torch.no_grad()
def packing_leak(model: Any, options: dict[str, Any]) -> float:
    """How much an example's logits change when another example is packed before it (0 for
    a model that isolates packed examples), on two short random sequences in float32."""
    vocabulary = int(model.config.vocab_size)
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(vocabulary, (1, 5), generator=generator)
    second = torch.randint(vocabulary, (1, 4), generator=generator)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(device_type=device.type, enabled=False):
            alone = model(
                input_ids=second.to(device),
                position_ids=torch.arange(4, device=device)[None],
                **options,
            ).logits
            packed = model(
                input_ids=torch.cat([first, second], dim=1).to(device),
                position_ids=torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]], device=device),
                **options,
            ).logits[:, 5:]
    finally:
        model.train(was_training)
    return float((alone.float() - packed.float()).abs().max())
