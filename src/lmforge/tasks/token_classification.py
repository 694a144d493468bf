"""Token classification (named-entity recognition) over word-aligned subword labels."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from transformers import AutoModelForTokenClassification, PreTrainedModel

from lmforge.tasks.base import TaskModule
from lmforge.tasks.metrics import IGNORE, EntityScores


def entity_spans(
    words: list[str], tags: list[str], scores: list[float] | None = None
) -> list[dict]:
    """Entities of one tagged sentence as word spans: type, first and last word, text, and the
    mean score of their words when `scores` are given (seqeval's conlleval-style chunking)."""
    from seqeval.metrics.sequence_labeling import get_entities

    spans = []
    for kind, start, end in get_entities(list(tags)):
        span = {"type": kind, "start": start, "end": end, "text": " ".join(words[start : end + 1])}
        if scores is not None:
            span["score"] = sum(scores[start : end + 1]) / (end - start + 1)
        spans.append(span)
    return spans


class TokenClassificationModule(TaskModule):
    """A pretrained encoder with a per-token tagging head over `label_names` (tags).

    Metrics: entity-level `precision`, `recall`, `f1` (micro) and `f1_<TYPE>` as seqeval
    computes them (conlleval-compatible by default, `strict` for exact IOB2/IOBES), and
    `token_acc` over the labelled subwords.
    """

    task_name = "token_classification"
    auto_class = AutoModelForTokenClassification

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
        return self.load_pretrained(self.auto_class, **fields)

    def forward_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = self.model(**inputs).logits  # (batch, seq, num_tags)
        loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE)
        return loss, logits

    def supports_distillation(self) -> bool:
        return True

    def distillation_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return batch["labels"] != IGNORE  # (batch, seq): labelled subwords only

    def configure_metrics(self, stage: str) -> nn.Module:
        if stage == "train":
            return nn.ModuleDict()
        return nn.ModuleDict(
            {
                "entities": EntityScores(self.label_names, self.strict, self.tag_scheme),
                "token_acc": MulticlassAccuracy(
                    num_classes=len(self.label_names), average="micro", ignore_index=IGNORE
                ),
            }
        )

    def update_metrics(self, metrics: nn.Module, outputs: Any, batch: dict) -> None:
        predictions = outputs.argmax(dim=-1)  # (batch, seq)
        metrics["entities"].update(predictions, batch["labels"])
        metrics["token_acc"].update(predictions.flatten(), batch["labels"].flatten())

    @torch.no_grad()
    def tag_words(self, sentences: list[list[str]], tokenizer, max_length: int = 512) -> list[dict]:
        """Tag pre-split sentences: per word its tag and probability (read at the word's first
        subword), and the entity spans. Words cut off by `max_length` get no tag."""
        encoded = tokenizer(
            sentences,
            is_split_into_words=True,
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        ).to(self.device)
        probabilities = self.model(**encoded).logits.softmax(dim=-1)  # (batch, seq, tags)
        results = []
        for row, words in enumerate(sentences):
            tags, scores, seen = ["O"] * len(words), [0.0] * len(words), set()
            for position, word in enumerate(encoded.word_ids(row)):
                if word is None or word in seen:
                    continue
                seen.add(word)
                score, tag = probabilities[row, position].max(dim=-1)
                tags[word], scores[word] = self.label_names[int(tag)], float(score)
            results.append(
                {"words": words, "tags": tags, "entities": entity_spans(words, tags, scores)}
            )
        return results

    def compute_metrics(self, metrics: nn.Module) -> dict[str, torch.Tensor]:
        values = dict(metrics["entities"].compute())
        values["token_acc"] = metrics["token_acc"].compute()
        for metric in metrics.values():
            metric.reset()
        return values
