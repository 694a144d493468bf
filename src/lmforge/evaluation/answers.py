"""Generated or extracted answers scored against reference text.

ROUGE-1/2/L/Lsum F-measures (the `rouge-score` package, Porter stemming) for summaries and any
generated answer; SQuAD's answer normalisation (lower case; punctuation and the articles
a/an/the removed; whitespace collapsed), exact match and token F1 over the normalised words;
and the gathering of a split's generated texts for metrics computed once per epoch. Exact match
and F1 are written here rather than taken from `evaluate` because `evaluate.load("squad")`
fetches the metric's code from the hub at run time; the rules are those of the official SQuAD
v1.1/v2.0 evaluation scripts.
"""

from __future__ import annotations

import functools
import logging
import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

from torch import nn

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)

# English words too common to tell which text, or which part of one, a question is about
# (the word-overlap baselines leave them out).
COMMON_WORDS = frozenset(
    {
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "at",
        "to",
        "for",
        "by",
        "with",
        "from",
        "and",
        "or",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
        "does",
        "do",
        "did",
        "can",
        "could",
        "would",
        "should",
        "will",
        "there",
        "their",
        "they",
        "he",
        "she",
        "his",
        "her",
        "as",
        "into",
        "than",
    }
)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD's normalisation)."""
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """F1 of the normalised tokens; when either side is empty, 1 if both are, else 0."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# A sentence ends at . ! or ? followed by space; rougeLsum compares sentence by sentence (the
# rouge-score package splits on newlines, so sentences are put on lines here, without nltk).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# What rouge-score's default tokenizer keeps: lowercase ASCII letters and digits.
_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")


def sentences_on_lines(text: str) -> str:
    """The text with one sentence per line (existing line breaks kept)."""
    return "\n".join(
        part.strip() for line in text.splitlines() for part in _SENTENCE_END.split(line)
    ).strip()


@functools.cache
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    # rouge-score logs "Using default tokenizer." through absl at INFO for every scorer.
    logging.getLogger("absl").setLevel(logging.WARNING)
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean F-measure of ROUGE-1/2/L/Lsum over the pairs, with Porter stemming, in [0, 1]."""
    if not predictions:
        return {name: 0.0 for name in ROUGE_TYPES}
    scorer = _rouge_scorer()
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(sentences_on_lines(reference), sentences_on_lines(prediction))
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    return {name: total / len(predictions) for name, total in totals.items()}


def unscorable_by_rouge(references: list[str]) -> int:
    """How many non-empty references ROUGE's tokenizer reduces to nothing (non-Latin text)."""
    return sum(1 for r in references if r.strip() and not _ROUGE_TOKEN.search(r.lower()))


def answer_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean exact match and token F1 (0-100) of answers against one reference each."""
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0}
    pairs = list(zip(predictions, references, strict=True))
    return {
        "exact_match": 100 * sum(exact_match(p, r) for p, r in pairs) / len(pairs),
        "f1": 100 * sum(token_f1(p, r) for p, r in pairs) / len(pairs),
    }


class GeneratedTexts(nn.Module):
    """The generated and reference texts of one split, gathered batch by batch, with the
    source (prompt) of each (a module, so a stage's metric set can hold it; it has no
    weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.predictions: list[str] = []
        self.references: list[str] = []

    def update(self, sources: list[str], predictions: list[str], references: list[str]) -> None:
        self.sources.extend(sources)
        self.predictions.extend(predictions)
        self.references.extend(references)

    def reset(self) -> None:
        self.sources, self.predictions, self.references = [], [], []

    def __len__(self) -> int:
        return len(self.predictions)
