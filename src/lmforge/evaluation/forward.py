"""One pass of a task module over a split, in row order, for baselines and predictions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

    from lmforge.data.datamodule import TextDataModule
    from lmforge.tasks.base import TaskModule

T = TypeVar("T")


@contextmanager
def _evaluating(module: TaskModule, device: Any) -> Iterator[None]:
    """Eval mode, no gradients, on `device`; the module's mode and device come back after."""
    import torch

    was_training, was_on = module.training, module.device
    module.eval()
    module.to(device or was_on)
    try:
        with torch.no_grad():
            yield
    finally:
        module.to(was_on)
        module.train(was_training)


def forward_split(
    module: TaskModule,
    datamodule: TextDataModule,
    split: str,
    step: Callable[[dict], T],
    device: torch.device | str | None = None,
) -> list[T]:
    """`step(batch)` over the split's evaluation batches in row order (the datamodule's own
    loaders sort them by length), in eval mode, without gradients, on `device` (default: where
    the module is)."""
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(
        datamodule.splits[split],
        batch_size=datamodule.eval_batch_size,
        collate_fn=datamodule.eval_collator(),
        # Its own generator: a loader never draws from the global RNG (dropout, resume).
        generator=torch.Generator(),
    )
    outputs = []
    with _evaluating(module, device):
        for batch in loader:
            outputs.append(step({k: v.to(module.device) for k, v in batch.items()}))
    return outputs
