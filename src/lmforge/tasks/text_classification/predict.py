"""Predictions of a text classifier: the label (or labels) and every label's probability."""

from __future__ import annotations

from typing import Any

import torch

from lmforge.tasks.predictor import InputText, Predictor

# A threshold for multi-label models that record none (the usual sigmoid midpoint).
DEFAULT_THRESHOLD = 0.5


class TextClassificationPredictor(Predictor):
    """Per text: the label and every label's probability (multi-label: the labels above the
    threshold, `threshold=` of the command or the run's, and every label's own probability)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        chosen = self.options.get("threshold") if self.options is not None else None
        self.multi_label = bool(self.settings.get("multi_label"))
        self.threshold = float(
            chosen if chosen is not None else self.settings.get("threshold") or DEFAULT_THRESHOLD
        )

    @torch.inference_mode()
    def predict(self, batch: list[InputText]) -> list[dict[str, Any]]:
        texts = [str(item.text) for item in batch]
        pairs = [str(item.text_pair) for item in batch] if self.text_pair_column else None
        encoded = self.tokenizer(
            texts,
            pairs,
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
        ).to(self.device)
        logits = self.model(**encoded).logits  # (batch, num_labels)
        names = self.label_names
        probabilities = logits.sigmoid() if self.multi_label else logits.softmax(dim=-1)
        best = probabilities.argmax(dim=-1).tolist()
        records = []
        for item, row, top in zip(batch, probabilities.tolist(), best, strict=True):
            record: dict[str, Any] = {"text": str(item.text)}
            if pairs is not None:
                record["text_pair"] = item.text_pair
            if self.multi_label:
                record["labels"] = [
                    n for n, p in zip(names, row, strict=True) if p > self.threshold
                ]
            else:
                record["label"] = names[top]
            record["probabilities"] = dict(zip(names, row, strict=True))
            records.append(record)
        return records
