"""The Gaussian diffusion process of DDPM (Ho et al. 2020) over a fixed noise schedule: its
tables, the forward process q and its posterior, the conversions between the noise, the
clean sample and the velocity, and the training objective. Pure maths on tensors: nothing
here knows the network (`diffusion.GaussianDiffusion` joins the two).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor, nn

from .checks import check_int
from .helpers import default, extract
from .schedules import BETA_SCHEDULES, PURE_NOISE_AT_THE_END

# what the network predicts: eps (the original), the clean sample x_0, the velocity v, or
# the velocity of rectified flow's straight path
OBJECTIVES = ("pred_noise", "pred_x0", "pred_v", "pred_flow")
LOSS_TYPES = ("l1", "l2")
# how training draws its steps: uniformly (the original), or logit-normal in t = step / T
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")

# Rectified flow as Esser et al. (2024) train it: the straight path, the network predicting
# its velocity, logit-normal times (§3.1) and a squared loss. On benchmarks/quality.py it made
# far more coherent videos than the default at every number of network evaluations, for the
# same training steps (README, "Choosing a model and a sampler").
RECTIFIED_FLOW = dict(beta_schedule="rectified_flow", objective="pred_flow", timestep_sampling="logit_normal", loss_type="l2")


class GaussianProcess(nn.Module):
    """The tables of a noise schedule as float32 buffers, and the closed-form maths on them.

    Buffer names are the original library's (they are part of its state dicts): `betas`,
    `alphas_cumprod`, `alphas_cumprod_prev`, `sqrt_alphas_cumprod`,
    `sqrt_one_minus_alphas_cumprod`, `log_one_minus_alphas_cumprod`,
    `sqrt_recip_alphas_cumprod`, `sqrt_recipm1_alphas_cumprod`, `posterior_variance`,
    `posterior_log_variance_clipped`, `posterior_mean_coef1`, `posterior_mean_coef2`.

    Args:
        timesteps: diffusion steps T.
        beta_schedule: 'cosine' (the original), 'linear', 'sigmoid' or 'rectified_flow'; see `schedules`.
        objective: what the network predicts: 'pred_noise' (eps, the original), 'pred_x0'
            (the clean sample), 'pred_v' (`v = sqrt(abar) eps - sqrt(1 - abar) x_0`,
            Salimans & Ho 2022, §4) or 'pred_flow' (rectified flow's velocity `eps - x_0`
            from the flow's `x = (1 - t) x_0 + t eps`, Esser et al. 2024, eq. 3, which is
            `x_t / (sqrt(abar) + sqrt(1 - abar))` at `t = sqrt(1 - abar) / (sqrt(abar) + sqrt(1 - abar))`).
        loss_type: 'l1' or 'l2' between the target and the network's output.
        timestep_sampling: the steps training draws: 'uniform' (the original) or
            'logit_normal', `step / T ~ sigmoid(N(0, 1))` (Esser et al. 2024, §3.1), which
            trains the middle of the path most. `RECTIFIED_FLOW` holds the whole recipe.
        min_snr_loss_weight: weight the loss per sample by the clipped signal-to-noise
            ratio (Min-SNR, Hang et al. 2023, §3.4).
        min_snr_gamma: the clip of Min-SNR weighting, gamma.
        use_dynamic_thres: dynamic thresholding of the predicted `x_0` (Imagen, Saharia
            et al. 2022, §2.3) instead of clipping to [-1, 1].
        dynamic_thres_percentile: the quantile of `|x_0|` used as threshold.
    """

    def __init__(
        self,
        timesteps: int,
        *,
        beta_schedule: str = "cosine",
        objective: str = "pred_noise",
        loss_type: str = "l1",
        timestep_sampling: str = "uniform",
        min_snr_loss_weight: bool = False,
        min_snr_gamma: float = 5.0,
        use_dynamic_thres: bool = False,
        dynamic_thres_percentile: float = 0.9,
    ):
        super().__init__()
        check_int("timesteps", timesteps)
        if beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {tuple(BETA_SCHEDULES)}, got {beta_schedule!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        if timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise ValueError(f"timestep_sampling must be one of {TIMESTEP_SAMPLINGS}, got {timestep_sampling!r}")
        if objective == "pred_noise" and beta_schedule in PURE_NOISE_AT_THE_END:
            # x_T is then pure noise: predicting that noise says nothing of x_0 (Lin et al. 2024, §3.2)
            raise ValueError(
                f"beta_schedule={beta_schedule!r} ends at pure noise, where objective='pred_noise' cannot "
                "recover the sample: use 'pred_v', 'pred_x0' or 'pred_flow'"
            )
        if not min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be positive, got {min_snr_gamma}")
        if not 0 < dynamic_thres_percentile <= 1:
            raise ValueError(f"dynamic_thres_percentile must be in (0, 1], got {dynamic_thres_percentile}")
        self.num_timesteps = int(timesteps)
        self.objective = objective
        self.loss_type = loss_type
        self.timestep_sampling = timestep_sampling
        self.min_snr_loss_weight = min_snr_loss_weight
        self.min_snr_gamma = min_snr_gamma
        self.use_dynamic_thres = use_dynamic_thres
        self.dynamic_thres_percentile = dynamic_thres_percentile

        betas = BETA_SCHEDULES[beta_schedule](timesteps)
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)

        def register_buffer(name: str, value: Tensor) -> None:
            self.register_buffer(name, value.to(torch.float32))

        register_buffer("betas", betas)
        register_buffer("alphas_cumprod", alphas_cumprod)
        register_buffer("alphas_cumprod_prev", alphas_cumprod_prev)

        # q(x_t | x_0) (Ho et al. 2020, eq. 4)
        register_buffer("sqrt_alphas_cumprod", torch.sqrt(alphas_cumprod))
        register_buffer("sqrt_one_minus_alphas_cumprod", torch.sqrt(1.0 - alphas_cumprod))
        register_buffer("log_one_minus_alphas_cumprod", torch.log(1.0 - alphas_cumprod))
        # kept finite where a pure-noise schedule reaches abar = 0 (no objective it allows reads them there)
        register_buffer("sqrt_recip_alphas_cumprod", torch.sqrt(1.0 / alphas_cumprod.clamp(min=1e-20)))
        register_buffer("sqrt_recipm1_alphas_cumprod", torch.sqrt(1.0 / alphas_cumprod.clamp(min=1e-20) - 1))

        # q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 6-7)
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        register_buffer("posterior_variance", posterior_variance)
        # the variance is 0 at t = 0, so the log is clamped
        register_buffer("posterior_log_variance_clipped", torch.log(posterior_variance.clamp(min=1e-20)))
        register_buffer("posterior_mean_coef1", betas * torch.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod))
        register_buffer(
            "posterior_mean_coef2", (1.0 - alphas_cumprod_prev) * torch.sqrt(alphas) / (1.0 - alphas_cumprod)
        )

    # ------------------------------------------------------------ forward process q

    def q_mean_variance(self, x_start: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and log variance of q(x_t | x_0) (Ho et al. 2020, eq. 4)."""
        mean = extract(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
        variance = extract(1.0 - self.alphas_cumprod, t, x_start.shape)
        log_variance = extract(self.log_one_minus_alphas_cumprod, t, x_start.shape)
        return mean, variance, log_variance

    def q_sample(self, x_start: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """Sample x_t ~ q(x_t | x_0): `sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps` (eq. 4)."""
        noise = default(noise, lambda: torch.randn_like(x_start))
        return (
            extract(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
            + extract(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise
        )

    def q_posterior(self, x_start: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance, clipped log variance of q(x_{t-1} | x_t, x_0) (eq. 6-7)."""
        posterior_mean = (
            extract(self.posterior_mean_coef1, t, x_t.shape) * x_start
            + extract(self.posterior_mean_coef2, t, x_t.shape) * x_t
        )
        posterior_variance = extract(self.posterior_variance, t, x_t.shape)
        posterior_log_variance = extract(self.posterior_log_variance_clipped, t, x_t.shape)
        return posterior_mean, posterior_variance, posterior_log_variance

    # ------------------------------------------------------------ parametrisations (eps, x_0, v)

    def predict_start_from_noise(self, x_t: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_0 from x_t and the noise in it: `(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)` (eq. 4 inverted)."""
        return (
            extract(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
            - extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * noise
        )

    def predict_noise_from_start(self, x_t: Tensor, t: Tensor, x_start: Tensor) -> Tensor:
        """eps from x_t and x_0: `(x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)` (eq. 4 inverted),
        finite where `abar_t = 0` too."""
        return (x_t - extract(self.sqrt_alphas_cumprod, t, x_t.shape) * x_start) / extract(
            self.sqrt_one_minus_alphas_cumprod, t, x_t.shape
        )

    def predict_v(self, x_start: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """The velocity `v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0` (Salimans & Ho 2022, §4)."""
        return (
            extract(self.sqrt_alphas_cumprod, t, x_start.shape) * noise
            - extract(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * x_start
        )

    def predict_start_from_v(self, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        """x_0 from x_t and v: `sqrt(abar_t) x_t - sqrt(1 - abar_t) v` (Salimans & Ho 2022, §4)."""
        return (
            extract(self.sqrt_alphas_cumprod, t, x_t.shape) * x_t
            - extract(self.sqrt_one_minus_alphas_cumprod, t, x_t.shape) * v
        )

    def _flow_scale(self, t: Tensor, shape: torch.Size) -> tuple[Tensor, Tensor]:
        """`(alpha + sigma, sigma)` at steps t, broadcast to `shape`: the flow's sample is
        `x_t / (alpha + sigma)` and its time `sigma / (alpha + sigma)`."""
        alpha, sigma = extract(self.sqrt_alphas_cumprod, t, shape), extract(self.sqrt_one_minus_alphas_cumprod, t, shape)
        return alpha + sigma, sigma

    # ------------------------------------------------------------ objectives

    def network_input(self, x_t: Tensor, t: Tensor) -> Tensor:
        """What the network sees at `x_t`: `x_t` itself, or for 'pred_flow' the flow's sample
        `(1 - t) x_0 + t eps = x_t / (sqrt(abar_t) + sqrt(1 - abar_t))`."""
        if self.objective != "pred_flow":
            return x_t
        return x_t / self._flow_scale(t, x_t.shape)[0]

    def predict_start_from_output(self, x_t: Tensor, t: Tensor, model_output: Tensor) -> Tensor:
        """x_0 from the network's output under `self.objective`."""
        if self.objective == "pred_noise":
            return self.predict_start_from_noise(x_t, t, model_output)
        if self.objective == "pred_v":
            return self.predict_start_from_v(x_t, t, model_output)
        if self.objective == "pred_flow":  # x_0 = x_flow - t (eps - x_0), in x_t's terms
            scale, sigma = self._flow_scale(t, x_t.shape)
            return (x_t - sigma * model_output) / scale
        return model_output

    def training_target(self, x_start: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """What the network learns to output at `x_t = q_sample(x_start, t, noise)` under `objective`."""
        if self.objective == "pred_noise":
            return noise
        if self.objective == "pred_x0":
            return x_start
        if self.objective == "pred_flow":  # d/dt of (1 - t) x_0 + t eps (Esser et al. 2024, eq. 1 and 3)
            return noise - x_start
        return self.predict_v(x_start, t, noise)

    def sample_timesteps(self, batch: int, device: torch.device) -> Tensor:
        """Steps `(batch,)` for training under `timestep_sampling`; logit-normal times are put
        on the step at or above them, `ceil(t T) - 1`."""
        if self.timestep_sampling == "uniform":
            return torch.randint(0, self.num_timesteps, (batch,), device=device).long()
        times = torch.randn(batch, device=device).sigmoid()  # logit-normal(0, 1), Esser et al. 2024, §3.1
        return (times * self.num_timesteps).ceil().long().sub(1).clamp(0, self.num_timesteps - 1)

    def min_snr_weight(self, t: Tensor) -> Tensor:
        """Min-SNR-gamma loss weights `(b,)` (Hang et al. 2023, eq. 10 and §3.4), with
        `snr_t = abar_t / (1 - abar_t)`: `min(snr, gamma) / snr` when predicting eps,
        `min(snr, gamma)` for x_0, `min(snr, gamma) / (snr + 1)` for v, and for the flow's
        velocity, whose error is that of x_0 over its time t, `min(snr, gamma) t²`."""
        alphas_cumprod = self.alphas_cumprod.gather(-1, t)
        snr = alphas_cumprod / (1 - alphas_cumprod)
        clipped_snr = snr.clamp(max=self.min_snr_gamma)
        if self.objective == "pred_noise":
            return clipped_snr / snr
        if self.objective == "pred_v":
            return clipped_snr / (snr + 1)
        if self.objective == "pred_flow":
            scale, sigma = self._flow_scale(t, t.shape)
            return clipped_snr * (sigma / scale) ** 2
        return clipped_snr

    def loss(self, model_output: Tensor, target: Tensor, t: Tensor) -> Tensor:
        """The l1 or l2 distance between the network's output and its target (Ho et al. 2020,
        eq. 14), optionally Min-SNR weighted per sample."""
        distance = F.l1_loss if self.loss_type == "l1" else F.mse_loss
        if not self.min_snr_loss_weight:
            return distance(target, model_output)
        loss = reduce(distance(target, model_output, reduction="none"), "b ... -> b", "mean")
        return (loss * self.min_snr_weight(t)).mean()

    def _clip_start(self, x_start: Tensor) -> Tensor:
        """Clip the predicted x_0 to [-1, 1], or with dynamic thresholding to [-s, s] / s
        where s is a per-sample quantile of |x_0|, at least 1 (Imagen, §2.3)."""
        s = 1.0
        if self.use_dynamic_thres:
            # (b, c, f, h, w) -> (b, c*f*h*w) -> (b,)
            s = torch.quantile(
                rearrange(x_start, "b ... -> b (...)").abs(), self.dynamic_thres_percentile, dim=-1
            )
            s = s.clamp(min=1.0).view(-1, *((1,) * (x_start.ndim - 1)))
        return x_start.clamp(-s, s) / s
