"""Optimizer parameter groups and learning-rate schedules."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from transformers import get_scheduler

from lmforge.errors import LmforgeError

# Parameters whose name contains one of these are not weight-decayed (biases and norm layers).
NO_DECAY_MARKERS = ("bias", "LayerNorm.weight", "layer_norm.weight", "layernorm.weight", "ln_")


def parameter_groups(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
) -> list[dict]:
    """Split trainable parameters into a weight-decayed group and a no-decay group.

    The no-decay group sets `weight_decay=0.0`; the other inherits the optimizer's default.
    """
    decay, no_decay = [], []
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        is_norm_or_bias = param.ndim < 2 or any(m in name for m in NO_DECAY_MARKERS)
        (no_decay if is_norm_or_bias else decay).append(param)
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    num_training_steps: int,
    name: str = "linear",
    warmup_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LRScheduler:
    """A Hugging Face schedule (`linear`, `cosine`, `constant_with_warmup`, ...) over the run.

    `warmup_ratio` is the share of all optimizer steps spent warming up. The caller steps it
    once per optimizer step.
    """
    if not 0.0 <= warmup_ratio < 1.0:
        raise LmforgeError(f"scheduler.warmup_ratio must be in [0, 1), got {warmup_ratio}.")
    warmup_steps = round(warmup_ratio * num_training_steps)
    try:
        return get_scheduler(
            name,
            optimizer,
            num_warmup_steps=warmup_steps,
            num_training_steps=num_training_steps,
        )
    except ValueError as err:
        raise LmforgeError(f"scheduler.name={name!r} is not a known schedule: {err}") from err


OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]
