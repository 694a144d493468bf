"""Predictions of a multiple-choice model: the chosen answer and every choice's probability."""

from __future__ import annotations

from typing import Any

import torch

from lmforge.errors import LmforgeError
from lmforge.evaluation.continuations import per_row
from lmforge.tasks.multiple_choice.data import position_name
from lmforge.tasks.multiple_choice.module import ChoiceScorer
from lmforge.tasks.predictor import InputText, Predictor


class MultipleChoicePredictor(Predictor):
    """Per question and its choices (a list, or one text with the run's choice separator):
    `answer` (the chosen choice's text), `index` (0-based), `position` (A, B, ...) and
    `probabilities` (one per choice, in order)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scorer_name = str(self.settings.get("scorer") or "head")
        self.separator = str(self.settings.get("choice_separator") or "|")
        self.choice_scorer: ChoiceScorer | None = None
        if self.scorer_name == "causal":
            self.choice_scorer = ChoiceScorer(
                self.tokenizer,
                str(self.settings["pattern"]),
                bool(self.settings.get("chat_template")),
                str(self.settings.get("normalize") or "mean"),
                self.max_length,
            )
            self.choice_scorer.device = self.device

    @property
    def text_column(self) -> str:
        return str(self.settings.get("text_column") or "question")

    @property
    def text_pair_column(self) -> str:
        return "choices"

    def pair_value(self, value: Any, where: str) -> list[str]:
        """A question's choices: a list of texts, or one text split at the separator."""
        if isinstance(value, str):
            value = value.split(self.separator)
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise LmforgeError(
                f"{where}: the choices must be a list of texts or one text with the choices "
                f"separated by {self.separator!r}; got {type(value).__name__}."
            )
        choices = [v.strip() for v in value]
        if len(choices) < 2 or not all(choices):
            raise LmforgeError(
                f"{where}: a question needs at least two non-empty choices; got "
                f"{len([c for c in choices if c])} of {len(choices)}."
            )
        return choices

    def check(self, inputs: list[InputText]) -> None:
        for item in inputs:
            if not str(item.text).strip():
                raise LmforgeError(f"{item.where}: the question is empty.")
            self.pair_value(item.text_pair, item.where)

    @torch.inference_mode()
    def predict(self, batch: list[InputText]) -> list[dict[str, Any]]:
        questions = [str(item.text) for item in batch]
        choices = [self.pair_value(item.text_pair, item.where) for item in batch]
        if self.choice_scorer is not None:
            scorer = self.choice_scorer
            question_ids = [
                list(self.tokenizer(q, add_special_tokens=False)["input_ids"]) for q in questions
            ]
            choice_ids = [[scorer.choice_ids(c) for c in own] for own in choices]
            scores = scorer.scores(self.model, question_ids, choice_ids)
        else:
            firsts = [q for q, own in zip(questions, choices, strict=True) for _ in own]
            encoded = self.tokenizer(
                firsts,
                [c for own in choices for c in own],
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            ).to(self.device)
            # Every choice of the batch in one row: (1, choices, tokens) -> (1, choices).
            logits = self.model(**{k: v.unsqueeze(0) for k, v in encoded.items()}).logits[0]
            scores = per_row(logits.float(), [len(own) for own in choices])
        probabilities = scores.float().softmax(dim=-1)
        records = []
        for question, own, row in zip(questions, choices, probabilities, strict=True):
            chosen = int(row.argmax())
            records.append(
                {
                    "question": question,
                    "choices": own,
                    "answer": own[chosen],
                    "index": chosen,
                    "position": position_name(chosen),
                    "probabilities": [round(p, 6) for p in row[: len(own)].tolist()],
                }
            )
        return records

    def describe(self) -> str:
        return f"max_length {self.max_length}, {self.scorer_name} scoring of each choice"
