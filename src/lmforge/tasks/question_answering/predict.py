"""Predictions of a question-answering model: the answer span in each context, or no answer."""

from __future__ import annotations

from typing import Any

import torch

from lmforge.errors import LmforgeError
from lmforge.tasks.predictor import InputText, Predictor
from lmforge.tasks.question_answering.data import WindowCollator, encode_windows
from lmforge.tasks.question_answering.spans import best_answer, null_positions, window_spans


class QuestionAnsweringPredictor(Predictor):
    """Per question and context: `answer` (text), `start`/`end` (characters of the context),
    `score` (the span's probability in its window), `no_answer_probability`, `no_answer`
    (v2 models, above the run's tuned threshold) and `alternatives` (the next answers).
    Long contexts are read in the run's windows (`max_length`, `doc_stride`)."""

    @property
    def text_column(self) -> str:
        return str(self.settings.get("text_column") or "question")

    @property
    def text_pair_column(self) -> str:
        return str(self.settings.get("text_pair_column") or "context")

    def _setting(self, key: str, default: Any) -> Any:
        value = self.settings.get(key)
        return default if value is None else value

    def check(self, inputs: list[InputText]) -> None:
        for item in inputs:
            if not str(item.text).strip():
                raise LmforgeError(f"{item.where}: the question is empty.")
            if not str(item.text_pair or "").strip():
                raise LmforgeError(
                    f"{item.where}: the context ({self.text_pair_column!r}) is empty; a question "
                    "needs a context to find its answer in."
                )

    @torch.inference_mode()
    def predict(self, batch: list[InputText]) -> list[dict[str, Any]]:
        max_length = self.max_length
        stride = int(self._setting("doc_stride", max_length // 4))
        stride = min(stride, max_length // 2)  # a shorter max_length than the run's
        questions = [str(item.text) for item in batch]
        contexts = [str(item.text_pair) for item in batch]
        features = encode_windows(
            self.tokenizer,
            questions,
            contexts,
            max_length,
            stride,
            where=lambda i: batch[i].where,
        )
        # The training collator pads the windows and moves their offsets with left padding.
        names = [n for n in self.tokenizer.model_input_names if n in features]
        windows = [
            {**{n: features[n][w] for n in names}, "offsets": features["offsets"][w]}
            for w in range(len(features["example"]))
        ]
        padded = WindowCollator(self.tokenizer, None)(windows)
        outputs = self.model(**{n: padded[n].to(self.device) for n in names})
        spans = window_spans(
            outputs.start_logits,
            outputs.end_logits,
            padded["offsets"],
            padded["attention_mask"],
            null_positions(
                padded["input_ids"], padded["attention_mask"], self.tokenizer.cls_token_id
            ),
            n_best=int(self._setting("n_best", 20)),
            max_answer_length=int(self._setting("max_answer_length", 30)),
        )
        by_question: dict[int, list[Any]] = {}
        for example, found in zip(features["example"], spans, strict=True):
            by_question.setdefault(example, []).append(found)
        records = []
        for i, (question, context) in enumerate(zip(questions, contexts, strict=True)):
            decoded = best_answer(
                by_question.get(i, []),
                context,
                bool(self.settings.get("version_2_with_negative")),
                float(self._setting("null_threshold", 0.5)),
                alternatives=int(self.options.get("alternatives") or 0) if self.options else 0,
            )
            decoded.pop("best_span")
            decoded["score"] = round(decoded["score"], 6)
            decoded["no_answer_probability"] = round(decoded["no_answer_probability"], 6)
            records.append({"question": question, **decoded})
        return records

    def describe(self) -> str:
        return (
            f"max_length {self.max_length}, doc_stride {self.settings.get('doc_stride')}, "
            f"questions {self.text_column!r}, contexts {self.text_pair_column!r}, "
            f"no-answer threshold {self.settings.get('null_threshold')}"
        )
