"""Exponential moving average of model weights, as the original Trainer kept it.

`ema = ema * decay + (1 - decay) * weights`, applied to every parameter at once with
foreach kernels (one launch per group of tensors, not a Python loop per tensor).
Buffers are not averaged: the Trainer copies the whole state dict when it resets the
average, and GaussianDiffusion's buffers are constant tables.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class EMA:
    """Constant-decay moving average (the original's `EMA(beta)`).

    Args:
        beta: the decay in [0, 1]; 0.995 keeps about the last 200 updates.
    """

    def __init__(self, beta: float):
        if not 0 <= beta <= 1:
            raise ValueError(f"the EMA decay must be in [0, 1], got {beta}")
        self.beta = beta

    def update_average(self, old: Tensor | None, new: Tensor) -> Tensor:
        """`old * beta + (1 - beta) * new`, or `new` when there is no average yet."""
        if old is None:
            return new
        return old * self.beta + (1 - self.beta) * new

    @torch.no_grad()
    def update_model_average(self, ma_model: nn.Module, current_model: nn.Module) -> None:
        """Move every parameter of `ma_model` towards the same parameter of `current_model`."""
        averages = list(ma_model.parameters())
        weights = [p.detach() for p in current_model.parameters()]
        if len(averages) != len(weights):
            raise ValueError(
                f"the models differ: {len(averages)} parameters in the average, {len(weights)} in the model"
            )
        # ema * beta + (1 - beta) * w, over all parameters at once
        torch._foreach_mul_(averages, self.beta)
        torch._foreach_add_(averages, weights, alpha=1 - self.beta)
