"""Samplers as plain functions of a denoiser (in the manner of k-diffusion's `sample_*`).

A denoiser maps the noisy sample `x_t` and the step `t` (a long tensor `(b,)`) to the
model's predictions `(x_start, pred_noise)`: the clean sample `x_0` (already clipped or
thresholded) and the noise `eps` consistent with it, `x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`.
Every sampler walks a decreasing list of steps of the trained schedule, e.g. `T-1, ..., 0`,
and ends on the clean sample (`abar = 1` after step 0). Randomness comes from `generator`.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .helpers import default, randn

Denoiser = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
Posterior = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]

SAMPLERS = ("ancestral", "ddim")


def resolve_sampler(sampler: str | None, steps: int, timesteps: int, eta: float) -> str:
    """The sampler to use (by default ancestral over all T steps, else DDIM), checked against
    the number of sampling steps and DDIM's eta."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"sampling_timesteps must be in [1, timesteps={timesteps}], got {steps}")
    if not 0 <= eta <= 1:
        raise ValueError(f"ddim_sampling_eta must be in [0, 1], got {eta}")
    sampler = default(sampler, "ancestral" if steps == timesteps else "ddim")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if sampler == "ancestral" and steps != timesteps:
        raise ValueError(
            f"the ancestral sampler takes every one of the {timesteps} steps, got sampling_timesteps={steps}; "
            "use sampler='ddim' with ddim_sampling_eta=1 for ancestral-like sampling in fewer steps"
        )
    if sampler != "ddim" and eta != 0:
        raise ValueError(f"ddim_sampling_eta={eta} applies to sampler='ddim' only, got sampler={sampler!r}")
    return sampler


def spaced_timesteps(timesteps: int, count: int) -> list[int]:
    """`count` evenly spaced steps from `timesteps - 1` down to 0 (all of them when equal)."""
    if not 1 <= count <= timesteps:
        raise ValueError(f"the number of sampling steps must be in [1, {timesteps}], got {count}")
    return torch.linspace(timesteps - 1, 0, count, dtype=torch.float64).round().long().tolist()


def _steps(timesteps: Sequence[int], batch: int, device: torch.device, desc: str, progress: bool) -> Iterator[tuple[Tensor, int, int]]:
    """Yield `(t as (b,), t, next step)` along `timesteps`; the step after the last is -1 (clean)."""
    following = [*timesteps[1:], -1]
    for i, i_next in tqdm(list(zip(timesteps, following)), desc=desc, disable=not progress):
        yield torch.full((batch,), i, device=device, dtype=torch.long), i, i_next


# ------------------------------------------------------------ DDPM


def ancestral_step(
    q_posterior: Posterior, x_start: Tensor, x: Tensor, t: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """One ancestral step x_t -> x_{t-1} ~ q(x_{t-1} | x_t, x_0 = x_start) (Ho et al. 2020,
    Algorithm 2, line 4); no noise at t = 0."""
    mean, _, log_variance = q_posterior(x_start, x, t)
    noise = randn(x, generator)
    nonzero_mask = (t != 0).to(x.dtype).reshape(x.shape[0], *((1,) * (x.ndim - 1)))  # (b,) -> (b, 1, 1, 1, 1)
    return mean + nonzero_mask * (0.5 * log_variance).exp() * noise


def sample_ancestral(
    denoise: Denoiser,
    x: Tensor,
    timesteps: Sequence[int],
    *,
    q_posterior: Posterior,
    generator: torch.Generator | None = None,
    desc: str = "sampling loop time step",
    progress: bool = True,
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) over consecutive steps.

    Args:
        denoise: `(x_t, t) -> (x_start, pred_noise)`.
        x: the starting point `x_T` (or a noised input), batch first.
        timesteps: consecutive steps in decreasing order, e.g. `T-1, ..., 0`.
        q_posterior: `(x_start, x_t, t) -> (mean, variance, log_variance)` of q(x_{t-1} | x_t, x_0).
        generator: the random source of the added noise.
        desc, progress: the progress bar's label and switch.
    """
    for t, _, _ in _steps(timesteps, x.shape[0], x.device, desc, progress):
        x_start, _ = denoise(x, t)
        x = ancestral_step(q_posterior, x_start, x, t, generator)
    return x


# ------------------------------------------------------------ DDIM


def sample_ddim(
    denoise: Denoiser,
    x: Tensor,
    timesteps: Sequence[int],
    *,
    alphas_cumprod: Tensor,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    desc: str = "DDIM sampling",
    progress: bool = True,
) -> Tensor:
    """DDIM sampling (Song et al. 2021, eq. 12) over any decreasing subsequence of steps.

    From step t to the next step s (abar_s = 1 after step 0):
    `x_s = sqrt(abar_s) x_0 + sqrt(1 - abar_s - sigma²) eps + sigma z`, with
    `sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s)` (eq. 16).
    `eta = 0` is deterministic; `eta = 1` over consecutive steps is ancestral DDPM sampling.

    Args:
        denoise: `(x_t, t) -> (x_start, pred_noise)`.
        x: the starting noise `x_T`, batch first.
        timesteps: decreasing steps of the trained schedule, e.g. `spaced_timesteps(T, 50)`.
        alphas_cumprod: the trained `abar` table `(T,)`.
        eta: the noise scale in [0, 1].
        generator: the random source of the added noise (used only when eta > 0).
        desc, progress: the progress bar's label and switch.
    """
    abar = alphas_cumprod.double().tolist()
    for t, i, i_next in _steps(timesteps, x.shape[0], x.device, desc, progress):
        x_start, pred_noise = denoise(x, t)
        abar_t, abar_s = abar[i], abar[i_next] if i_next >= 0 else 1.0
        sigma = eta * math.sqrt((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s))
        x = math.sqrt(abar_s) * x_start + math.sqrt(max(1 - abar_s - sigma**2, 0.0)) * pred_noise  # eq. 12
        if sigma > 0:
            x = x + sigma * randn(x, generator)
    return x


def run_sampler(
    sampler: str,
    denoise: Denoiser,
    x: Tensor,
    timesteps: Sequence[int],
    *,
    alphas_cumprod: Tensor,
    q_posterior: Posterior,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> Tensor:
    """Run the sampler named `sampler` (one of `SAMPLERS`) from `x` along `timesteps`."""
    if sampler == "ancestral":
        return sample_ancestral(denoise, x, timesteps, q_posterior=q_posterior, generator=generator, progress=progress)
    return sample_ddim(
        denoise, x, timesteps, alphas_cumprod=alphas_cumprod, eta=eta, generator=generator, progress=progress
    )
