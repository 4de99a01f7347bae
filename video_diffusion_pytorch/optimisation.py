"""One optimisation step through `accelerate`: gradient accumulation, the gradient norm
and its clipping, Adam's step, with the values left on the device (no host sync)."""

from __future__ import annotations

from typing import Any, Iterator

import torch
from accelerate import Accelerator
from torch import Tensor, nn
from torch.optim import Optimizer

from .helpers import exists
from .training_data import Batch


def gradient_norm(accelerator: Accelerator, model: nn.Module, max_grad_norm: float | None) -> Tensor:
    """The total gradient norm of `model`, unscaled, before clipping it to `max_grad_norm`
    when that is set."""
    accelerator.unscale_gradients()
    if exists(max_grad_norm):
        return nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    return nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])


def optimisation_step(
    accelerator: Accelerator,
    model: nn.Module,
    optimizer: Optimizer,
    batches: Iterator[Batch],
    accumulate: int,
    *,
    max_grad_norm: float | None = None,
    **training_options: Any,
) -> tuple[Tensor, Tensor]:
    """One step of `optimizer` (prepared by `accelerator`) over `accumulate` batches of
    the prepared `model`, which returns the training loss of `(videos, cond=...,
    independent_frames=..., **training_options)`. Returns the mean loss over batches and
    processes and the gradient norm, both on the device."""
    device = accelerator.device
    total, norm = torch.zeros((), device=device), torch.zeros((), device=device)
    for _ in range(accumulate):
        videos, cond, independent_frames = next(batches)
        # accelerate divides the loss, skips the gradient sync across processes and the
        # optimizer step until the last batch of the step
        with accelerator.accumulate(model):
            loss = model(videos, cond=cond, independent_frames=independent_frames, **training_options)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                norm = gradient_norm(accelerator, accelerator.unwrap_model(model), max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        total += loss.detach().float()
    return accelerator.reduce(total / accumulate, reduction="mean"), norm
