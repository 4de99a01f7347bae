"""Noise schedules as pure functions of the number of steps, computed in float64.

Each returns the betas `(T,)`; `alphas_cumprod = cumprod(1 - betas)` follows.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _betas_from_alphas_cumprod(alphas_cumprod: Tensor, max_beta: float) -> Tensor:
    """`beta_t = 1 - abar_t / abar_{t-1}` from `abar` at `T + 1` points, clipped to [0, max_beta]."""
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
    return torch.clip(betas, 0, max_beta)


def cosine_beta_schedule(timesteps: int, s: float = 0.008) -> Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17): `alpha_bar(t) = cos²((t/T + s)/(1 + s) · π/2)`,
    normalised so `alpha_bar(0) = 1`; betas clipped to [0, 0.9999]. Returns float64 `(T,)`."""
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    alphas_cumprod = torch.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    return _betas_from_alphas_cumprod(alphas_cumprod, max_beta=0.9999)


def linear_beta_schedule(timesteps: int) -> Tensor:
    """Linear betas from 1e-4 to 0.02 (Ho et al. 2020, §4), scaled by `1000 / T` so any T
    spans the same noise levels (Nichol & Dhariwal 2021, §3.2); clipped to 0.999, which
    only matters below 50 steps. Returns float64 `(T,)`."""
    scale = 1000 / timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64).clip(max=0.999)


def sigmoid_beta_schedule(timesteps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> Tensor:
    """Sigmoid schedule (Jabri et al. 2022, "Scalable Adaptive Computation", Algorithm 2 /
    Chen 2023): `alpha_bar(t) ∝ sigmoid(end / tau) - sigmoid(((end - start) t/T + start) / tau)`,
    normalised so `alpha_bar(0) = 1`; betas clipped to [0, 0.999]. Returns float64 `(T,)`."""
    t = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64) / timesteps
    v_start = torch.tensor(start / tau, dtype=torch.float64).sigmoid()
    v_end = torch.tensor(end / tau, dtype=torch.float64).sigmoid()
    alphas_cumprod = (v_end - ((t * (end - start) + start) / tau).sigmoid()) / (v_end - v_start)
    return _betas_from_alphas_cumprod(alphas_cumprod, max_beta=0.999)


def rectified_flow_beta_schedule(timesteps: int) -> Tensor:
    """The straight path of rectified flow, `x = (1 - t) x_0 + t eps` (Esser et al. 2024,
    eq. 3), seen as a variance-preserving process: dividing by `sqrt((1 - t)² + t²)` gives
    `alpha_bar(t) = (1 - t)² / ((1 - t)² + t²)`, here at the levels `t = i / T`, i = 1..T.
    It ends at pure noise (`alpha_bar_T = 0`, beta_T = 1): zero terminal signal-to-noise
    ratio, which the noise-predicting objective cannot use (`process.GaussianProcess`
    refuses it). Returns float64 `(T,)`."""
    t = torch.linspace(0, 1, timesteps + 1, dtype=torch.float64)
    alphas_cumprod = (1 - t) ** 2 / ((1 - t) ** 2 + t**2)
    return _betas_from_alphas_cumprod(alphas_cumprod, max_beta=1.0)


BETA_SCHEDULES = {
    "cosine": cosine_beta_schedule,
    "linear": linear_beta_schedule,
    "sigmoid": sigmoid_beta_schedule,
    "rectified_flow": rectified_flow_beta_schedule,
}
# the schedules whose last step is pure noise (alpha_bar_T = 0)
PURE_NOISE_AT_THE_END = frozenset({"rectified_flow"})

