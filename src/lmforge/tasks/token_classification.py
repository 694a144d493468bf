"""Token classification (named-entity recognition) over word-aligned subword labels."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from transformers import AutoModelForTokenClassification, PreTrainedModel, PreTrainedTokenizerBase

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


def best_window_positions(window_word_ids: list[list[int | None]]) -> dict[int, tuple[int, int]]:
    """For each word of one input cut into overlapping windows: the (window, position) of its
    first subword in the window where that subword lies furthest from a window edge, so every
    word is read with as much context as the windows give. Ties keep the earlier window, which
    holds the start of a word cut by a window boundary."""
    best: dict[int, tuple[int, int, int]] = {}  # word -> (margin, window, position)
    for window, word_ids in enumerate(window_word_ids):
        content = [p for p, w in enumerate(word_ids) if w is not None]
        if not content:
            continue
        first, last = content[0], content[-1]
        previous = None
        for position in content:
            word = word_ids[position]
            if word != previous:
                margin = min(position - first, last - position)
                if word not in best or margin > best[word][0]:
                    best[word] = (margin, window, position)
            previous = word
    return {word: (window, position) for word, (_, window, position) in best.items()}


@torch.inference_mode()
def tag_sentences(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    sentences: list[list[str]],
    label_names: list[str],
    max_length: int,
    stride: int,
    batch_size: int,
    device: torch.device,
) -> list[tuple[list[str], list[float]]]:
    """Tag pre-split sentences: per word its tag and probability, read at its first subword.

    Sentences longer than `max_length` subwords are cut into windows that overlap by
    `stride` tokens and merged by `best_window_positions`, so no word goes untagged. Words the
    tokenizer gives no subword for are tagged O with score 0.
    """
    encoded = tokenizer(
        sentences,
        is_split_into_words=True,
        truncation=True,
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        padding=True,
        return_tensors="pt",
    )
    inputs = {k: encoded[k] for k in tokenizer.model_input_names if k in encoded}
    windows = len(encoded["input_ids"])
    probabilities = []  # one (seq, tags) tensor per window
    for start in range(0, windows, batch_size):
        chunk = {k: v[start : start + batch_size].to(device) for k, v in inputs.items()}
        logits = model(**chunk).logits  # (windows, seq, tags)
        probabilities.extend(logits.softmax(dim=-1).cpu())
    windows_of: dict[int, list[int]] = {}
    for window, sentence in enumerate(encoded["overflow_to_sample_mapping"].tolist()):
        windows_of.setdefault(sentence, []).append(window)
    results = []
    for index, words in enumerate(sentences):
        own = windows_of.get(index, [])
        chosen = best_window_positions([encoded.word_ids(w) for w in own])
        tags, scores = ["O"] * len(words), [0.0] * len(words)
        for word, (window, position) in chosen.items():
            score, tag = probabilities[own[window]][position].max(dim=-1)
            tags[word], scores[word] = label_names[int(tag)], float(score)
        results.append((tags, scores))
    return results


class TokenClassificationModule(TaskModule):
    """A pretrained encoder with a per-token tagging head over `label_names` (tags).

    Metrics: entity-level `precision`, `recall`, `f1` (micro) and `f1_<TYPE>` as seqeval
    computes them (conlleval-compatible by default, `strict` for exact IOB2/IOBES), and
    `token_acc` over the labelled subwords.
    """

    task_name = "token_classification"
    auto_class = AutoModelForTokenClassification
    pipeline_task = "token-classification"

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

    def tag_words(
        self,
        sentences: list[list[str]],
        tokenizer,
        max_length: int = 512,
        stride: int | None = None,
        batch_size: int = 32,
    ) -> list[dict]:
        """Tag pre-split sentences: per word its tag and probability (`scores`, read at the
        word's first subword), and the entity spans. Sentences longer than `max_length`
        subwords are read in windows overlapping by `stride` tokens (default: a quarter of the
        window), so no word goes untagged."""
        room = max_length - tokenizer.num_special_tokens_to_add(pair=False)
        tagged = tag_sentences(
            self.model,
            tokenizer,
            sentences,
            self.label_names,
            max_length,
            room // 4 if stride is None else stride,
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

    def compute_metrics(self, metrics: nn.Module) -> dict[str, torch.Tensor]:
        values = dict(metrics["entities"].compute())
        values["token_acc"] = metrics["token_acc"].compute()
        for metric in metrics.values():
            metric.reset()
        return values
