"""Log-likelihood of continuations under a causal LM: the shared pass behind prompt-based
classification (a label word after each text) and multiple choice (each answer after its
question)."""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F

NORMALIZE = ("mean", "sum")
# A stand-in for the input while a chat template renders a pattern (split out after).
_INPUT_MARK = "\x00lmforge-input\x00"


def chat_pattern(tokenizer: Any, pattern: str, field: str) -> tuple[str, str]:
    """The text before and after `{field}` once `pattern` is rendered as a user turn of the
    tokenizer's chat template, followed by the start of the assistant's reply."""
    from lmforge.errors import LmforgeError

    if not getattr(tokenizer, "chat_template", None):
        raise LmforgeError(
            "model.chat_template=true, but the tokenizer has no chat template; set it to false "
            "(the pattern is then plain text)."
        )
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": pattern.replace("{" + field + "}", _INPUT_MARK)}],
        tokenize=False,
        add_generation_prompt=True,
    )
    before, _, after = str(rendered).partition(_INPUT_MARK)
    return before, after


def _keeps_last_logits(model: Any) -> bool:
    """Whether the model can compute the logits of the last position only (`logits_to_keep`):
    the vocabulary projection of every other prompt position is wasted work and memory."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def continuation_scores(
    model: Any,
    prompts: list[list[int]],
    continuations: list[list[list[int]]],
    pad_id: int,
    device: Any = "cpu",
    normalize: str = "mean",
) -> torch.Tensor:
    """(prompts, most continuations) scores: the log-probability of each prompt's
    continuations after it, the mean over their tokens (`mean`) or the sum; -inf where a prompt
    has fewer continuations than the most.

    The prompts run once (left-padded, positions counted from each start) and their key/value
    cache is repeated for their continuations, so only the continuations' own tokens run once
    per continuation: with long prompts and short answers, a fraction of the work of running
    every (prompt, continuation) pair whole.
    """
    counts = [len(c) for c in continuations]
    if not prompts or any(n < 1 for n in counts) or any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token and one continuation")
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    positions = (mask.cumsum(dim=1) - 1).clamp_min(0)
    extra = {"logits_to_keep": 1} if _keeps_last_logits(model) else {}
    context = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra
    )
    # Each continuation's first token is predicted at its prompt's last position.
    last = F.log_softmax(context.logits[:, -1].float(), dim=-1)  # (prompts, vocab)
    flat = [c for group in continuations for c in group]
    if any(not c for c in flat):
        raise ValueError("every continuation needs at least one token")
    owner = torch.tensor([p for p, n in enumerate(counts) for _ in range(n)], device=device)
    totals = last[owner, torch.tensor([c[0] for c in flat], device=device)]  # (continuations,)
    longest = max(len(c) for c in flat)
    if longest > 1:
        cache = context.past_key_values
        if len(set(counts)) == 1:
            cache.batch_repeat_interleave(counts[0])  # prompt-major, as `owner` orders them
        else:
            cache.batch_select_indices(owner)
        # Every continuation but its last token is read; each token predicts the next one.
        inputs = torch.tensor([c[:-1] + [pad_id] * (longest - len(c)) for c in flat], device=device)
        own_mask = torch.tensor(
            [[1] * (len(c) - 1) + [0] * (longest - len(c)) for c in flat], device=device
        )
        after = positions[owner, -1:] + 1
        rest = model(
            input_ids=inputs,
            attention_mask=torch.cat([mask[owner], own_mask], dim=1),
            position_ids=after + torch.arange(longest - 1, device=device),
            past_key_values=cache,
            use_cache=False,
        )
        logps = F.log_softmax(rest.logits.float(), dim=-1)  # (continuations, longest-1, vocab)
        targets = torch.tensor([c[1:] + [0] * (longest - len(c)) for c in flat], device=device)
        later = logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * own_mask
        totals = totals + later.sum(dim=1)
    if normalize == "mean":
        totals = totals / torch.tensor([len(c) for c in flat], device=totals.device)
    return per_row(totals, counts)


def per_row(values: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Flat scores (row 0's first, then row 1's, ...) as (rows, most counts), -inf past each
    row's own count: the padded layout a softmax over each row's real entries needs."""
    device = values.device
    positions = torch.arange(max(counts), device=device)[None, :]
    real = positions < torch.tensor(counts, device=device)[:, None]
    scores = torch.full(real.shape, float("-inf"), device=device, dtype=values.dtype)
    return scores.masked_scatter(real, values)
