"""A token-weighted loss and perplexity over a split: what torchmetrics does not provide.

A torchmetrics `Metric`, so its state is reduced across processes under DDP.
"""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric


class TokenLoss(Metric):
    """Token-weighted mean loss over a split, and its perplexity (exp of that mean).

    Averaging per-batch perplexities would overweight short batches; this sums the loss of
    every predicted token and divides once.
    """

    full_state_update = False
    # The states `add_state` registers (declared for the type checker; no value is set here).
    total: torch.Tensor
    tokens: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state(
            "total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("tokens", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, mean_loss: torch.Tensor, tokens: torch.Tensor | int) -> None:
        tokens = torch.as_tensor(tokens, device=self.tokens.device)
        self.total += mean_loss.detach().double() * tokens
        self.tokens += tokens

    def compute(self) -> dict[str, torch.Tensor]:
        mean = (self.total / self.tokens.clamp(min=1)).float()
        return {"token_loss": mean, "perplexity": torch.tensor(math.exp(min(mean.item(), 50.0)))}
