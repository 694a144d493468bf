"""Exact match and F1 of extracted answers (SQuAD v1.1/v2.0's rules: the best score over the
gold answers; an unanswerable question has the single gold answer ""), and the tuning of the
no-answer threshold on validation. The answer normalisation and the per-answer scores are
shared with other families' generated answers (`lmforge.evaluation.answers`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lmforge.evaluation.answers import exact_match, normalize_answer, token_f1


def best_over_golds(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """(exact match, F1) of a prediction against its best-matching gold answer; no gold
    answers means the question is unanswerable (gold "")."""
    candidates = [g for g in golds if normalize_answer(g)] or [""]
    return (
        max(exact_match(prediction, g) for g in candidates),
        max(token_f1(prediction, g) for g in candidates),
    )


def squad_scores(
    predictions: Mapping[str, str], golds: Mapping[str, Sequence[str]], with_negative: bool
) -> dict[str, float]:
    """`exact_match` and `f1` (0-100) over the questions of `predictions`; with
    `with_negative`, also `has_ans_*` (answerable questions) and `no_ans_*` (unanswerable
    ones), 0 for a group without questions."""
    totals = {"all": [0.0, 0.0, 0], "has_ans": [0.0, 0.0, 0], "no_ans": [0.0, 0.0, 0]}
    for key, prediction in predictions.items():
        gold = golds[key]
        em, f1 = best_over_golds(prediction, gold)
        group = "has_ans" if any(normalize_answer(g) for g in gold) else "no_ans"
        for name in ("all", group):
            totals[name][0] += em
            totals[name][1] += f1
            totals[name][2] += 1

    def mean(total: float, count: float) -> float:
        return 100 * total / count if count else 0.0

    em, f1, count = totals["all"]
    scores = {"exact_match": mean(em, count), "f1": mean(f1, count)}
    if with_negative:
        for name in ("has_ans", "no_ans"):
            em, f1, count = totals[name]
            scores[f"{name}_exact_match"] = mean(em, count)
            scores[f"{name}_f1"] = mean(f1, count)
    return scores


def best_null_threshold(
    no_answer_probabilities: Sequence[float],
    answer_scores: Sequence[float],
    null_scores: Sequence[float],
) -> tuple[float, float]:
    """The no-answer threshold that maximises the summed score, and that score's mean (0-100).

    A question is answered "no answer" when its no-answer probability is above the threshold:
    it then scores `null_scores[i]` (1 for an unanswerable question), else `answer_scores[i]`
    (the F1 of its best span). Thresholds tried: 1.0 (never abstain) and every probability
    seen; a tie keeps the higher threshold (fewer abstentions).
    """
    count = len(no_answer_probabilities)
    if count == 0:
        return 1.0, 0.0
    order = sorted(range(count), key=lambda i: no_answer_probabilities[i], reverse=True)
    # Threshold 1.0: every question answered.
    total = sum(answer_scores)
    best_total, best_threshold = total, 1.0
    for position, i in enumerate(order):
        # Lowering the threshold below this probability makes question i abstain (and every
        # question with the same probability, handled as the loop reaches them).
        total += null_scores[i] - answer_scores[i]
        tied_next = (
            position + 1 < count
            and no_answer_probabilities[order[position + 1]] == no_answer_probabilities[i]
        )
        if tied_next:
            continue
        threshold = no_answer_probabilities[order[position + 1]] if position + 1 < count else 0.0
        if total > best_total:
            best_total, best_threshold = total, threshold
    return best_threshold, 100 * best_total / count
