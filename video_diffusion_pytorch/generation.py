"""Longer videos from known frames (Video Diffusion Models, Ho et al. 2022, §3.1 and §4.3),
as functions of a block sampler.

A block sampler draws one sample of the model's frame count conditioned on the frames of
that block that are already known; these functions decide where the blocks go and stitch
their frames into the long video. `GaussianDiffusion.extend` and `interpolate_frames`
lay the input out (`extension_layout`, `interpolation_layout`) and call `fill_frames`
with a block sampler built from the model. The keywords those methods share are
`GenerationOptions`, defined once here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from einops import rearrange
from torch import Tensor

from .checks import check_int, check_number, check_videos
from .conditioning import DEFAULT_RECONSTRUCTION_WEIGHT, FrameCondition, plan_windows
from .helpers import default, exists, normalize_to_neg_one_to_one, randn, unnormalize_to_zero_to_one
from .samplers import Denoiser, Posterior, sample_ancestral

# (videos (b, c, f, h, w) in [0, 1], known frames bool (1, 1, f, 1, 1)) -> samples (b, c, f, h, w)
BlockSampler = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class GenerationOptions:
    """The keywords of every generation method (`sample`, `extend`, `predict`,
    `interpolate_frames`).

    Attributes:
        cond: conditioning `(b, cond_dim)`, or a list of b strings for text-conditioned
            models.
        cond_scale: classifier-free guidance scale (1 is no guidance).
        method: how known frames condition the rest: 'reconstruction' (guidance, the
            paper's eq. 7) or 'replacement'.
        w_r: the reconstruction guidance weight.
        generator: the random source of the noise.
        progress: show a progress bar.
    """

    cond: Tensor | list[str] | None = None
    cond_scale: float = 1.0
    method: str = "reconstruction"
    w_r: float = DEFAULT_RECONSTRUCTION_WEIGHT
    generator: torch.Generator | None = None
    progress: bool = True


DEFAULT_SAMPLE_BATCH = 16  # `GaussianDiffusion.sample`'s batch_size: a batch set by cond or known overrides it


def sample_batch_size(given: int | None, batch_size: int) -> int:
    """The number of videos `sample` draws: the batch of cond or known when given (a
    batch_size left at its default then yields to it; another must agree), else batch_size."""
    check_int("batch_size", batch_size)
    if given is None:
        return batch_size
    if batch_size not in (given, DEFAULT_SAMPLE_BATCH):
        raise ValueError(
            f"batch_size={batch_size} disagrees with the batch of {given} that cond or known sets: "
            "leave batch_size out, or give it the same number"
        )
    return check_int("the batch of cond or known", given)


def conditioned_denoiser(
    predict: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    q_sample: Callable[..., Tensor],
    condition: FrameCondition | None,
    generator: torch.Generator | None,
) -> Denoiser:
    """The samplers' denoiser `(x_t, t) -> (x_start, pred_noise)` from the model's
    `predict`; with a frame condition the known values of x_t are first replaced by
    forward-noised data, `z_t^a ~ q(z_t | x^a)` (Ho et al. 2022, §3.1)."""
    if not exists(condition):
        return predict

    def denoise(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        x = condition.replace(x, q_sample(condition.known, t, noise=randn(x, generator)))
        return predict(x, t)

    return denoise


def check_interpolation(x1: Tensor, x2: Tensor, shape: tuple, t: int, lam: float, timesteps: int) -> int:
    """The arguments of `interpolate_latents`: two batches of videos of the model's `shape`
    and of one batch size, a step `t` in [0, T) and a finite `lam`; returns `t`."""
    check_videos(x1, shape, "x1")
    check_videos(x2, shape, "x2")
    if x1.shape != x2.shape:
        raise ValueError(f"x1 and x2 must have the same shape, got {tuple(x1.shape)} and {tuple(x2.shape)}")
    check_number("lam", lam)
    if check_int("t", t, minimum=0) >= timesteps:
        raise ValueError(f"t must be in [0, {timesteps}), got {t}")
    return t


def interpolate_latents(
    denoise: Denoiser,
    x1: Tensor,
    x2: Tensor,
    *,
    t: int,
    lam: float,
    q_sample: Callable[..., Tensor],
    q_posterior: Posterior,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> Tensor:
    """Noise two batches of videos in [0, 1] to step `t`, mix them as `(1 - lam) x1 + lam x2`
    and denoise the mix back to step 0 with ancestral steps (Ho et al. 2020, §4.3)."""
    t_batched = torch.full((x1.shape[0],), t, device=x1.device, dtype=torch.long)
    xt1, xt2 = (q_sample(normalize_to_neg_one_to_one(x), t_batched, noise=randn(x, generator)) for x in (x1, x2))
    img = sample_ancestral(
        denoise, (1 - lam) * xt1 + lam * xt2, range(t, -1, -1), q_posterior=q_posterior, generator=generator,
        desc="interpolation sample time step", progress=progress,
    )  # fmt: skip
    return unnormalize_to_zero_to_one(img)


def check_context_frames(context_frames: int | None, window: int) -> int:
    """The frames each block of a longer video is conditioned on: in [1, window), default half."""
    context_frames = default(context_frames, max(1, window // 2))
    if not 1 <= context_frames < window:
        raise ValueError(f"context_frames must be in [1, num_frames={window}), got {context_frames}")
    return context_frames


def extension_layout(videos: Tensor, num_frames: int) -> tuple[Tensor, list[bool]]:
    """`videos` (b, c, f, h, w) followed by `num_frames - f` empty frames, and which frames
    are known."""
    given = videos.shape[2]
    if check_int("num_frames", num_frames) < given:
        raise ValueError(f"num_frames must be at least the {given} frames given, got {num_frames}")
    # (b, c, f, h, w) -> (b, c, N, h, w), the new frames still empty
    padding = videos.new_zeros(*videos.shape[:2], num_frames - given, *videos.shape[3:])
    return torch.cat((videos, padding), dim=2), [True] * given + [False] * (num_frames - given)


def interpolation_layout(videos: Tensor, factor: int, window: int) -> tuple[Tensor, list[bool]]:
    """`videos` (b, c, f, h, w) with `factor - 1` empty frames between every two, and which
    frames are known; `factor` must leave a gap and both of its ends inside one block of
    `window` frames."""
    given = videos.shape[2]
    if given < 2:
        raise ValueError(f"interpolation needs at least 2 frames, got videos of shape {tuple(videos.shape)}")
    if not isinstance(factor, int) or not 2 <= factor <= window - 1:
        raise ValueError(
            f"factor must be an integer in [2, {window - 1}] for a {window}-frame model, got {factor}"
        )
    length = (given - 1) * factor + 1
    # (b, c, f, h, w) -> (b, c, (f - 1) * factor + 1, h, w), input frame i at i * factor
    spread = videos.new_zeros(*videos.shape[:2], length, *videos.shape[3:])
    spread[:, :, ::factor] = videos
    return spread, [i % factor == 0 for i in range(length)]


def fill_frames(
    videos: Tensor, known_frames: list[bool], *, window: int, context_frames: int, sample_block: BlockSampler
) -> Tensor:
    """Generate the frames of `videos` (b, c, L, h, w) in [0, 1] where `known_frames` is
    False, block by block (`conditioning.plan_windows`): each block is `window` frames
    sampled by `sample_block`, conditioned on the frames already there."""
    videos = videos.clone()
    known = list(known_frames)
    for start, first_new, stop in plan_windows(known, window, context_frames):
        block = videos[:, :, start : start + window]
        mask = torch.tensor(known[start : start + block.shape[2]], device=videos.device)
        mask = rearrange(mask, "f -> 1 1 f 1 1")  # whole frames, every video alike
        sampled = sample_block(block, mask)
        videos[:, :, first_new:stop] = sampled[:, :, first_new - start : stop - start]
        known[first_new:stop] = [True] * (stop - first_new)
    return videos
