"""From start/end logits to answers: the n-best spans of each window, mapped to characters of
the context through the offsets, and the best answer over all windows of a question.

One function decides the null position (where an unanswerable window points), so labelling,
decoding and prediction cannot disagree about it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

# Offsets of a token that is not part of the context (question, special tokens, padding).
NOT_CONTEXT = -1


def null_position(
    input_ids: Sequence[int], attention_mask: Sequence[int] | None, cls_token_id: int | None
) -> int:
    """Where a window points when its answer is not in it: its first attended [CLS]-type
    token, else its first attended token (left padding moves both)."""
    attended = [
        i for i in range(len(input_ids)) if attention_mask is None or int(attention_mask[i]) == 1
    ]
    if cls_token_id is not None:
        for i in attended:
            if int(input_ids[i]) == cls_token_id:
                return i
    return attended[0] if attended else 0


def null_positions(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, cls_token_id: int | None
) -> torch.Tensor:
    """`null_position` of every window of a padded batch: (windows,)."""
    rows = zip(input_ids.tolist(), attention_mask.tolist(), strict=True)
    return torch.tensor([null_position(ids, mask, cls_token_id) for ids, mask in rows])


@dataclass
class Span:
    """One candidate answer: its character span in the context, the sum of its start and end
    logits (comparable across windows, as the null score is) and its probability in its
    window (start and end softmax over the window's tokens)."""

    start: int
    end: int
    score: float
    probability: float


@dataclass
class WindowSpans:
    """The n-best spans of one window and the window's null score (start + end logit at the
    null position)."""

    null_score: float
    spans: list[Span] = field(default_factory=list)


@torch.no_grad()
def window_spans(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    offsets: torch.Tensor,
    attention_mask: torch.Tensor,
    null_positions: torch.Tensor,
    n_best: int,
    max_answer_length: int,
) -> list[WindowSpans]:
    """The `n_best` highest-scoring valid spans of every window of a batch: start and end in
    the context, start <= end, at most `max_answer_length` tokens. Every valid pair is scored
    (not only the top starts times the top ends), so the best span is never missed.

    Shapes: logits (windows, seq), offsets (windows, seq, 2) with NOT_CONTEXT outside the
    context, attention_mask (windows, seq), null_positions (windows,).
    """
    start_logits, end_logits = start_logits.float().cpu(), end_logits.float().cpu()
    offsets, mask = offsets.cpu(), attention_mask.cpu().bool()
    windows, length = start_logits.shape
    context = offsets[..., 0] >= 0  # (windows, seq)
    scores = start_logits[:, :, None] + end_logits[:, None, :]  # (windows, seq start, seq end)
    position = torch.arange(length)
    gap = position[None, :] - position[:, None]  # end - start, (seq, seq)
    valid = context[:, :, None] & context[:, None, :] & (gap >= 0) & (gap < max_answer_length)
    scores = scores.masked_fill(~valid, -math.inf)
    # Probabilities of start and end within each window (padding excluded).
    start_prob = start_logits.masked_fill(~mask, -math.inf).softmax(dim=-1)
    end_prob = end_logits.masked_fill(~mask, -math.inf).softmax(dim=-1)
    k = min(n_best, length * length)
    top_scores, top_index = scores.flatten(1).topk(k, dim=1)  # (windows, k)
    rows = torch.arange(windows)
    nulls = null_positions.cpu()
    null_scores = start_logits[rows, nulls] + end_logits[rows, nulls]  # (windows,)
    found = []
    for w in range(windows):
        spans = []
        for score, index in zip(top_scores[w].tolist(), top_index[w].tolist(), strict=True):
            if score == -math.inf:
                break
            s, e = divmod(index, length)
            spans.append(
                Span(
                    start=int(offsets[w, s, 0]),
                    end=int(offsets[w, e, 1]),
                    score=score,
                    probability=float(start_prob[w, s] * end_prob[w, e]),
                )
            )
        found.append(WindowSpans(float(null_scores[w]), spans))
    return found


def best_answer(
    windows: Sequence[WindowSpans],
    context: str,
    with_negative: bool,
    null_threshold: float,
    alternatives: int = 0,
) -> dict[str, Any]:
    """The answer to one question from the spans of all its windows.

    The best span is the highest-scoring one of any window; the null score is the lowest of
    the windows' (the window most sure an answer is in it). `no_answer_probability` is the
    probability of "no answer" against the best span, sigmoid(null score - best span score).
    With `with_negative`, the question is answered "" (no answer) when that probability is
    above `null_threshold`; without, the best span is always given. `alternatives` adds the
    next-best distinct answers.
    """
    spans = sorted((s for w in windows for s in w.spans), key=lambda s: -s.score)
    null = min((w.null_score for w in windows), default=0.0)
    best = spans[0] if spans else None
    if best is None:
        no_answer_probability = 1.0
    else:
        no_answer_probability = 1 / (1 + math.exp(min(best.score - null, 700.0)))
    abstain = best is None or (with_negative and no_answer_probability > null_threshold)
    record: dict[str, Any] = {
        "answer": "" if abstain or best is None else context[best.start : best.end],
        "start": None if abstain or best is None else best.start,
        "end": None if abstain or best is None else best.end,
        "score": 0.0 if abstain or best is None else best.probability,
        "no_answer": abstain,
        "no_answer_probability": no_answer_probability,
        # The best span even when the question is left unanswered (threshold tuning needs it).
        "best_span": "" if best is None else context[best.start : best.end],
    }
    if alternatives:
        seen, others = {record["best_span"]}, []
        for span in spans[1:]:
            text = context[span.start : span.end]
            if text and text not in seen:
                seen.add(text)
                others.append(
                    {
                        "answer": text,
                        "start": span.start,
                        "end": span.end,
                        "score": span.probability,
                    }
                )
            if len(others) == alternatives:
                break
        record["alternatives"] = others
    return record
