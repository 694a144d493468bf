"""Sequence classification: single-label (binary or multi-class), multi-label, sentence pairs."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MultilabelExactMatch,
    MultilabelF1Score,
)
from transformers import PreTrainedModel

from lmforge.data.splits import Stage
from lmforge.tasks.base import TaskModule
from lmforge.tasks.spec import safe_name


class TextClassificationModule(TaskModule):
    """A pretrained encoder with a classification head over `label_names`.

    Single-label: softmax + cross-entropy; metrics `acc`, `f1_macro` and `f1_<label>` per
    class. Multi-label: one sigmoid per label + binary cross-entropy, a label is predicted when
    its probability exceeds `threshold`; metrics `acc` (every label of the row right),
    `f1_micro`, `f1_macro`, `f1_<label>`.
    """

    task_name = "text_classification"
    labels_per_example = True

    def __init__(
        self,
        pretrained: str,
        label_names: list[str],
        tokenizer: str | None = None,
        multi_label: bool = False,
        threshold: float = 0.5,
        classifier_dropout: float | None = None,
        **kwargs: Any,
    ) -> None:
        self.label_names = list(label_names)
        self.multi_label = multi_label
        self.threshold = threshold
        self.classifier_dropout = classifier_dropout
        super().__init__(pretrained=pretrained, tokenizer=tokenizer, **kwargs)

    def build_model(self) -> PreTrainedModel:
        fields = self.label_fields(self.label_names, self.classifier_dropout)
        fields["problem_type"] = (
            "multi_label_classification" if self.multi_label else "single_label_classification"
        )
        return self.load_pretrained(**fields)

    def supports_distillation(self) -> bool:
        # A softmax over classes; independent sigmoids (multi-label) have no such distribution.
        return not self.multi_label

    def baseline_problem(self, name: str) -> str | None:
        return "not implemented for multi-label classification" if self.multi_label else None

    def data_settings(self) -> dict[str, Any]:
        return {"label_names": list(self.label_names)}

    def run_settings(self) -> dict[str, Any]:
        return {
            "labels": list(self.label_names),
            "multi_label": self.multi_label,
            "threshold": self.threshold,
        }

    def forward_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = self.model(**inputs).logits  # (batch, num_labels)
        labels = batch["labels"]
        if self.multi_label:
            loss = F.binary_cross_entropy_with_logits(logits, labels.float())
        else:
            loss = F.cross_entropy(logits, labels)
        return loss, logits

    def predicted_labels(self, outputs: torch.Tensor) -> list[Any]:
        logits = outputs  # (batch, labels)
        if self.multi_label:
            chosen = logits.sigmoid() > self.threshold
            return [row.nonzero().flatten().tolist() for row in chosen]
        return logits.argmax(dim=-1).tolist()

    def configure_metrics(self, stage: str) -> nn.ModuleDict:
        n = len(self.label_names)
        if stage == "train":
            return nn.ModuleDict()  # training logs its loss only: metrics per step cost time
        if self.multi_label:
            return nn.ModuleDict(
                {
                    "acc": MultilabelExactMatch(num_labels=n, threshold=self.threshold),
                    "f1_micro": MultilabelF1Score(n, threshold=self.threshold, average="micro"),
                    "f1_macro": MultilabelF1Score(n, threshold=self.threshold, average="macro"),
                    "f1_per_label": MultilabelF1Score(n, threshold=self.threshold, average=None),
                }
            )
        return nn.ModuleDict(
            {
                "acc": MulticlassAccuracy(num_classes=n, average="micro"),
                "f1_macro": MulticlassF1Score(num_classes=n, average="macro"),
                "f1_per_label": MulticlassF1Score(num_classes=n, average=None),
            }
        )

    def update_metrics(self, stage: Stage, metrics: Any, outputs: Any, batch: dict) -> None:
        labels = batch["labels"]
        scores = torch.sigmoid(outputs) if self.multi_label else outputs
        for metric in metrics.values():
            metric.update(scores, labels.long() if self.multi_label else labels)

    def compute_metrics(self, stage: Stage, metrics: Any) -> dict[str, torch.Tensor]:
        values: dict[str, torch.Tensor] = {}
        for name, metric in metrics.items():
            value = metric.compute()
            metric.reset()
            if name == "f1_per_label":
                for label, score in zip(self.label_names, value, strict=True):
                    values[f"f1_{safe_name(label)}"] = score
            else:
                values[name] = value
        return values
