"""Extractive question answering: start and end logits per token (AutoModelForQuestionAnswering).

Validation and test keep their start/end labels, so one pass gives the loss and the answers:
each window's n-best spans are read in the step, and at the end of the epoch the windows of
every question are merged (`spans.best_answer`) and scored by exact match and F1 against the
raw gold answers. With unanswerable questions (v2), the no-answer threshold is tuned on each
validation pass, unless `null_threshold` fixes it; the checkpoint keeps it, so test, predict
and export use the threshold validation chose.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from lmforge.data.datamodule import TextDataModule
from lmforge.data.splits import SPLIT_OF_STAGE, Stage
from lmforge.errors import LmforgeError
from lmforge.tasks.base import TaskModule
from lmforge.tasks.question_answering.data import QuestionAnsweringDataModule
from lmforge.tasks.question_answering.metrics import (
    best_null_threshold,
    best_over_golds,
    squad_scores,
)
from lmforge.tasks.question_answering.spans import (
    WindowSpans,
    best_answer,
    null_positions,
    window_spans,
)

log = logging.getLogger(__name__)

# The threshold of a v2 model before any validation pass has tuned it.
UNTUNED_THRESHOLD = 0.5


class WindowAnswers(nn.Module):
    """The n-best spans of every window of one split, gathered by question (a module, so a
    stage's metric set can hold it; it has no weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.windows: dict[int, list[WindowSpans]] = {}

    def update(self, rows: list[int], spans: list[WindowSpans]) -> None:
        for row, found in zip(rows, spans, strict=True):
            self.windows.setdefault(row, []).append(found)

    def reset(self) -> None:
        self.windows = {}

    def __len__(self) -> int:
        return len(self.windows)


class QuestionAnsweringModule(TaskModule):
    """A pretrained encoder with a span head: start and end logits per token.

    Args:
        version_2_with_negative: questions may have no answer (from the data config).
        n_best: spans kept per window when decoding.
        max_answer_length: the longest answer, in tokens.
        null_threshold: answer "no answer" when its probability is above this (v2 only);
            None: tuned on every validation pass for the best F1.
    """

    task_name = "question_answering"
    example_metric = "f1"

    def __init__(
        self,
        pretrained: str | None,
        tokenizer: str | None = None,
        version_2_with_negative: bool = False,
        n_best: int = 20,
        max_answer_length: int = 30,
        null_threshold: float | None = None,
        **kwargs: Any,
    ) -> None:
        for key, value in (("n_best", n_best), ("max_answer_length", max_answer_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LmforgeError(
                    f"model.{key} must be a whole number of 1 or more, got {value!r}."
                )
        if null_threshold is not None and not 0 <= null_threshold <= 1:
            raise LmforgeError(
                f"model.null_threshold must be in [0, 1] (a no-answer probability) or null "
                f"(tuned on validation), got {null_threshold!r}."
            )
        self.version_2 = bool(version_2_with_negative)
        self.threshold = UNTUNED_THRESHOLD if null_threshold is None else float(null_threshold)
        self.tuned_on: dict[str, Any] | None = None
        self._data: QuestionAnsweringDataModule | None = None
        self._examples: dict[str, dict[int, dict[str, Any]]] = {}
        self.last_test_records: list[dict[str, Any]] | None = None
        super().__init__(pretrained=pretrained, tokenizer=tokenizer, **kwargs)
        self._cls_token_id: int | None = self._read_cls_token_id()

    def build_model(self) -> PreTrainedModel:
        return self.load_pretrained()

    def _read_cls_token_id(self) -> int | None:
        from lmforge.data.tokenization import load_tokenizer

        hparams: Any = self.hparams
        try:
            tokenizer = load_tokenizer(hparams.tokenizer or hparams.pretrained)
        except Exception:  # a checkpoint rebuilt without its tokenizer folder: BERT's [CLS]
            return None
        return tokenizer.cls_token_id

    # ----- loss ---------------------------------------------------------------------------------
    def forward_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        inputs = {
            k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch
        }
        outputs = self.model(
            **inputs, start_positions=batch["start_positions"], end_positions=batch["end_positions"]
        )
        return outputs.loss, outputs

    # ----- answers and metrics ------------------------------------------------------------------
    def configure_metrics(self, stage: str) -> nn.ModuleDict:
        if stage == "train":
            return nn.ModuleDict()
        return nn.ModuleDict({"answers": WindowAnswers()})

    def update_metrics(self, stage: Stage, metrics: Any, outputs: Any, batch: dict) -> None:
        hparams: Any = self.hparams
        spans = window_spans(
            outputs.start_logits,
            outputs.end_logits,
            batch["offsets"],
            batch["attention_mask"],
            null_positions(batch["input_ids"], batch["attention_mask"], self._cls_token_id),
            n_best=int(hparams.n_best),
            max_answer_length=int(hparams.max_answer_length),
        )
        metrics["answers"].update(batch["row"].tolist(), spans)

    def _split_examples(self, stage: str) -> dict[int, dict[str, Any]]:
        split = SPLIT_OF_STAGE[stage]
        if split not in self._examples:
            if self._data is None:
                raise LmforgeError(
                    "QuestionAnsweringModule decodes answers from the contexts of its "
                    "datamodule; run it through a trainer loop given a "
                    "QuestionAnsweringDataModule."
                )
            self._examples[split] = self._data.examples(split)
        return self._examples[split]

    def attach_data(self, datamodule: TextDataModule) -> None:
        if datamodule is not self._data and isinstance(datamodule, QuestionAnsweringDataModule):
            self._data, self._examples = datamodule, {}

    def compute_metrics(self, stage: Stage, metrics: Any) -> dict[str, torch.Tensor]:
        gathered: WindowAnswers = metrics["answers"]
        if not len(gathered):
            return {}
        examples = self._split_examples(stage)
        rows = sorted(gathered.windows)

        def decode() -> dict[int, dict[str, Any]]:
            return {
                row: best_answer(
                    gathered.windows[row], examples[row]["context"], self.version_2, self.threshold
                )
                for row in rows
            }

        decoded = decode()
        tune = self.hparams.get("null_threshold") is None and not self._sanity_checking()
        if self.version_2 and stage == "val" and tune:
            self._tune_threshold(decoded, examples)
            decoded = decode()  # the answers under the tuned threshold
        predictions = {examples[row]["id"]: decoded[row]["answer"] for row in rows}
        golds = {examples[row]["id"]: examples[row]["answers"] for row in rows}
        values = squad_scores(predictions, golds, self.version_2)
        if stage == "test":
            self.last_test_records = [self._record(examples[row], decoded[row]) for row in rows]
        gathered.reset()
        return {k: torch.tensor(float(v)) for k, v in values.items()}

    def _sanity_checking(self) -> bool:
        """Lightning's sanity check reads a few validation batches: not a split to tune on."""
        trainer = self._trainer  # None outside a Trainer (baselines score with fresh metrics)
        return bool(trainer is not None and trainer.sanity_checking)

    def _tune_threshold(
        self, decoded: dict[int, dict[str, Any]], examples: dict[int, dict[str, Any]]
    ) -> None:
        """Choose the no-answer threshold with the best validation F1."""
        rows = list(decoded)
        probabilities = [decoded[r]["no_answer_probability"] for r in rows]
        answered = [
            best_over_golds(decoded[r]["best_span"], examples[r]["answers"])[1] for r in rows
        ]
        abstained = [best_over_golds("", examples[r]["answers"])[1] for r in rows]
        threshold, f1 = best_null_threshold(probabilities, answered, abstained)
        self.threshold = threshold
        self.tuned_on = {"split": "validation", "questions": len(rows), "f1": round(f1, 4)}
        log.info("No-answer threshold tuned on validation: %.4f (F1 %.2f)", threshold, f1)

    @staticmethod
    def _record(example: dict[str, Any], decoded: dict[str, Any]) -> dict[str, Any]:
        _, f1 = best_over_golds(decoded["answer"], example["answers"])
        return {
            "id": example["id"],
            "question": example["question"],
            "context": example["context"],
            "gold_answers": example["answers"],
            "answer": decoded["answer"],
            "no_answer_probability": round(decoded["no_answer_probability"], 4),
            "score": round(100 * f1, 2),
        }

    def test_records(self) -> list[dict[str, Any]] | None:
        return self.last_test_records

    def evaluation_details(self) -> dict[str, Any]:
        if not self.version_2:
            return {}
        return {"null_threshold": self.threshold, "null_threshold_tuned_on": self.tuned_on}

    def answer_scores(
        self, answers: dict[int, str], examples: dict[int, dict[str, Any]]
    ) -> dict[str, float]:
        """Exact match and F1 (0-100) of answers given by row, for baselines."""
        predictions = {examples[row]["id"]: text for row, text in answers.items()}
        golds = {examples[row]["id"]: examples[row]["answers"] for row in answers}
        return squad_scores(predictions, golds, self.version_2)

    def baseline_problem(self, name: str) -> str | None:
        if name == "no_answer" and not self.version_2:
            return "every question has an answer (data.version_2_with_negative=false)"
        return None

    # ----- what predict and export need ---------------------------------------------------------
    def run_settings(self) -> dict[str, Any]:
        hparams: Any = self.hparams
        return {
            "version_2_with_negative": self.version_2,
            "n_best": int(hparams.n_best),
            "max_answer_length": int(hparams.max_answer_length),
            "null_threshold": self.threshold,
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["lmforge"]["null_threshold"] = self.threshold

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        threshold = checkpoint.get("lmforge", {}).get("null_threshold")
        if threshold is not None:
            self.threshold = float(threshold)
