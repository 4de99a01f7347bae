"""Samplers as plain functions of a denoiser (in the manner of k-diffusion's `sample_*`).

A denoiser maps the noisy sample `x_t` and the step `t` (a long tensor `(b,)`) to the
model's predictions `(x_start, pred_noise)`: the clean sample `x_0` (already clipped or
thresholded) and the noise `eps` consistent with it, `x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`.
Every sampler walks a decreasing list of steps of the trained schedule, e.g. `T-1, ..., 0`,
and ends on the clean sample (`abar = 1` after step 0). Randomness comes from `generator`.

`SAMPLERS` maps each name to a sampler function and the model keywords it takes, and
`run_sampler` runs one by name;
`timestep_schedule` picks the steps (evenly spaced, or Karras et al. 2022).
The step at which `abar = 0` (a zero-terminal-SNR schedule) is handled by every sampler.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .helpers import default, randn

Denoiser = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
Posterior = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]

SPACINGS = ("uniform", "karras")


# What `sampling_timesteps < T` samples with when no sampler is named: the most coherent
# videos per network evaluation on benchmarks/quality.py (README, "Choosing a model and a sampler").
FAST_SAMPLER, FAST_SPACING, FAST_ETA = "ddpm", "uniform", 0.0


def resolve_sampler(
    sampler: str | None, steps: int, timesteps: int, eta: float | None, spacing: str | None = None
) -> tuple[str, str, float]:
    """The sampler, step spacing and DDIM eta to use, checked against the number of sampling
    steps. Unnamed, the sampler is ancestral over all T steps; over fewer steps it is
    `FAST_SAMPLER` (with `FAST_SPACING` and `FAST_ETA` unless given), or DDIM when its eta
    is given (as models saved before the fast default record it)."""
    integer = isinstance(steps, int) and not isinstance(steps, bool)
    if not (integer and 1 <= steps <= timesteps):
        kind = "" if integer else f" ({type(steps).__name__}, not an integer)"
        raise ValueError(f"sampling_timesteps must be in [1, timesteps={timesteps}], got {steps!r}{kind}")
    if eta is not None and not 0 <= eta <= 1:
        raise ValueError(f"ddim_sampling_eta must be in [0, 1], got {eta}")
    if spacing is not None and spacing not in SPACINGS:
        raise ValueError(f"sampling_spacing must be one of {SPACINGS}, got {spacing!r}")
    if sampler is None and steps < timesteps and eta is None:
        return FAST_SAMPLER, default(spacing, FAST_SPACING), FAST_ETA
    sampler = default(sampler, "ancestral" if steps == timesteps else "ddim")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {tuple(SAMPLERS)}, got {sampler!r}")
    if sampler == "ancestral" and (steps != timesteps or spacing not in (None, "uniform")):
        raise ValueError(
            f"the ancestral sampler takes every one of the {timesteps} steps, got sampling_timesteps={steps}"
            f"{'' if spacing in (None, 'uniform') else f' and sampling_spacing={spacing!r}'}; use sampler='ddpm' "
            "for ancestral sampling in fewer steps"
        )
    if sampler != "ddim" and eta not in (None, 0):
        raise ValueError(f"ddim_sampling_eta={eta} applies to sampler='ddim' only, got sampler={sampler!r}")
    return sampler, default(spacing, "uniform"), default(eta, 0.0)


def spaced_timesteps(timesteps: int, count: int) -> list[int]:
    """`count` evenly spaced steps from `timesteps - 1` down to 0 (all of them when equal)."""
    if not 1 <= count <= timesteps:
        raise ValueError(f"the number of sampling steps must be in [1, {timesteps}], got {count}")
    return torch.linspace(timesteps - 1, 0, count, dtype=torch.float64).round().long().tolist()


def karras_timesteps(alphas_cumprod: Tensor, count: int, rho: float = 7.0, sigma_max: float = 80.0) -> list[int]:
    """`count` decreasing steps from `T - 1` to 0 whose noise levels follow Karras et al. (2022),
    eq. 5: `sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho`,
    with `sigma = sqrt((1 - abar) / abar)`, each put on the trained step of the nearest log
    sigma. `sigma_min` is the first step's; `sigma_max` is the paper's 80 (Table 1) or the
    schedule's largest finite sigma if smaller: the cosine schedule's last sigma (6e4) would
    spend most steps within its last few trained steps. The first step is always `T - 1`
    (pure noise), and steps are kept distinct so that `count` network evaluations are made."""
    timesteps = alphas_cumprod.shape[0]
    if not 1 <= count <= timesteps:
        raise ValueError(f"the number of sampling steps must be in [1, {timesteps}], got {count}")
    abar = alphas_cumprod.double()
    log_sigma = 0.5 * ((1 - abar) / abar).log()  # (T,), inf where abar = 0
    finite = log_sigma[torch.isfinite(log_sigma)]
    ramp = torch.linspace(0, 1, count, dtype=torch.float64)
    lo, hi = finite.min().exp() ** (1 / rho), min(finite.max().exp(), sigma_max) ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho  # (count,), eq. 5
    nearest = (sigmas.log()[:, None] - log_sigma[None, :]).abs().argmin(dim=1).tolist()
    steps = [timesteps - 1]
    for i, step in enumerate(nearest[1:], start=1):
        # strictly decreasing, leaving room for the steps still to come
        steps.append(max(min(step, steps[-1] - 1), count - 1 - i))
    return steps


def timestep_schedule(alphas_cumprod: Tensor, count: int, spacing: str = "uniform") -> list[int]:
    """The `count` steps a sampler visits: 'uniform' (`spaced_timesteps`) or 'karras'."""
    if spacing == "uniform":
        return spaced_timesteps(alphas_cumprod.shape[0], count)
    if spacing == "karras":
        return karras_timesteps(alphas_cumprod, count)
    raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")


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


# ------------------------------------------------------------ DPM-Solver++(2M) SDE


def _alpha_sigma_lambda(abar: float) -> tuple[float, float, float]:
    """`alpha = sqrt(abar)`, `sigma = sqrt(1 - abar)` and the half log-SNR `lambda = log(alpha / sigma)`
    (-inf at abar = 0, +inf at abar = 1)."""
    alpha, sigma = math.sqrt(abar), math.sqrt(1 - abar)
    if alpha == 0:
        return alpha, sigma, -math.inf
    return alpha, sigma, math.inf if sigma == 0 else math.log(alpha / sigma)


def sample_dpmpp_2m_sde(
    denoise: Denoiser,
    x: Tensor,
    timesteps: Sequence[int],
    *,
    alphas_cumprod: Tensor,
    eta: float = 1.0,
    generator: torch.Generator | None = None,
    desc: str = "DPM-Solver++(2M) SDE sampling",
    progress: bool = True,
) -> Tensor:
    """DPM-Solver++(2M) for the diffusion SDE (Lu et al. 2022, "DPM-Solver++", the SDE
    solver of §5 and Appendix; the multistep form of k-diffusion's `sample_dpmpp_2m_sde`,
    midpoint variant), written for the variance-preserving `x_t = alpha_t x_0 + sigma_t eps`.

    With `h = lambda_s - lambda_t` (`lambda = log(alpha / sigma)`), from step t to the next s:
    `x_s = (sigma_s / sigma_t) e^{-eta h} x_t + alpha_s (1 - e^{-(1+eta) h}) D_t
           + alpha_s (1 - e^{-(1+eta) h}) / (2 r) (D_t - D_prev) + sigma_s sqrt(1 - e^{-2 eta h}) z`,
    `r = h_prev / h`, `D` the denoised prediction (x_0); the correction term is left out on the
    first step. At `eta = 1` without the correction it is DDPM's posterior step. The step into
    the clean sample returns `D`.

    Args:
        denoise: `(x_t, t) -> (x_start, pred_noise)`.
        x: the starting noise `x_T`, batch first.
        timesteps: decreasing steps of the trained schedule.
        alphas_cumprod: the trained `abar` table `(T,)`.
        eta: the noise scale: 1 solves the SDE, 0 the probability-flow ODE (DPM-Solver++(2M)).
        generator, desc, progress: as in `sample_ddim`.
    """
    abar = alphas_cumprod.double().tolist()
    previous, h_previous = None, None
    for t, i, i_next in _steps(timesteps, x.shape[0], x.device, desc, progress):
        x_start, _ = denoise(x, t)
        if i_next < 0:
            return x_start
        _, sigma_t, lambda_t = _alpha_sigma_lambda(abar[i])
        alpha_s, sigma_s, lambda_s = _alpha_sigma_lambda(abar[i_next])
        h = lambda_s - lambda_t
        decay = math.exp(-(1 + eta) * h)  # e^{-(1 + eta) h}; 0 from abar_t = 0, where h is infinite
        keep = sigma_s / sigma_t * (math.exp(-eta * h) if eta > 0 else 1.0)
        x = keep * x + alpha_s * (1 - decay) * x_start
        if previous is not None and math.isfinite(h_previous):
            x = x + alpha_s * (1 - decay) * (h / h_previous) / 2 * (x_start - previous)  # second-order term
        if eta > 0:
            x = x + sigma_s * math.sqrt(-math.expm1(-2 * eta * h)) * randn(x, generator)
        previous, h_previous = x_start, h
    return x


# ------------------------------------------------------------ chosen by name

# DDPM over any subset of steps: the posterior step of the respaced process, which is
# DDIM's update at eta = 1 (Song et al. 2021, eq. 16 and §4.1; Nichol & Dhariwal 2021, §4)
_DDPM = (partial(sample_ddim, eta=1.0, desc="DDPM sampling"), ("alphas_cumprod",))

# each name: the sampler function and which of `run_sampler`'s model keywords it takes
SAMPLERS: dict[str, tuple[Callable[..., Tensor], tuple[str, ...]]] = {
    "ancestral": (sample_ancestral, ("q_posterior",)),
    "ddim": (sample_ddim, ("alphas_cumprod", "eta")),
    "ddpm": _DDPM,
    # Euler ancestral (Karras et al. 2022; k-diffusion's `sample_euler_ancestral`) on the
    # trained noise levels is the same update: in sigma = sqrt((1 - abar) / abar) its Euler
    # step lands on DDIM's deterministic part and its sigma_up is eq. 16's sigma at eta = 1
    # (shown step by step in tests/test_samplers.py), so the name runs DDPM.
    "euler_ancestral": _DDPM,
    "dpmpp_2m_sde": (sample_dpmpp_2m_sde, ("alphas_cumprod",)),
}


def run_sampler(
    sampler: str,
    denoise: Denoiser,
    x: Tensor,
    timesteps: Sequence[int],
    *,
    alphas_cumprod: Tensor,
    q_posterior: Posterior | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> Tensor:
    """Run the sampler named `sampler` (one of `SAMPLERS`) from `x` along `timesteps`: the
    trained `alphas_cumprod` `(T,)` for every sampler, `q_posterior` for 'ancestral', `eta`
    for 'ddim' (the others are stochastic with eta 1)."""
    function, takes = SAMPLERS[sampler]
    model = dict(alphas_cumprod=alphas_cumprod, q_posterior=q_posterior, eta=eta)
    return function(denoise, x, timesteps, **{name: model[name] for name in takes}, generator=generator, progress=progress)
