"""GaussianDiffusion: the DDPM forward process, its learned reverse, loss and sampling
(Ho et al. 2020; Video Diffusion Models, Ho et al. 2022)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .helpers import (
    default,
    exists,
    extract,
    is_list_of_strings,
    normalize_to_neg_one_to_one,
    unnormalize_to_zero_to_one,
)
from .hub import PretrainedMixin
from .samplers import sample_ancestral
from .schedules import cosine_beta_schedule
from .text import embed_texts

LOSS_TYPES = ("l1", "l2")


class GaussianDiffusion(PretrainedMixin, nn.Module):
    """Gaussian diffusion over videos `(b, channels, num_frames, image_size, image_size)`.

    Videos enter `forward` in [0, 1] and are mapped to [-1, 1]; `sample` returns [0, 1].

    Args:
        denoise_fn: the noise predictor, a `Unet3D`.
        image_size: height and width of the videos.
        num_frames: frames per video.
        text_use_bert_cls: embed text conditions with BERT's CLS vector instead of the
            mean over tokens.
        channels: video channels.
        timesteps: diffusion steps T.
        loss_type: 'l1' or 'l2' between true and predicted noise.
        use_dynamic_thres: dynamic thresholding of the predicted `x_0` (Imagen, Saharia
            et al. 2022, §2.3) instead of clipping to [-1, 1].
        dynamic_thres_percentile: the quantile of `|x_0|` used as threshold.
        bert_model: BERT for text conditions (a Hugging Face name or local folder); see
            `video_diffusion_pytorch.text`.
    """

    def __init__(
        self,
        denoise_fn: nn.Module,
        *,
        image_size: int,
        num_frames: int,
        text_use_bert_cls: bool = False,
        channels: int = 3,
        timesteps: int = 1000,
        loss_type: str = "l1",
        use_dynamic_thres: bool = False,
        dynamic_thres_percentile: float = 0.9,
        bert_model: str | None = None,
    ):
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        if timesteps < 1:
            raise ValueError(f"timesteps must be at least 1, got {timesteps}")
        if not 0 < dynamic_thres_percentile <= 1:
            raise ValueError(f"dynamic_thres_percentile must be in (0, 1], got {dynamic_thres_percentile}")
        denoiser_channels = getattr(denoise_fn, "channels", channels)
        if denoiser_channels != channels:
            raise ValueError(f"denoise_fn takes {denoiser_channels} channels but channels={channels}")

        self.config: dict[str, Any] = dict(
            image_size=image_size, num_frames=num_frames, text_use_bert_cls=text_use_bert_cls,
            channels=channels, timesteps=timesteps, loss_type=loss_type,
            use_dynamic_thres=use_dynamic_thres, dynamic_thres_percentile=dynamic_thres_percentile,
            bert_model=bert_model,
        )  # fmt: skip
        self.channels = channels
        self.image_size = image_size
        self.num_frames = num_frames
        self.denoise_fn = denoise_fn
        self.text_use_bert_cls = text_use_bert_cls
        self.bert_model = bert_model
        self.loss_type = loss_type
        self.use_dynamic_thres = use_dynamic_thres
        self.dynamic_thres_percentile = dynamic_thres_percentile

        betas = cosine_beta_schedule(timesteps)
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)
        self.num_timesteps = int(betas.shape[0])

        def register_buffer(name: str, value: Tensor) -> None:
            self.register_buffer(name, value.to(torch.float32))

        register_buffer("betas", betas)
        register_buffer("alphas_cumprod", alphas_cumprod)
        register_buffer("alphas_cumprod_prev", alphas_cumprod_prev)

        # q(x_t | x_0) (Ho et al. 2020, eq. 4)
        register_buffer("sqrt_alphas_cumprod", torch.sqrt(alphas_cumprod))
        register_buffer("sqrt_one_minus_alphas_cumprod", torch.sqrt(1.0 - alphas_cumprod))
        register_buffer("log_one_minus_alphas_cumprod", torch.log(1.0 - alphas_cumprod))
        register_buffer("sqrt_recip_alphas_cumprod", torch.sqrt(1.0 / alphas_cumprod))
        register_buffer("sqrt_recipm1_alphas_cumprod", torch.sqrt(1.0 / alphas_cumprod - 1))

        # q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 6-7)
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        register_buffer("posterior_variance", posterior_variance)
        # the variance is 0 at t = 0, so the log is clamped
        register_buffer("posterior_log_variance_clipped", torch.log(posterior_variance.clamp(min=1e-20)))
        register_buffer("posterior_mean_coef1", betas * torch.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod))
        register_buffer(
            "posterior_mean_coef2", (1.0 - alphas_cumprod_prev) * torch.sqrt(alphas) / (1.0 - alphas_cumprod)
        )

    # ------------------------------------------------------------ boundary checks

    @property
    def device(self) -> torch.device:
        return self.betas.device

    @property
    def has_cond(self) -> bool:
        return bool(getattr(self.denoise_fn, "has_cond", False))

    def _video_shape(self, batch: int | str = "b") -> tuple:
        return (batch, self.channels, self.num_frames, self.image_size, self.image_size)

    def _check_videos(self, videos: Any, name: str = "videos") -> None:
        if not isinstance(videos, Tensor):
            raise TypeError(f"{name} must be a tensor of shape {self._video_shape()}, got {type(videos).__name__}")
        if videos.ndim != 5 or videos.shape[1:] != self._video_shape()[1:]:
            raise ValueError(
                f"expected {name} of shape {self._video_shape()} (batch, channels, frames, height, width), "
                f"got {tuple(videos.shape)}"
            )

    def _embed_cond(self, cond: Any, device: torch.device) -> Tensor | None:
        """Turn a list of strings into BERT embeddings; check the model accepts strings."""
        if isinstance(cond, str):
            cond = [cond]
        if not is_list_of_strings(cond):
            return cond
        if not getattr(self.denoise_fn, "use_bert_text_cond", False):
            raise TypeError(
                "got text conditions, but the denoiser is not text-conditioned: build it with "
                "Unet3D(..., use_bert_text_cond=True), or pass embeddings as a tensor"
            )
        return embed_texts(cond, return_cls_repr=self.text_use_bert_cls, device=device, model=self.bert_model)

    def _check_guidance(self, cond_scale: float) -> None:
        if cond_scale != 1 and not self.has_cond:
            raise ValueError(
                f"cond_scale={cond_scale} asks for classifier-free guidance, but the denoiser is "
                "unconditional; use cond_scale=1"
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

    def predict_start_from_noise(self, x_t: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_0 from x_t and the noise in it: `(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)` (eq. 4 inverted)."""
        return (
            extract(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
            - extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * noise
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

    # ------------------------------------------------------------ reverse process p

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

    def p_mean_variance(
        self, x: Tensor, t: Tensor, clip_denoised: bool, cond: Tensor | None = None, cond_scale: float = 1.0
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and log variance of p(x_{t-1} | x_t): the posterior around the
        x_0 predicted from the (guided) noise prediction."""
        noise = self.denoise_fn.forward_with_cond_scale(x, t, cond=cond, cond_scale=cond_scale)
        x_recon = self.predict_start_from_noise(x, t=t, noise=noise)
        if clip_denoised:
            x_recon = self._clip_start(x_recon)
        return self.q_posterior(x_start=x_recon, x_t=x, t=t)

    @torch.inference_mode()
    def p_sample(
        self,
        x: Tensor,
        t: Tensor,
        cond: Tensor | None = None,
        cond_scale: float = 1.0,
        clip_denoised: bool = True,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """One ancestral step x_t -> x_{t-1} (Ho et al. 2020, Algorithm 2); no noise at t = 0."""
        model_mean, _, model_log_variance = self.p_mean_variance(
            x=x, t=t, clip_denoised=clip_denoised, cond=cond, cond_scale=cond_scale
        )
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        nonzero_mask = (t != 0).to(x.dtype).reshape(x.shape[0], *((1,) * (x.ndim - 1)))
        return model_mean + nonzero_mask * (0.5 * model_log_variance).exp() * noise

    @torch.inference_mode()
    def p_sample_loop(
        self,
        shape: tuple[int, ...],
        cond: Tensor | None = None,
        cond_scale: float = 1.0,
        *,
        generator: torch.Generator | None = None,
        progress: bool = True,
    ) -> Tensor:
        """All T ancestral steps from pure noise; returns videos in [0, 1]."""
        img = torch.randn(shape, generator=generator, device=self.device)

        def step(x: Tensor, t: Tensor) -> Tensor:
            return self.p_sample(x, t, cond=cond, cond_scale=cond_scale, generator=generator)

        img = sample_ancestral(step, img, range(self.num_timesteps - 1, -1, -1), progress=progress)
        return unnormalize_to_zero_to_one(img)

    @torch.inference_mode()
    def sample(
        self,
        cond: Tensor | list[str] | None = None,
        cond_scale: float = 1.0,
        batch_size: int = 16,
        *,
        generator: torch.Generator | None = None,
        progress: bool = True,
    ) -> Tensor:
        """Generate videos `(b, channels, num_frames, image_size, image_size)` in [0, 1].

        Args:
            cond: conditioning `(b, cond_dim)` or a list of b strings (text-conditioned
                models); sets the batch size when given.
            cond_scale: classifier-free guidance scale (1 is no guidance).
            batch_size: number of videos for an unconditional model.
            generator: the random source of the noise.
            progress: show a progress bar.
        """
        self._check_guidance(cond_scale)
        cond = self._embed_cond(cond, self.device)
        if self.has_cond and not exists(cond):
            raise ValueError("this model is conditional: pass cond (a tensor or, for text models, a list of strings)")
        batch_size = cond.shape[0] if exists(cond) else batch_size
        return self.p_sample_loop(
            self._video_shape(batch_size), cond=cond, cond_scale=cond_scale, generator=generator, progress=progress
        )

    @torch.inference_mode()
    def interpolate(
        self,
        x1: Tensor,
        x2: Tensor,
        t: int | None = None,
        lam: float = 0.5,
        *,
        cond: Tensor | list[str] | None = None,
        cond_scale: float = 1.0,
        generator: torch.Generator | None = None,
        progress: bool = True,
    ) -> Tensor:
        """Interpolate two video batches in latent space (the DDPM paper's §4.3 interpolation).

        Both are noised to step `t` (default T - 1), mixed as `(1 - lam) * x1 + lam * x2`,
        and denoised from step t back to 0.

        Args:
            x1, x2: videos in [0, 1], shape `(b, channels, num_frames, image_size, image_size)`.
            t: the step to noise to, in [0, T).
            lam: the weight of x2.
            cond, cond_scale: conditioning and guidance, as in `sample`.
        Returns videos in [0, 1] of the same shape.
        """
        self._check_videos(x1, "x1")
        self._check_videos(x2, "x2")
        if x1.shape != x2.shape:
            raise ValueError(f"x1 and x2 must have the same shape, got {tuple(x1.shape)} and {tuple(x2.shape)}")
        t = default(t, self.num_timesteps - 1)
        if not 0 <= t < self.num_timesteps:
            raise ValueError(f"t must be in [0, {self.num_timesteps}), got {t}")
        self._check_guidance(cond_scale)
        cond = self._embed_cond(cond, x1.device)

        b = x1.shape[0]
        t_batched = torch.full((b,), t, device=x1.device, dtype=torch.long)
        xt1, xt2 = (
            self.q_sample(normalize_to_neg_one_to_one(x), t=t_batched, noise=torch.randn(
                x.shape, generator=generator, device=x.device, dtype=x.dtype))
            for x in (x1, x2)
        )  # fmt: skip
        img = (1 - lam) * xt1 + lam * xt2

        def step(x: Tensor, t: Tensor) -> Tensor:
            return self.p_sample(x, t, cond=cond, cond_scale=cond_scale, generator=generator)

        img = sample_ancestral(step, img, range(t, -1, -1), desc="interpolation sample time step", progress=progress)
        return unnormalize_to_zero_to_one(img)

    # ------------------------------------------------------------ training

    def p_losses(
        self, x_start: Tensor, t: Tensor, cond: Tensor | list[str] | None = None, noise: Tensor | None = None, **kwargs
    ) -> Tensor:
        """The denoising loss at steps `t` for `x_start` in [-1, 1] (Ho et al. 2020, eq. 14,
        with an l1 or l2 distance). Extra keywords reach the denoiser."""
        noise = default(noise, lambda: torch.randn_like(x_start))
        x_noisy = self.q_sample(x_start=x_start, t=t, noise=noise)
        cond = self._embed_cond(cond, x_start.device)
        predicted_noise = self.denoise_fn(x_noisy, t, cond=cond, **kwargs)

        if self.loss_type == "l1":
            return F.l1_loss(noise, predicted_noise)
        return F.mse_loss(noise, predicted_noise)

    def forward(self, videos: Tensor, *args, **kwargs) -> Tensor:
        """Training loss for videos in [0, 1] of shape `(b, channels, num_frames, image_size,
        image_size)` at uniformly drawn steps. Keywords (`cond`, `null_cond_prob`,
        `prob_focus_present`, `focus_present_mask`) reach `p_losses` and the denoiser.
        With `independent_frames` (joint image-video training, Ho et al. 2022, §3) the
        videos may carry image frames beyond `num_frames`; the denoiser checks the mask."""
        if kwargs.get("independent_frames") is None:
            self._check_videos(videos)
        b = videos.shape[0]
        t = torch.randint(0, self.num_timesteps, (b,), device=videos.device).long()
        return self.p_losses(normalize_to_neg_one_to_one(videos), t, *args, **kwargs)
