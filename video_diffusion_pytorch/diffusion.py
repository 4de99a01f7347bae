"""GaussianDiffusion: the DDPM forward process, its learned reverse, loss and sampling
(Ho et al. 2020; Video Diffusion Models, Ho et al. 2022)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor, nn

from .conditioning import FrameCondition
from .generation import VideoGeneration
from .helpers import default, exists, extract, is_list_of_strings, normalize_to_neg_one_to_one
from .hub import PretrainedMixin
from .samplers import SAMPLERS, ancestral_step
from .schedules import BETA_SCHEDULES
from .text import embed_texts

LOSS_TYPES = ("l1", "l2")
OBJECTIVES = ("pred_noise", "pred_x0", "pred_v")


class GaussianDiffusion(VideoGeneration, PretrainedMixin, nn.Module):
    """Gaussian diffusion over videos `(b, channels, num_frames, image_size, image_size)`.

    Videos enter `forward` in [0, 1] and are mapped to [-1, 1]; `sample` returns [0, 1].
    With the default arguments it is the original library's model, step for step. This
    module holds the maths (schedule, q and p, parametrisations, loss); the generation
    methods (`sample`, `interpolate`, `extend`, `predict`, `interpolate_frames`) come
    from `generation.VideoGeneration`.

    Args:
        denoise_fn: the denoising network, a `Unet3D`.
        image_size: height and width of the videos.
        num_frames: frames per video.
        text_use_bert_cls: embed text conditions with BERT's CLS vector instead of the
            mean over tokens.
        channels: video channels.
        timesteps: diffusion steps T.
        loss_type: 'l1' or 'l2' between the target and the network's output.
        use_dynamic_thres: dynamic thresholding of the predicted `x_0` (Imagen, Saharia
            et al. 2022, §2.3) instead of clipping to [-1, 1].
        dynamic_thres_percentile: the quantile of `|x_0|` used as threshold.
        bert_model: BERT for text conditions (a Hugging Face name or local folder); see
            `video_diffusion_pytorch.text`.
        objective: what the network predicts: 'pred_noise' (eps, the original), 'pred_x0'
            (the clean video) or 'pred_v' (`v = sqrt(abar) eps - sqrt(1 - abar) x_0`,
            Salimans & Ho 2022, §4).
        beta_schedule: 'cosine' (the original), 'linear' or 'sigmoid'; see `schedules`.
        min_snr_loss_weight: weight the loss per sample by the clipped signal-to-noise
            ratio (Min-SNR, Hang et al. 2023, §3.4).
        min_snr_gamma: the clip of Min-SNR weighting, gamma.
        sampling_timesteps: network evaluations per sample (default T); fewer than T
            samples with DDIM over evenly spaced steps (or the solver in `sampler`).
        ddim_sampling_eta: DDIM's noise scale in [0, 1] (Song et al. 2021, eq. 16): 0 is
            deterministic, 1 is ancestral-like.
        sampler: 'ancestral' (DDPM, every step) or 'ddim'. Default: 'ancestral' with T
            sampling steps, else 'ddim'.
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
        objective: str = "pred_noise",
        beta_schedule: str = "cosine",
        min_snr_loss_weight: bool = False,
        min_snr_gamma: float = 5.0,
        sampling_timesteps: int | None = None,
        ddim_sampling_eta: float = 0.0,
        sampler: str | None = None,
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
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {tuple(BETA_SCHEDULES)}, got {beta_schedule!r}")
        if not min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be positive, got {min_snr_gamma}")

        self.config: dict[str, Any] = dict(
            image_size=image_size, num_frames=num_frames, text_use_bert_cls=text_use_bert_cls,
            channels=channels, timesteps=timesteps, loss_type=loss_type,
            use_dynamic_thres=use_dynamic_thres, dynamic_thres_percentile=dynamic_thres_percentile,
            bert_model=bert_model, objective=objective, beta_schedule=beta_schedule,
            min_snr_loss_weight=min_snr_loss_weight, min_snr_gamma=min_snr_gamma,
            sampling_timesteps=sampling_timesteps, ddim_sampling_eta=ddim_sampling_eta, sampler=sampler,
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
        self.objective = objective
        self.min_snr_loss_weight = min_snr_loss_weight
        self.min_snr_gamma = min_snr_gamma
        self.num_timesteps = int(timesteps)
        self.configure_sampling(sampling_timesteps, ddim_sampling_eta, sampler)

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

    def configure_sampling(
        self, sampling_timesteps: int | None = None, ddim_sampling_eta: float = 0.0, sampler: str | None = None
    ) -> None:
        """Choose how `sample` and the methods built on it sample, as the constructor's
        arguments of the same names do: a trained model can be sampled with fewer DDIM
        steps without being rebuilt. Training is unaffected; `config` (and so a saved
        model) records the choice."""
        steps = default(sampling_timesteps, self.num_timesteps)
        self.sampler = self._check_sampler(sampler, steps, self.num_timesteps, ddim_sampling_eta)
        self.sampling_timesteps = steps
        self.ddim_sampling_eta = ddim_sampling_eta
        self.config.update(sampling_timesteps=sampling_timesteps, ddim_sampling_eta=ddim_sampling_eta, sampler=sampler)

    # ------------------------------------------------------------ boundary checks

    @staticmethod
    def _check_sampler(sampler: str | None, steps: int, timesteps: int, eta: float) -> str:
        """The sampler to use, checked against the number of steps and DDIM's eta."""
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

    @property
    def device(self) -> torch.device:
        return self.betas.device

    @property
    def has_cond(self) -> bool:
        return bool(getattr(self.denoise_fn, "has_cond", False))

    def _video_shape(self, batch: int | str = "b", frames: int | str | None = None) -> tuple:
        return (batch, self.channels, default(frames, self.num_frames), self.image_size, self.image_size)

    def _check_videos(self, videos: Any, name: str = "videos", frames: int | str | None = None) -> None:
        expected = self._video_shape(frames=frames)
        if not isinstance(videos, Tensor):
            raise TypeError(f"{name} must be a tensor of shape {expected}, got {type(videos).__name__}")
        if videos.ndim != 5 or any(isinstance(e, int) and e != n for e, n in zip(expected[1:], videos.shape[1:])):
            raise ValueError(
                f"expected {name} of shape {expected} (batch, channels, frames, height, width), "
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
        # sampling runs in inference mode: BERT, loaded on first use, must not be made of
        # inference tensors (training would fail later), nor the embedding (autograd in
        # reconstruction guidance uses it)
        with torch.inference_mode(False):
            return embed_texts(cond, return_cls_repr=self.text_use_bert_cls, device=device, model=self.bert_model)

    def _check_guidance(self, cond_scale: float) -> None:
        if cond_scale != 1 and not self.has_cond:
            raise ValueError(
                f"cond_scale={cond_scale} asks for classifier-free guidance, but the denoiser is "
                "unconditional; use cond_scale=1"
            )

    def _prepare_cond(self, cond: Any, cond_scale: float, batch: int | None) -> tuple[Tensor | None, int | None]:
        """Check guidance, embed strings, require cond on a conditional model; returns the
        conditioning and the batch size (from cond when given, else `batch`)."""
        self._check_guidance(cond_scale)
        cond = self._embed_cond(cond, self.device)
        if self.has_cond and not exists(cond):
            raise ValueError("this model is conditional: pass cond (a tensor or, for text models, a list of strings)")
        if exists(cond) and exists(batch) and cond.shape[0] != batch:
            raise ValueError(f"cond has {cond.shape[0]} rows but the videos have batch size {batch}")
        return cond, cond.shape[0] if exists(cond) else batch

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
        """eps from x_t and x_0: `(x_t / sqrt(abar_t) - x_0) / sqrt(1 / abar_t - 1)` (eq. 4 inverted)."""
        return (extract(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - x_start) / extract(
            self.sqrt_recipm1_alphas_cumprod, t, x_t.shape
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

    def predict_start_from_output(self, x_t: Tensor, t: Tensor, model_output: Tensor) -> Tensor:
        """x_0 from the network's output under `self.objective`."""
        if self.objective == "pred_noise":
            return self.predict_start_from_noise(x_t, t, model_output)
        if self.objective == "pred_v":
            return self.predict_start_from_v(x_t, t, model_output)
        return model_output

    def model_predictions(
        self,
        x: Tensor,
        t: Tensor,
        cond: Tensor | None = None,
        cond_scale: float = 1.0,
        clip_x_start: bool = True,
        condition: FrameCondition | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The (guided) network's predictions at `x_t`, whatever the objective: `(x_start,
        pred_noise)`, with x_0 clipped or thresholded when `clip_x_start` and eps derived from
        that x_0. `condition` adds reconstruction guidance (Ho et al. 2022, eq. 7) to x_0."""

        def predict_x_start(x_t: Tensor) -> Tensor:
            model_output = self.denoise_fn.forward_with_cond_scale(x_t, t, cond=cond, cond_scale=cond_scale)
            return self.predict_start_from_output(x_t, t, model_output)

        if exists(condition):
            x_start = condition.guide(x, predict_x_start, extract(self.sqrt_alphas_cumprod, t, x.shape))
        else:
            x_start = predict_x_start(x)
        if clip_x_start:
            x_start = self._clip_start(x_start)
        return x_start, self.predict_noise_from_start(x, t, x_start)

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
        x_0 predicted by the (guided) network."""
        x_recon, _ = self.model_predictions(x, t, cond=cond, cond_scale=cond_scale, clip_x_start=clip_denoised)
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
        x_start, _ = self.model_predictions(x, t, cond=cond, cond_scale=cond_scale, clip_x_start=clip_denoised)
        return ancestral_step(self.q_posterior, x_start, x, t, generator)

    # ------------------------------------------------------------ training

    def min_snr_weight(self, t: Tensor) -> Tensor:
        """Min-SNR-gamma loss weights `(b,)` (Hang et al. 2023, eq. 10 and §3.4), with
        `snr_t = abar_t / (1 - abar_t)`: `min(snr, gamma) / snr` when predicting eps,
        `min(snr, gamma)` for x_0 and `min(snr, gamma) / (snr + 1)` for v."""
        alphas_cumprod = self.alphas_cumprod.gather(-1, t)
        snr = alphas_cumprod / (1 - alphas_cumprod)
        clipped_snr = snr.clamp(max=self.min_snr_gamma)
        if self.objective == "pred_noise":
            return clipped_snr / snr
        if self.objective == "pred_v":
            return clipped_snr / (snr + 1)
        return clipped_snr

    def p_losses(
        self, x_start: Tensor, t: Tensor, cond: Tensor | list[str] | None = None, noise: Tensor | None = None, **kwargs
    ) -> Tensor:
        """The denoising loss at steps `t` for `x_start` in [-1, 1] (Ho et al. 2020, eq. 14,
        with an l1 or l2 distance) between the network's output and its target under
        `objective` (eps, x_0 or v), optionally Min-SNR weighted. Extra keywords reach the
        denoiser."""
        noise = default(noise, lambda: torch.randn_like(x_start))
        x_noisy = self.q_sample(x_start=x_start, t=t, noise=noise)
        cond = self._embed_cond(cond, x_start.device)
        model_output = self.denoise_fn(x_noisy, t, cond=cond, **kwargs)

        if self.objective == "pred_noise":
            target = noise
        elif self.objective == "pred_x0":
            target = x_start
        else:
            target = self.predict_v(x_start, t, noise)

        distance = F.l1_loss if self.loss_type == "l1" else F.mse_loss
        if not self.min_snr_loss_weight:
            return distance(target, model_output)
        loss = reduce(distance(target, model_output, reduction="none"), "b ... -> b", "mean")
        return (loss * self.min_snr_weight(t)).mean()

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
