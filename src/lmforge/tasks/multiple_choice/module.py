"""Multiple choice: pick the answer among a question's choices.

- `scorer=head`: an encoder with a multiple-choice head (`AutoModelForMultipleChoice`) scores
  each (question, choice) pair; a softmax over the question's real choices picks one.
- `scorer=causal`: a causal LM scores each choice by its log-probability as the continuation
  of the question in `pattern` (through the chat template with `chat_template=true`), the mean
  over its tokens (`normalize=mean`) or the sum. No head: the untouched model's accuracy is the
  zero-shot 'before' column, and training minimises the cross-entropy of those scores.

Padded choices (a batch's rows have different numbers) score -inf and never win.
"""

from __future__ import annotations

import logging
import string
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lmforge.data.datamodule import TextDataModule
from lmforge.data.splits import Stage
from lmforge.errors import LmforgeError
from lmforge.evaluation.continuations import NORMALIZE, chat_pattern, continuation_scores
from lmforge.tasks.base import TaskModule
from lmforge.tasks.multiple_choice.data import MultipleChoiceDataModule, position_name

log = logging.getLogger(__name__)

SCORERS = ("head", "causal")
QUESTION_FIELD = "question"


def check_pattern(pattern: str) -> None:
    """A causal pattern holds `{question}` once and no other field."""
    fields = [name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None]
    if fields != [QUESTION_FIELD]:
        raise LmforgeError(
            f"model.pattern={pattern!r} must hold the field {{{QUESTION_FIELD}}} exactly once "
            f"and no other (found {', '.join('{' + f + '}' for f in fields) or 'none'}), e.g. "
            "'Question: {question}\\nAnswer:'"
        )


class ChoiceScorer:
    """Causal scoring of choices: the pattern's tokens around a question's, each choice's tokens
    where the answer goes, and their log-likelihood.

    Args:
        tokenizer: the model's tokenizer.
        pattern: the text around `{question}`; the answer follows it.
        chat_template: render the pattern as a user turn; the answer starts the reply.
        normalize: mean or sum of a choice's token log-probabilities.
        max_length: the longest sequence the model is given.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        pattern: str,
        chat_template: bool,
        normalize: str,
        max_length: int,
    ) -> None:
        check_pattern(pattern)
        self.tokenizer = tokenizer
        self.normalize = normalize
        self.max_length = max_length
        self.device: Any = "cpu"
        if chat_template:
            before, after = chat_pattern(tokenizer, pattern, QUESTION_FIELD)
            self.spaced = False  # the reply starts bare
        else:
            before, _, after = pattern.partition("{question}")
            self.spaced = not pattern[-1:].isspace()
        self.prefix, self.suffix = self._ids(before), self._ids(after)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.special_ids = set(tokenizer.all_special_ids)

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def choice_ids(self, choice: str) -> list[int]:
        """A choice's tokens where it stands: after a space unless the pattern ends in one or
        a chat reply starts with it."""
        return self._ids((" " if self.spaced else "") + choice.strip())

    def scores(
        self, model: Any, questions: list[list[int]], choices: list[list[list[int]]]
    ) -> torch.Tensor:
        """(questions, most choices) scores; -inf past a question's last choice. A question is
        cut to leave room for the pattern and its longest choice."""
        prompts = []
        for question, own in zip(questions, choices, strict=True):
            room = self.max_length - len(self.prefix) - len(self.suffix) - max(map(len, own))
            if room < 1:
                raise LmforgeError(
                    f"model.pattern and the longest choice take {self.max_length - room} tokens, "
                    f"leaving no room for the question in {self.max_length} (data.max_length); "
                    "raise data.max_length or shorten the pattern."
                )
            prompts.append([*self.prefix, *question[:room], *self.suffix])
        return continuation_scores(
            model, prompts, choices, self.pad_id, self.device, self.normalize
        )

    def split_pairs(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[list[list[int]], list[list[list[int]]]]:
        """The question tokens and each choice's tokens of a batch tokenized as pairs (the
        choice part decoded and tokenized again where the answer stands in the pattern)."""
        questions: list[list[int]] = []
        choices: list[list[list[int]]] = []
        for ids, mask, starts, real in zip(
            batch["input_ids"],
            batch["attention_mask"],
            batch["choice_start"],
            batch["choice_mask"],
            strict=True,
        ):
            own = []
            for c in range(int(real.sum())):
                tokens = ids[c][mask[c].bool()].tolist()
                start = int(starts[c])
                if c == 0:
                    questions.append(self._strip(tokens[:start]))
                text = self.tokenizer.decode(self._strip(tokens[start:]))
                own.append(self.choice_ids(str(text)) or [self.pad_id])
            choices.append(own)
        return questions, choices

    def _strip(self, ids: list[int]) -> list[int]:
        return [i for i in ids if i not in self.special_ids]


class MultipleChoiceModule(TaskModule):
    """A question's choices scored by a multiple-choice head or a causal LM; metrics `acc`
    (the share of questions whose highest-scoring choice is the answer) and `loss`.

    Args:
        scorer: head (`AutoModelForMultipleChoice`) or causal (`AutoModelForCausalLM`, each
            choice's log-likelihood after the question).
        pattern: causal: the text around `{question}` that the answer follows.
        chat_template: causal: the pattern is a user turn of the tokenizer's chat template.
        normalize: causal: mean (length-normalised) or sum of a choice's token log-probs.
        max_length: the longest input the model is given (the data's max_length).
        classifier_dropout: head: dropout before the head (None: the model's own).
    """

    task_name = "multiple_choice"
    labels_per_example = False
    example_metric = "correct"

    def __init__(
        self,
        pretrained: str,
        tokenizer: str | None = None,
        scorer: str = "head",
        pattern: str = "Question: {question}\nAnswer:",
        chat_template: bool = False,
        normalize: str = "mean",
        max_length: int = 256,
        classifier_dropout: float | None = None,
        **kwargs: Any,
    ) -> None:
        for key, value, allowed in (
            ("scorer", scorer, SCORERS),
            ("normalize", normalize, NORMALIZE),
        ):
            if value not in allowed:
                raise LmforgeError(f"model.{key}={value!r}; expected one of {', '.join(allowed)}.")
        if scorer == "causal":
            check_pattern(pattern)
        self.scorer_name = scorer
        self.choice_settings: dict[str, Any] = {
            "scorer": scorer,
            "pattern": pattern,
            "chat_template": bool(chat_template),
            "normalize": normalize,
        }
        self.scorer_max_length = max_length
        self.classifier_dropout = classifier_dropout
        self._scorer: ChoiceScorer | None = None
        self._data: MultipleChoiceDataModule | None = None
        self._examples: dict[str, dict[int, dict[str, Any]]] = {}
        # Per evaluation pass: row -> the choices' probabilities.
        self._gathered: dict[str, dict[int, list[float]]] = {"val": {}, "test": {}}
        self.last_test_records: list[dict[str, Any]] | None = None
        super().__init__(pretrained=pretrained, tokenizer=tokenizer, **kwargs)
        if scorer == "causal":
            log.info("Choices: causal scoring after %r (%s log-probability)", pattern, normalize)

    def build_model(self) -> PreTrainedModel:
        if self.scorer_name == "causal":
            return self.load_pretrained()  # the language model itself scores the choices
        fields = {}
        if self.classifier_dropout is not None:
            fields["classifier_dropout"] = self.classifier_dropout
        return self.load_pretrained(**fields)

    def supports_distillation(self) -> bool:
        return False

    def run_settings(self) -> dict[str, Any]:
        return dict(self.choice_settings)

    def export_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.scorer_name == "causal":
            return batch
        # The texts as the choices of one question: (1, choices, tokens).
        return {name: value.unsqueeze(0) for name, value in batch.items()}

    def attach_data(self, datamodule: TextDataModule) -> None:
        if datamodule is not self._data and isinstance(datamodule, MultipleChoiceDataModule):
            self._data, self._examples = datamodule, {}

    @property
    def scorer(self) -> ChoiceScorer:
        if self._scorer is None:
            from lmforge.data.datamodule import load_tokenizer_for_batching

            hparams: Any = self.hparams
            tokenizer = load_tokenizer_for_batching(hparams.tokenizer or hparams.pretrained)
            settings = self.choice_settings
            self._scorer = ChoiceScorer(
                tokenizer,
                settings["pattern"],
                settings["chat_template"],
                settings["normalize"],
                self.scorer_max_length,
            )
        self._scorer.device = self.device
        return self._scorer

    # ----- forward --------------------------------------------------------------------------------
    def choice_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(batch, most choices) scores, -inf for padded choices."""
        real = batch["choice_mask"]  # (batch, choices)
        if self.scorer_name == "causal":
            questions, choices = self.scorer.split_pairs(batch)
            return self.scorer.scores(self.model, questions, choices)
        # Only the real choices run: (1, real choices, tokens) -> logits (1, real choices).
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in batch]
        inputs = {name: batch[name][real].unsqueeze(0) for name in names}
        logits = self.model(**inputs).logits[0].float()
        scores = torch.full(real.shape, float("-inf"), device=logits.device)
        return scores.masked_scatter(real, logits)

    def forward_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        scores = self.choice_scores(batch)
        return F.cross_entropy(scores, batch["labels"]), scores

    # ----- metrics --------------------------------------------------------------------------------
    def configure_metrics(self, stage: str) -> nn.ModuleDict:
        if stage == "train":
            return nn.ModuleDict()
        return nn.ModuleDict({"acc": MeanMetric()})

    def update_metrics(self, stage: Stage, metrics: Any, outputs: Any, batch: dict) -> None:
        right = (outputs.argmax(dim=-1) == batch["labels"]).float()
        metrics["acc"].update(right)
        if "row" in batch:
            probabilities = outputs.softmax(dim=-1)
            counts = batch["choice_mask"].sum(dim=1).tolist()
            for row, probs, count in zip(batch["row"].tolist(), probabilities, counts, strict=True):
                self._gathered[stage][int(row)] = probs[:count].tolist()

    def compute_metrics(self, stage: Stage, metrics: Any) -> dict[str, torch.Tensor]:
        gathered, self._gathered[stage] = self._gathered[stage], {}
        if not metrics["acc"].update_called:
            return {}
        value = metrics["acc"].compute()
        metrics["acc"].reset()
        if stage == "test" and gathered and self._data is not None:
            self.last_test_records = self._records(gathered)
        return {"acc": value}

    def _records(self, gathered: dict[int, list[float]]) -> list[dict[str, Any]]:
        if "test" not in self._examples and self._data is not None:
            self._examples["test"] = self._data.examples("test")
        examples = self._examples["test"]
        records = []
        for row in sorted(gathered):
            example, probs = examples[row], gathered[row]
            chosen = max(range(len(probs)), key=probs.__getitem__)
            records.append(
                {
                    "question": example["question"],
                    "choices": example["choices"],
                    "answer": example["choices"][example["answer"]],
                    "predicted": example["choices"][chosen],
                    "position": position_name(chosen),
                    "probability": round(probs[chosen], 4),
                    "score": int(chosen == example["answer"]),
                }
            )
        return records

    def test_records(self) -> list[dict[str, Any]] | None:
        return self.last_test_records
