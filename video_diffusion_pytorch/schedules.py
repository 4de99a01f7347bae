"""Noise schedules as pure functions of the number of steps, computed in float64."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def cosine_beta_schedule(timesteps: int, s: float = 0.008) -> Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17): `alpha_bar(t) = cos²((t/T + s)/(1 + s) · π/2)`,
    normalised so `alpha_bar(0) = 1`; betas clipped to [0, 0.9999]. Returns float64 `(T,)`."""
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    alphas_cumprod = torch.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
    return torch.clip(betas, 0, 0.9999)
