"""Predictions of a tagger: a tag per word and the entity spans, windows for long inputs."""

from __future__ import annotations

from typing import Any, cast

import torch
from transformers import PreTrainedTokenizerBase

from lmforge.errors import LmforgeError
from lmforge.tasks.predictor import InputText, Predictor


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
            word = cast(int, word_ids[position])  # a content position: it holds a word
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


def window_stride(max_length: int, tokenizer: PreTrainedTokenizerBase, stride: int | None) -> int:
    """Tokens shared by consecutive windows of a long input (None: a quarter of the window);
    it must leave room in a window for new words."""
    room = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    chosen = room // 4 if stride is None else stride
    if not 0 <= chosen < room:
        raise LmforgeError(
            f"stride={stride} must be less than the {room} word tokens of a window "
            f"(max_length={max_length} minus special tokens)."
        )
    return chosen


class TokenClassificationPredictor(Predictor):
    """Per input: its words (split on whitespace, or a row's list of words), a tag per word and
    the entity spans with their mean word probability."""

    reads_words = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        stride = self.options.get("stride") if self.options is not None else None
        self.stride = window_stride(self.max_length, self.tokenizer, stride)
        self.batch_size = int(self.options.get("batch_size") or 32) if self.options else 32

    def predict(self, batch: list[InputText]) -> list[dict[str, Any]]:
        sentences = [
            item.text if isinstance(item.text, list) else item.text.split() for item in batch
        ]
        tagged = tag_sentences(
            self.model,
            self.tokenizer,
            sentences,
            self.label_names,
            self.max_length,
            self.stride,
            self.batch_size,
            self.device,
        )
        return [
            {
                "text": item.text if isinstance(item.text, str) else " ".join(item.text),
                "words": words,
                "tags": tags,
                "entities": entity_spans(words, tags, scores),
            }
            for item, words, (tags, scores) in zip(batch, sentences, tagged, strict=True)
        ]
