"""Baselines of multiple choice, scored as the module scores accuracy:

- `random_choice`: the accuracy expected of a uniform guess, the mean over questions of one
  over their number of choices (exact, not a sample);
- `word_overlap`: the choice sharing the most distinct words with the question (and its
  context); a tie among k choices counts 1/k if the answer is among them.
"""

from __future__ import annotations

import re
from typing import Any

from lmforge.data.datamodule import TextDataModule
from lmforge.data.splits import EVALUATED
from lmforge.errors import LmforgeError
from lmforge.evaluation.answers import COMMON_WORDS
from lmforge.tasks.base import TaskModule
from lmforge.tasks.multiple_choice.data import MultipleChoiceDataModule


def words(text: str) -> set[str]:
    """The distinct lower-cased words of a text, common words left out."""
    return {w for w in re.findall(r"\w+", text.lower()) if w not in COMMON_WORDS}


def overlap_credit(question: str, choices: list[str], answer: int) -> float:
    """1 if the answer alone shares the most words with the question, 1/k in a k-way tie that
    includes it, 0 otherwise."""
    asked = words(question)
    shared = [len(asked & words(choice)) for choice in choices]
    best = [i for i, n in enumerate(shared) if n == max(shared)]
    return 1 / len(best) if answer in best else 0.0


def _examples(datamodule: TextDataModule) -> dict[str, list[dict[str, Any]]]:
    if not isinstance(datamodule, MultipleChoiceDataModule):
        raise LmforgeError(
            "The multiple-choice baselines read a MultipleChoiceDataModule, not a "
            f"{type(datamodule).__name__}."
        )
    return {split: list(datamodule.examples(split).values()) for split in EVALUATED}


def _accuracy(per_split: dict[str, list[float]]) -> dict[str, float]:
    return {
        f"{EVALUATED[split]}/acc": sum(values) / len(values)
        for split, values in per_split.items()
        if values
    }


def random_choice(module: TaskModule, datamodule: TextDataModule, device: Any) -> tuple[dict, dict]:
    examples = _examples(datamodule)
    return _accuracy(
        {split: [1 / len(e["choices"]) for e in rows] for split, rows in examples.items()}
    ), {}


def word_overlap(module: TaskModule, datamodule: TextDataModule, device: Any) -> tuple[dict, dict]:
    examples = _examples(datamodule)
    return _accuracy(
        {
            split: [overlap_credit(e["question"], e["choices"], e["answer"]) for e in rows]
            for split, rows in examples.items()
        }
    ), {}
