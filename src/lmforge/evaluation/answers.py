"""Generated or extracted answers scored against reference text.

SQuAD's answer normalisation (lower case; punctuation and the articles a/an/the removed;
whitespace collapsed), exact match and token F1 over the normalised words, and the gathering
of a split's generated texts for metrics computed once per epoch. Written here rather than
taken from `evaluate` because `evaluate.load("squad")` fetches the metric's code from the hub
at run time; the rules are those of the official SQuAD v1.1/v2.0 evaluation scripts.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from torch import nn

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


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
