"""Baselines of extractive question answering, scored by the module's own exact match and F1:

- `word_overlap`: the context span with the question's words nearest around it (a
  sliding-window word-overlap baseline, weighted by distance), its length chosen on validation;
- `no_answer`: "no answer" to every question (for data with unanswerable questions).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from lmforge.data.datamodule import TextDataModule
from lmforge.data.splits import EVALUATED
from lmforge.errors import LmforgeError
from lmforge.evaluation.answers import COMMON_WORDS
from lmforge.evaluation.baselines import chosen_on_validation
from lmforge.tasks.base import TaskModule
from lmforge.tasks.question_answering.data import QuestionAnsweringDataModule
from lmforge.tasks.question_answering.module import QuestionAnsweringModule

# Answer lengths (words) the word-overlap baseline tries, and the words it looks at on each side.
OVERLAP_WIDTHS = (1, 2, 3, 4, 6, 8)
OVERLAP_WINDOW = 10


def word_overlap(module: TaskModule, datamodule: TextDataModule, device: Any) -> tuple[dict, dict]:
    return _scored(module, datamodule, word_overlap_answer, OVERLAP_WIDTHS)


def no_answer(module: TaskModule, datamodule: TextDataModule, device: Any) -> tuple[dict, dict]:
    return _scored(module, datamodule, lambda question, context, k: "")


def _word(token: str) -> str:
    return re.sub(r"\W+", "", token.lower())


def word_overlap_answer(question: str, context: str, width: int) -> str:
    """The span of `width` context words nearest to the question's words: each question word
    (content words only) found within `OVERLAP_WINDOW` words on either side adds 1 / its
    distance in words (its nearest occurrence). A span holds no question word and neither
    starts nor ends with a common word; the earliest span wins a tie; outer punctuation is
    trimmed."""
    asked = {_word(t) for t in question.split()} - COMMON_WORDS - {""}
    tokens = [(m.start(), m.end(), _word(m.group())) for m in re.finditer(r"\S+", context)]
    best, best_score = None, -1.0
    for i in range(max(len(tokens) - width + 1, 0)):
        span = tokens[i : i + width]
        words = [word for _, _, word in span]
        if any(w in asked for w in words) or not words[0] or not words[-1]:
            continue
        if words[0] in COMMON_WORDS or words[-1] in COMMON_WORDS:
            continue
        nearest: dict[str, float] = {}
        last = i + width - 1
        for p in range(max(i - OVERLAP_WINDOW, 0), min(last + OVERLAP_WINDOW + 1, len(tokens))):
            word = tokens[p][2]
            if word in asked and not i <= p <= last:
                weight = 1 / (i - p if p < i else p - last)
                nearest[word] = max(nearest.get(word, 0.0), weight)
        score = sum(nearest.values())
        if score > best_score:
            best, best_score = (span[0][0], span[-1][1]), score
    if best is None:
        return ""
    return context[best[0] : best[1]].strip(".,;:!?()[]\"'")


def _scored(
    module: TaskModule,
    datamodule: TextDataModule,
    answer: Callable[[str, str, int], str],
    choices: Sequence[int] = (1,),
) -> tuple[dict, dict]:
    """Score `answer(question, context, k)` with the module's exact match and F1; k chosen on
    validation by the family's primary metric where `answer` uses it."""
    if not isinstance(module, QuestionAnsweringModule) or not isinstance(
        datamodule, QuestionAnsweringDataModule
    ):
        raise LmforgeError(
            "The answer baselines score a QuestionAnsweringModule on a "
            f"QuestionAnsweringDataModule, not a {type(module).__name__} on a "
            f"{type(datamodule).__name__}."
        )
    examples = {split: datamodule.examples(split) for split in EVALUATED}

    def scores(split: str, k: int) -> dict[str, float]:
        answers = {
            row: answer(e["question"], e["context"], k) for row, e in examples[split].items()
        }
        return module.answer_scores(answers, examples[split])

    return chosen_on_validation(module.family.primary_metric, scores, choices, "words")
