"""Token classification (named-entity recognition) over word-aligned subword labels."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lmforge.data.labels import IGNORE_INDEX
from lmforge.data.splits import Stage
from lmforge.tasks.base import TaskModule
from lmforge.tasks.token_classification.metrics import EntityScores
from lmforge.tasks.token_classification.predict import (
    entity_spans,
    tag_sentences,
    window_stride,
)


class TokenClassificationModule(TaskModule):
    """A pretrained encoder with a per-token tagging head over `label_names` (tags).

    Metrics: entity-level `precision`, `recall`, `f1` (micro) and `f1_<TYPE>` as seqeval
    computes them (conlleval-compatible by default, `strict` for exact IOB2/IOBES), and
    `token_acc` over the labelled subwords.
    """

    task_name = "token_classification"

    def __init__(
        self,
        pretrained: str | None,
        label_names: list[str],
        tokenizer: str | None = None,
        tag_scheme: str = "IOB2",
        strict: bool = False,
        classifier_dropout: float | None = None,
        **kwargs: Any,
    ) -> None:
        self.label_names = list(label_names)
        self.tag_scheme = tag_scheme
        self.strict = strict
        self.classifier_dropout = classifier_dropout
        super().__init__(pretrained=pretrained, tokenizer=tokenizer, **kwargs)

    def build_model(self) -> PreTrainedModel:
        fields = self.label_fields(self.label_names, self.classifier_dropout)
        return self.load_pretrained(**fields)

    def data_settings(self) -> dict[str, Any]:
        return {"label_names": list(self.label_names)}

    def run_settings(self) -> dict[str, Any]:
        return {"labels": list(self.label_names), "tag_scheme": self.tag_scheme}

    def forward_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = self.model(**inputs).logits  # (batch, seq, num_tags)
        loss = F.cross_entropy(
            logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX
        )
        return loss, logits

    def distillation_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return batch["labels"] != IGNORE_INDEX  # (batch, seq): labelled subwords only

    def configure_metrics(self, stage: str) -> nn.ModuleDict:
        if stage == "train":
            return nn.ModuleDict()
        return nn.ModuleDict(
            {
                "entities": EntityScores(self.label_names, self.strict, self.tag_scheme),
                "token_acc": MulticlassAccuracy(
                    num_classes=len(self.label_names), average="micro", ignore_index=IGNORE_INDEX
                ),
            }
        )

    def update_metrics(self, stage: Stage, metrics: Any, outputs: Any, batch: dict) -> None:
        predictions = outputs.argmax(dim=-1)  # (batch, seq)
        metrics["entities"].update(predictions, batch["labels"])
        metrics["token_acc"].update(predictions.flatten(), batch["labels"].flatten())

    def tag_words(
        self,
        sentences: list[list[str]],
        tokenizer: PreTrainedTokenizerBase,
        max_length: int = 512,
        stride: int | None = None,
        batch_size: int = 32,
    ) -> list[dict]:
        """Tag pre-split sentences: per word its tag and probability (`scores`, read at the
        word's first subword), and the entity spans. Sentences longer than `max_length`
        subwords are read in windows overlapping by `stride` tokens (default: a quarter of the
        window), so no word goes untagged."""
        tagged = tag_sentences(
            self.model,
            tokenizer,
            sentences,
            self.label_names,
            max_length,
            window_stride(max_length, tokenizer, stride),
            batch_size,
            self.device,
        )
        return [
            {
                "words": words,
                "tags": tags,
                "scores": scores,
                "entities": entity_spans(words, tags, scores),
            }
            for words, (tags, scores) in zip(sentences, tagged, strict=True)
        ]

    def compute_metrics(self, stage: Stage, metrics: Any) -> dict[str, torch.Tensor]:
        values = dict(metrics["entities"].compute())
        values["token_acc"] = metrics["token_acc"].compute()
        for metric in metrics.values():
            metric.reset()
        return values
