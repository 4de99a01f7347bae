"""One optimisation step through `accelerate`: gradient accumulation, the gradient norm
and its clipping, Adam's step, with the values left on the device (no host sync)."""

from __future__ import annotations

from typing import Iterator

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
    null_cond_prob: float = 0.0,
    prob_focus_present: float = 0.0,
    focus_present_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One step of `optimizer` (prepared by `accelerator`) over `accumulate` batches of
    the prepared `model` (a GaussianDiffusion, whose call is the training loss).

    Args:
        max_grad_norm: clip the gradient norm to this value.
        null_cond_prob: probability of dropping each video's condition (classifier-free
            guidance training).
        prob_focus_present, focus_present_mask: training as independent frames, as in
            `Unet3D.forward`.
    Returns the mean loss over batches and processes and the gradient norm, both on the
    device.
    """
    device = accelerator.device
    total, norm = torch.zeros((), device=device), torch.zeros((), device=device)
    for _ in range(accumulate):
        videos, cond, independent_frames = next(batches)
        # accelerate divides the loss, skips the gradient sync across processes and the
        # optimizer step until the last batch of the step
        with accelerator.accumulate(model):
            loss = model(
                videos, cond=cond, null_cond_prob=null_cond_prob, independent_frames=independent_frames,
                prob_focus_present=prob_focus_present, focus_present_mask=focus_present_mask,
            )  # fmt: skip
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                norm = gradient_norm(accelerator, accelerator.unwrap_model(model), max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        total += loss.detach().float()
    return accelerator.reduce(total / accumulate, reduction="mean"), norm
