"""Sampling loops as plain functions of a one-step update."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm


def sample_ancestral(
    p_sample: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    timesteps: Sequence[int],
    *,
    desc: str = "sampling loop time step",
    progress: bool = True,
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2).

    Args:
        p_sample: one reverse step `(x_t, t of shape (b,)) -> x_{t-1}`.
        x: the starting point `x_T` (or a noised input), any shape with batch first.
        timesteps: the steps to take, in order (e.g. T-1, ..., 0).
        desc: the progress bar's label.
        progress: show a progress bar.
    """
    batch = x.shape[0]
    for i in tqdm(timesteps, desc=desc, total=len(timesteps), disable=not progress):
        t = torch.full((batch,), i, device=x.device, dtype=torch.long)
        x = p_sample(x, t)
    return x
