"""GaussianDiffusion: a denoising network trained and sampled on the Gaussian diffusion
process (Ho et al. 2020; Video Diffusion Models, Ho et al. 2022).

The process's tables and closed-form maths are `process.GaussianProcess`; the samplers are
functions in `samplers`; the layout of longer videos is `generation`. This module joins
them to the network: the objective and loss, guidance, and the public generation methods.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from .checks import check_finite, check_int, check_videos
from .conditioning import FrameCondition, frame_condition
from .denoiser import DenoiserSpec, condition_kind
from .generation import (
    DEFAULT_SAMPLE_BATCH,
    GenerationOptions,
    check_context_frames,
    check_interpolation,
    conditioned_denoiser,
    extension_layout,
    fill_frames,
    interpolate_latents,
    interpolation_layout,
    sample_batch_size,
)
from .helpers import default, exists, extract, normalize_to_neg_one_to_one, unnormalize_to_zero_to_one
from .pretrained import PretrainedMixin, records_config
from .process import GaussianProcess
from .samplers import Denoiser, ancestral_step, resolve_sampler, run_sampler, timestep_schedule
from .text import embed_texts
from .unet import Unet3D

class GaussianDiffusion(PretrainedMixin, GaussianProcess):
    """Gaussian diffusion over videos `(b, channels, num_frames, image_size, image_size)`.

    Videos enter `forward` in [0, 1] and are mapped to [-1, 1]; `sample` returns [0, 1].
    With the default arguments it is the original library's model, step for step.

    Args:
        denoise_fn: the denoising network, a `Unet3D` (or any module keeping the contract
            in `video_diffusion_pytorch.denoiser`).
        image_size: height and width of the videos.
        num_frames: frames per video.
        text_use_bert_cls: embed text conditions with BERT's CLS vector instead of the
            mean over tokens.
        channels: video channels.
        bert_model: BERT for text conditions (a Hugging Face name or local folder); see
            `video_diffusion_pytorch.text`.
        timesteps, beta_schedule, objective, loss_type, timestep_sampling, min_snr_loss_weight, min_snr_gamma,
        use_dynamic_thres, dynamic_thres_percentile: the process and its training objective, see
            `process.GaussianProcess`; `**RECTIFIED_FLOW` trains rectified flow (Esser et al. 2024).
        sampling_timesteps: network evaluations per sample (default T); fewer than T
            samples with `samplers.FAST_SAMPLER` (or the sampler named in `sampler`).
        ddim_sampling_eta: DDIM's noise scale in [0, 1] (Song et al. 2021, eq. 16): 0 is
            deterministic, 1 is ancestral-like. Given without `sampler`, DDIM samples.
        sampler: one of `samplers.SAMPLERS`: 'ancestral' (DDPM, every step), 'ddpm' (DDPM
            over fewer steps; 'euler_ancestral' is the same update), 'ddim',
            'dpmpp_2m_sde' (DPM-Solver++(2M) SDE). Default: 'ancestral' with T sampling
            steps, else `samplers.FAST_SAMPLER`.
        sampling_spacing: which of the T steps are visited: 'uniform' or 'karras' (Karras
            et al. 2022, eq. 5); default `samplers.FAST_SPACING` for the default fast
            sampler, else 'uniform'.
    """

    module_classes = {"denoise_fn": Unet3D}  # how a saved description rebuilds the denoiser

    @records_config
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
        timestep_sampling: str = "uniform",
        min_snr_loss_weight: bool = False,
        min_snr_gamma: float = 5.0,
        sampling_timesteps: int | None = None,
        ddim_sampling_eta: float | None = None,
        sampler: str | None = None,
        sampling_spacing: str | None = None,
    ):
        check_int("image_size", image_size)
        check_int("num_frames", num_frames)
        spec = DenoiserSpec.of(denoise_fn)
        if spec.channels != channels:
            raise ValueError(f"denoise_fn takes {spec.channels} channels but channels={channels}")
        super().__init__(
            timesteps, beta_schedule=beta_schedule, objective=objective, loss_type=loss_type,
            timestep_sampling=timestep_sampling, min_snr_loss_weight=min_snr_loss_weight, min_snr_gamma=min_snr_gamma,
            use_dynamic_thres=use_dynamic_thres, dynamic_thres_percentile=dynamic_thres_percentile,
        )  # fmt: skip
        self.channels = channels
        self.image_size = image_size
        self.num_frames = num_frames
        self.denoise_fn = denoise_fn
        self.text_use_bert_cls = text_use_bert_cls
        self.bert_model = bert_model
        self.configure_sampling(sampling_timesteps, ddim_sampling_eta, sampler, sampling_spacing)

    def configure_sampling(
        self,
        sampling_timesteps: int | None = None,
        ddim_sampling_eta: float | None = None,
        sampler: str | None = None,
        sampling_spacing: str | None = None,
    ) -> None:
        """Choose how `sample` and the methods built on it sample, as the constructor's
        arguments of the same names do: a trained model can be sampled in fewer steps
        without being rebuilt. Training is unaffected; `config` (and so a saved model)
        records the choice."""
        steps = default(sampling_timesteps, self.num_timesteps)
        self.sampler, self.sampling_spacing, self.ddim_sampling_eta = resolve_sampler(
            sampler, steps, self.num_timesteps, ddim_sampling_eta, sampling_spacing
        )
        self.sampling_timesteps = steps
        self.config.update(
            sampling_timesteps=sampling_timesteps, ddim_sampling_eta=ddim_sampling_eta, sampler=sampler,
            sampling_spacing=sampling_spacing,
        )  # fmt: skip

    # ------------------------------------------------------------ the denoiser and its conditions

    @property
    def device(self) -> torch.device:
        return self.betas.device

    @property
    def spec(self) -> DenoiserSpec:
        """What the denoiser takes (`video_diffusion_pytorch.denoiser`)."""
        return DenoiserSpec.of(self.denoise_fn)

    @property
    def has_cond(self) -> bool:
        return self.spec.conditional

    def _video_shape(self, batch: int | str = "b", frames: int | str | None = None) -> tuple:
        return (batch, self.channels, default(frames, self.num_frames), self.image_size, self.image_size)

    def _embed_cond(self, cond: Any, device: torch.device) -> Tensor | None:
        """Turn text (a string or a list of strings) into BERT embeddings `(b, cond_dim)`."""
        if condition_kind(cond) != "text":
            return cond
        self.spec.check_condition("text")
        # sampling runs in inference mode: BERT, loaded on first use, must not be made of
        # inference tensors (training would fail later), nor the embedding (autograd in
        # reconstruction guidance uses it)
        texts = [cond] if isinstance(cond, str) else list(cond)
        with torch.inference_mode(False):
            return embed_texts(texts, return_cls_repr=self.text_use_bert_cls, device=device, model=self.bert_model)

    def _prepare_cond(self, cond: Any, cond_scale: float, batch: int | None) -> tuple[Tensor | None, int | None]:
        """Check a call's conditioning once against the denoiser, embed text; returns the
        conditioning and the batch size (from cond when given, else `batch`)."""
        kind = condition_kind(cond)
        rows = None if kind == "none" else (1 if isinstance(cond, str) else len(cond))
        shape = tuple(cond.shape) if kind == "vector" else (rows,)
        self.spec.check_condition(kind, shape=shape, rows=batch, cond_scale=cond_scale)
        if kind == "vector":
            check_finite(cond, "cond")
        return self._embed_cond(cond, self.device), default(rows, batch)

    # ------------------------------------------------------------ sampling

    def _denoiser(
        self, cond: Tensor | None, cond_scale: float, condition: FrameCondition | None = None, generator: torch.Generator | None = None
    ) -> Denoiser:
        """`(x_t, t) -> (x_start, pred_noise)` for the samplers (`generation.conditioned_denoiser`)."""
        predict = partial(self.model_predictions, cond=cond, cond_scale=cond_scale, condition=condition)
        return conditioned_denoiser(predict, self.q_sample, condition, generator)

    @torch.inference_mode()
    def p_sample_loop(
        self,
        shape: tuple[int, ...],
        cond: Tensor | None = None,
        cond_scale: float = 1.0,
        *,
        condition: FrameCondition | None = None,
        generator: torch.Generator | None = None,
        progress: bool = True,
    ) -> Tensor:
        """Sample from pure noise with the configured sampler (all T ancestral steps by
        default); returns videos in [0, 1]. `condition` holds known values to generate around."""
        noise = torch.randn(shape, generator=generator, device=self.device)
        denoise = self._denoiser(cond, cond_scale, condition, generator)
        img = run_sampler(
            self.sampler, denoise, noise, timestep_schedule(self.alphas_cumprod, self.sampling_timesteps, self.sampling_spacing),
            alphas_cumprod=self.alphas_cumprod, q_posterior=self.q_posterior, eta=self.ddim_sampling_eta,
            generator=generator, progress=progress,
        )  # fmt: skip
        img = unnormalize_to_zero_to_one(img)
        return condition.paste(img) if exists(condition) else img

    @torch.inference_mode()
    def sample(
        self,
        cond: Tensor | list[str] | None = None,
        cond_scale: float = 1.0,
        batch_size: int = DEFAULT_SAMPLE_BATCH,
        *,
        known: Tensor | None = None,
        known_mask: Tensor | None = None,
        **options: Any,
    ) -> Tensor:
        """Generate videos `(b, channels, num_frames, image_size, image_size)` in [0, 1].

        Args:
            cond, cond_scale: conditioning and guidance (`GenerationOptions`); `cond` sets the
                batch size when given.
            batch_size: number of videos for an unconditional model without `known`; with
                either, left out or equal to their batch.
            known: videos in [0, 1] holding the values to keep (Ho et al. 2022, §3.1); sets
                the batch size. The returned videos hold them exactly where `known_mask` is True.
            known_mask: bool, True where `known` holds a value to keep: whole frames as
                `(b or 1, 1, num_frames, 1, 1)`, or single values as `known`'s shape.
            options: `method`, `w_r`, `generator`, `progress` (see `GenerationOptions`).
        """
        options = GenerationOptions(cond=cond, cond_scale=cond_scale, **options)
        if exists(known) != exists(known_mask):
            raise ValueError("pass known and known_mask together (or neither)")
        batch = known.shape[0] if isinstance(known, Tensor) else None
        cond, batch = self._prepare_cond(cond, cond_scale, batch)
        condition = self._frame_condition(known, known_mask, options, self.num_frames) if exists(known) else None
        return self.p_sample_loop(
            self._video_shape(sample_batch_size(batch, batch_size)), cond=cond, cond_scale=cond_scale,
            condition=condition, generator=options.generator, progress=options.progress,
        )  # fmt: skip

    def _frame_condition(self, known: Tensor, known_mask: Tensor, options: GenerationOptions, frames: int) -> FrameCondition:
        return frame_condition(known, known_mask, video_shape=self._video_shape(frames=frames)[1:], method=options.method,
                               w_r=options.w_r, device=self.device)  # fmt: skip

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
        """Interpolate two batches of videos in [0, 1] in latent space: noise both to step `t`
        in [0, T) (default T - 1), mix as `(1 - lam) * x1 + lam * x2` and denoise back (the
        DDPM paper's §4.3; `generation.interpolate_latents`). Keywords as in
        `GenerationOptions`. For new frames between given ones, see `interpolate_frames`."""
        t = check_interpolation(x1, x2, self._video_shape(), default(t, self.num_timesteps - 1), lam, self.num_timesteps)
        cond, _ = self._prepare_cond(cond, cond_scale, x1.shape[0])

        return interpolate_latents(
            self._denoiser(cond, cond_scale, generator=generator), x1, x2, t=t, lam=lam, q_sample=self.q_sample,
            q_posterior=self.q_posterior, generator=generator, progress=progress,
        )  # fmt: skip

    # ------------------------------------------------------------ longer videos from known frames

    @torch.inference_mode()
    def _fill_frames(self, videos: Tensor, known_frames: list[bool], context_frames: int, options: GenerationOptions) -> Tensor:
        """Generate the unknown frames of `videos` block by block (`generation.fill_frames`),
        each block a sample of `num_frames` frames conditioned on the frames already there."""
        cond, _ = self._prepare_cond(options.cond, options.cond_scale, videos.shape[0])

        def sample_block(block: Tensor, mask: Tensor) -> Tensor:
            return self.p_sample_loop(
                self._video_shape(block.shape[0], block.shape[2]), cond=cond, cond_scale=options.cond_scale,
                condition=self._frame_condition(block, mask, options, block.shape[2]),
                generator=options.generator, progress=options.progress,
            )  # fmt: skip

        return fill_frames(
            videos.to(self.device), known_frames, window=self.num_frames, context_frames=context_frames,
            sample_block=sample_block,
        )  # fmt: skip

    def extend(self, videos: Tensor, num_frames: int, *, context_frames: int | None = None, **options: Any) -> Tensor:
        """Lengthen videos `(b, channels, f, image_size, image_size)` in [0, 1] to `num_frames`
        >= f frames autoregressively (Ho et al. 2022, §3.1, §4.3): each new block of the model's
        frames is sampled conditioned on the last `context_frames` made so far (in [1, model
        frames), default half). Keywords: `GenerationOptions`. The first f frames are `videos`."""
        options = GenerationOptions(**options)
        check_videos(videos, self._video_shape(frames="f"))
        context_frames = check_context_frames(context_frames, self.num_frames)
        spread, known = extension_layout(videos, num_frames)
        return self._fill_frames(spread, known, context_frames, options)

    def predict(self, first_frames: Tensor, num_frames: int | None = None, **kwargs: Any) -> Tensor:
        """Video prediction: continue `first_frames` (b, channels, f, h, w) in [0, 1] to
        `num_frames` frames (default the model's); keywords as in `extend`."""
        return self.extend(first_frames, default(num_frames, self.num_frames), **kwargs)

    def interpolate_frames(self, videos: Tensor, factor: int, **options: Any) -> Tensor:
        """Temporal interpolation (Ho et al. 2022, §3.1): put `factor - 1` new frames between
        every two consecutive frames of videos `(b, channels, f >= 2, image_size, image_size)` in
        [0, 1]; `factor` in [2, model frames - 1], so that a gap and both of its ends fit in one
        block. Keywords: `GenerationOptions`. Returns `(f - 1) * factor + 1` frames, input frame
        i at `i * factor`."""
        options = GenerationOptions(**options)
        check_videos(videos, self._video_shape(frames="f"))
        spread, known = interpolation_layout(videos, factor, self.num_frames)
        return self._fill_frames(spread, known, check_context_frames(None, self.num_frames), options)

    # ------------------------------------------------------------ predictions and loss

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
            model_output = self.denoise_fn.forward_with_cond_scale(self.network_input(x_t, t), t, cond=cond, cond_scale=cond_scale)
            return self.predict_start_from_output(x_t, t, model_output)

        if exists(condition):
            x_start = condition.guide(x, predict_x_start, extract(self.sqrt_alphas_cumprod, t, x.shape))
        else:
            x_start = predict_x_start(x)
        if clip_x_start:
            x_start = self._clip_start(x_start)
        return x_start, self.predict_noise_from_start(x, t, x_start)

    # ------------------------------------------------------------ reverse process p

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

    def p_losses(
        self, x_start: Tensor, t: Tensor, cond: Tensor | list[str] | None = None, noise: Tensor | None = None, **kwargs
    ) -> Tensor:
        """The denoising loss at steps `t` for `x_start` in [-1, 1] (Ho et al. 2020, eq. 14,
        with an l1 or l2 distance) between the network's output and its target under
        `objective` (eps, x_0, v or the flow's velocity), optionally Min-SNR weighted. Extra keywords reach the
        denoiser."""
        noise = default(noise, lambda: torch.randn_like(x_start))
        x_noisy = self.q_sample(x_start=x_start, t=t, noise=noise)
        cond = self._embed_cond(cond, x_start.device)
        model_output = self.denoise_fn(self.network_input(x_noisy, t), t, cond=cond, **kwargs)

        return self.loss(model_output, self.training_target(x_start, t, noise), t)

    def forward(self, videos: Tensor, *args, **kwargs) -> Tensor:
        """Training loss for videos in [0, 1] of shape `(b, channels, num_frames, image_size,
        image_size)` at steps drawn as `timestep_sampling` says (uniformly by default). Keywords (`cond`, `null_cond_prob`,
        `prob_focus_present`, `focus_present_mask`) reach `p_losses` and the denoiser.
        With `independent_frames` (joint image-video training, Ho et al. 2022, §3) the
        videos may carry image frames beyond `num_frames`; the denoiser checks the mask. The
        values of videos (in [0, 1]) and cond (finite) are checked on the CPU only (`checks`)."""
        check_videos(videos, self._video_shape(frames=None if kwargs.get("independent_frames") is None else "f"))
        if isinstance(cond := args[0] if args else kwargs.get("cond"), Tensor):
            check_finite(cond, "cond")
        b = videos.shape[0]
        t = self.sample_timesteps(b, videos.device)
        return self.p_losses(normalize_to_neg_one_to_one(videos), t, *args, **kwargs)
