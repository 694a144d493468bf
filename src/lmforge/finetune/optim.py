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
    lr: float | None = None,
    layer_decay: float | None = None,
    depth_of: Callable[[torch.nn.Parameter], int] | None = None,
    depth: int = 0,
    pending: Iterable[torch.nn.Parameter] = (),
) -> list[dict]:
    """Group trainable parameters for the optimizer.

    `pending` parameters are frozen now but unfrozen later in the run (gradual unfreezing):
    they join the optimizer from the start, which skips them while they have no gradient.

    Biases and norm weights get `weight_decay=0.0`; the rest inherit the optimizer's default.
    With `layer_decay` (layer-wise learning-rate decay), a parameter at depth d of `depth`
    (0 = embeddings, `depth` = the task head) trains at `lr * layer_decay ** (depth - d)`, so
    lower layers, which hold more general features, move less.
    """
    groups: dict[tuple[bool, int], list[torch.nn.Parameter]] = {}
    later = {id(p) for p in pending}
    for name, param in named_parameters:
        if not param.requires_grad and id(param) not in later:
            continue
        is_norm_or_bias = param.ndim < 2 or any(m in name for m in NO_DECAY_MARKERS)
        level = depth_of(param) if (layer_decay and depth_of) else depth
        groups.setdefault((is_norm_or_bias, level), []).append(param)
    result = []
    for (no_decay, level), params in sorted(groups.items(), key=lambda item: item[0]):
        group: dict = {"params": params}
        if no_decay:
            group["weight_decay"] = 0.0
        if layer_decay and lr is not None:
            group["lr"] = lr * layer_decay ** (depth - level)
        result.append(group)
    return result


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
