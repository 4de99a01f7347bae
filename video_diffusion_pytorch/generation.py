"""The generation methods of GaussianDiffusion: sampling with the configured sampler,
latent interpolation, and generation around known frames (Ho et al. 2022, §3.1): `sample`
with `known`, `extend`, `predict` and `interpolate_frames`."""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import Tensor

from .conditioning import DEFAULT_RECONSTRUCTION_WEIGHT, FrameCondition, frame_condition, plan_windows
from .helpers import default, exists, normalize_to_neg_one_to_one, unnormalize_to_zero_to_one
from .samplers import Denoiser, sample_ancestral, sample_ddim, spaced_timesteps


class VideoGeneration:
    """Generation methods mixed into `GaussianDiffusion` (and only there): they use its
    schedule buffers, `model_predictions`, `q_sample` / `q_posterior` and input checks."""

    # ------------------------------------------------------------ sampling

    def _denoiser(
        self,
        cond: Tensor | None,
        cond_scale: float,
        condition: FrameCondition | None = None,
        generator: torch.Generator | None = None,
    ) -> Denoiser:
        """`(x_t, t) -> (x_start, pred_noise)` for the samplers. With a frame condition the
        known values of x_t are first replaced by forward-noised data, `z_t^a ~ q(z_t | x^a)`."""

        def denoise(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            if exists(condition):
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = condition.replace(x, self.q_sample(condition.known, t, noise=noise))
            return self.model_predictions(x, t, cond=cond, cond_scale=cond_scale, condition=condition)

        return denoise

    def _sample_noise(
        self, noise: Tensor, denoise: Denoiser, *, generator: torch.Generator | None, progress: bool
    ) -> Tensor:
        """Run the configured sampler from pure noise `x_T` in [-1, 1] space."""
        steps = spaced_timesteps(self.num_timesteps, self.sampling_timesteps)
        if self.sampler == "ancestral":
            return sample_ancestral(
                denoise, noise, steps, q_posterior=self.q_posterior, generator=generator, progress=progress
            )
        return sample_ddim(
            denoise, noise, steps, alphas_cumprod=self.alphas_cumprod, eta=self.ddim_sampling_eta,
            generator=generator, progress=progress,
        )  # fmt: skip

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
        img = self._sample_noise(noise, denoise, generator=generator, progress=progress)
        img = unnormalize_to_zero_to_one(img)
        return condition.paste(img) if exists(condition) else img

    @torch.inference_mode()
    def sample(
        self,
        cond: Tensor | list[str] | None = None,
        cond_scale: float = 1.0,
        batch_size: int = 16,
        *,
        known: Tensor | None = None,
        known_mask: Tensor | None = None,
        method: str = "reconstruction",
        w_r: float = DEFAULT_RECONSTRUCTION_WEIGHT,
        generator: torch.Generator | None = None,
        progress: bool = True,
    ) -> Tensor:
        """Generate videos `(b, channels, num_frames, image_size, image_size)` in [0, 1].

        Args:
            cond: conditioning `(b, cond_dim)` or a list of b strings (text-conditioned
                models); sets the batch size when given.
            cond_scale: classifier-free guidance scale (1 is no guidance).
            batch_size: number of videos for an unconditional model without `known`.
            known: videos in [0, 1], `(b, channels, num_frames, image_size, image_size)`,
                holding the values to keep (Ho et al. 2022, §3.1); sets the batch size.
            known_mask: bool, True where `known` holds a value to keep: whole frames as
                `(b, 1, num_frames, 1, 1)` (or `(1, 1, num_frames, 1, 1)`), or single values
                as `(b, channels, num_frames, image_size, image_size)`.
            method: 'reconstruction' (guidance, the paper's eq. 7) or 'replacement'.
            w_r: the reconstruction guidance weight.
            generator: the random source of the noise.
            progress: show a progress bar.
        The returned videos hold `known` exactly where `known_mask` is True.
        """
        batch = known.shape[0] if isinstance(known, Tensor) else None
        cond, batch = self._prepare_cond(cond, cond_scale, batch)
        condition = self._frame_condition(known, known_mask, method, w_r, self.num_frames)
        return self.p_sample_loop(
            self._video_shape(default(batch, batch_size)), cond=cond, cond_scale=cond_scale,
            condition=condition, generator=generator, progress=progress,
        )  # fmt: skip

    def _frame_condition(
        self, known: Tensor | None, known_mask: Tensor | None, method: str, w_r: float, frames: int
    ) -> FrameCondition | None:
        if exists(known) != exists(known_mask):
            raise ValueError("pass known and known_mask together (or neither)")
        if not exists(known):
            return None
        video_shape = self._video_shape(frames=frames)[1:]
        return frame_condition(
            known, known_mask, video_shape=video_shape, method=method, w_r=w_r, device=self.device
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
        and denoised from step t back to 0 with ancestral steps. For filling in frames
        between given ones, see `interpolate_frames`.

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
        cond, _ = self._prepare_cond(cond, cond_scale, x1.shape[0])

        b = x1.shape[0]
        t_batched = torch.full((b,), t, device=x1.device, dtype=torch.long)
        xt1, xt2 = (
            self.q_sample(normalize_to_neg_one_to_one(x), t=t_batched, noise=torch.randn(
                x.shape, generator=generator, device=x.device, dtype=x.dtype))
            for x in (x1, x2)
        )  # fmt: skip
        img = (1 - lam) * xt1 + lam * xt2

        img = sample_ancestral(
            self._denoiser(cond, cond_scale), img, range(t, -1, -1), q_posterior=self.q_posterior,
            generator=generator, desc="interpolation sample time step", progress=progress,
        )  # fmt: skip
        return unnormalize_to_zero_to_one(img)

    # ------------------------------------------------------------ longer videos from known frames

    @torch.inference_mode()
    def _fill_frames(
        self,
        videos: Tensor,
        known_frames: list[bool],
        *,
        context_frames: int,
        cond: Any,
        cond_scale: float,
        method: str,
        w_r: float,
        generator: torch.Generator | None,
        progress: bool,
    ) -> Tensor:
        """Generate the frames of `videos` (b, c, L, h, w) in [0, 1] where `known_frames` is
        False, block by block (`conditioning.plan_windows`), each block a sample of
        `num_frames` frames conditioned on the frames already there."""
        cond, _ = self._prepare_cond(cond, cond_scale, videos.shape[0])
        videos = videos.to(self.device).clone()
        known = list(known_frames)
        for start, first_new, stop in plan_windows(known, self.num_frames, context_frames):
            window = videos[:, :, start : start + self.num_frames]
            frames = window.shape[2]
            mask = torch.tensor(known[start : start + frames], device=self.device)
            mask = rearrange(mask, "f -> 1 1 f 1 1")  # whole frames, every video alike
            condition = self._frame_condition(window, mask, method, w_r, frames)
            block = self.p_sample_loop(
                self._video_shape(videos.shape[0], frames), cond=cond, cond_scale=cond_scale,
                condition=condition, generator=generator, progress=progress,
            )  # fmt: skip
            videos[:, :, first_new:stop] = block[:, :, first_new - start : stop - start]
            known[first_new:stop] = [True] * (stop - first_new)
        return videos

    def _check_context(self, context_frames: int | None) -> int:
        context_frames = default(context_frames, max(1, self.num_frames // 2))
        if not 1 <= context_frames < self.num_frames:
            raise ValueError(f"context_frames must be in [1, num_frames={self.num_frames}), got {context_frames}")
        return context_frames

    def extend(
        self,
        videos: Tensor,
        num_frames: int,
        *,
        context_frames: int | None = None,
        cond: Tensor | list[str] | None = None,
        cond_scale: float = 1.0,
        method: str = "reconstruction",
        w_r: float = DEFAULT_RECONSTRUCTION_WEIGHT,
        generator: torch.Generator | None = None,
        progress: bool = True,
    ) -> Tensor:
        """Lengthen videos autoregressively (Ho et al. 2022, §3.1 and §4.3): each new block of
        the model's `num_frames` frames is sampled conditioned on the last `context_frames`
        frames made so far (more in the last block, which is cut to fit).

        Args:
            videos: videos in [0, 1], `(b, channels, f, image_size, image_size)`, any f >= 1.
            num_frames: the length N >= f of the result.
            context_frames: frames each block is conditioned on, in [1, model frames);
                default half the model's frames.
            cond, cond_scale: conditioning and classifier-free guidance, as in `sample`.
            method, w_r: how the blocks are conditioned, as in `sample`.
            generator, progress: as in `sample`.
        Returns `(b, channels, N, image_size, image_size)` in [0, 1], whose first f frames are `videos`.
        """
        self._check_videos(videos, frames="f")
        context_frames = self._check_context(context_frames)
        given = videos.shape[2]
        if num_frames < given:
            raise ValueError(f"num_frames must be at least the {given} frames given, got {num_frames}")
        # (b, c, f, h, w) -> (b, c, N, h, w), the new frames still empty
        padding = videos.new_zeros(*videos.shape[:2], num_frames - given, *videos.shape[3:])
        return self._fill_frames(
            torch.cat((videos, padding), dim=2), [True] * given + [False] * (num_frames - given),
            context_frames=context_frames, cond=cond, cond_scale=cond_scale, method=method, w_r=w_r,
            generator=generator, progress=progress,
        )  # fmt: skip

    def predict(self, first_frames: Tensor, num_frames: int | None = None, **kwargs: Any) -> Tensor:
        """Video prediction: continue `first_frames` (b, channels, f, h, w) in [0, 1] to
        `num_frames` frames (default the model's); keywords as in `extend`."""
        return self.extend(first_frames, default(num_frames, self.num_frames), **kwargs)

    def interpolate_frames(
        self,
        videos: Tensor,
        factor: int,
        *,
        cond: Tensor | list[str] | None = None,
        cond_scale: float = 1.0,
        method: str = "reconstruction",
        w_r: float = DEFAULT_RECONSTRUCTION_WEIGHT,
        generator: torch.Generator | None = None,
        progress: bool = True,
    ) -> Tensor:
        """Temporal interpolation (Ho et al. 2022, §3.1): put `factor - 1` new frames between
        every two consecutive frames. Each gap is generated in a block of the model's frames
        holding both of its ends and the frames before it.

        Args:
            videos: videos in [0, 1], `(b, channels, f, image_size, image_size)`, f >= 2.
            factor: the frame-rate multiplier, in [2, model frames - 1] so that a gap and
                both of its ends fit in one block.
            cond, cond_scale, method, w_r, generator, progress: as in `sample`.
        Returns `(b, channels, (f - 1) * factor + 1, image_size, image_size)` in [0, 1]
        where frame `i * factor` is input frame i.
        """
        self._check_videos(videos, frames="f")
        given = videos.shape[2]
        if given < 2:
            raise ValueError(f"interpolation needs at least 2 frames, got videos of shape {tuple(videos.shape)}")
        if not isinstance(factor, int) or not 2 <= factor <= self.num_frames - 1:
            raise ValueError(f"factor must be an integer in [2, {self.num_frames - 1}] for a {self.num_frames}-frame model, got {factor}")
        length = (given - 1) * factor + 1
        # (b, c, f, h, w) -> (b, c, (f - 1) * factor + 1, h, w), input frame i at i * factor
        spread = videos.new_zeros(*videos.shape[:2], length, *videos.shape[3:])
        spread[:, :, ::factor] = videos
        return self._fill_frames(
            spread, [i % factor == 0 for i in range(length)], context_frames=self._check_context(None),
            cond=cond, cond_scale=cond_scale, method=method, w_r=w_r, generator=generator, progress=progress,
        )  # fmt: skip
