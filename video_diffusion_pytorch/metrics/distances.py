"""Fréchet Video Distance (Unterthiner et al. 2018) on I3D features and per-frame FID
(Heusel et al. 2017) on Inception features, between two sets of videos."""

from __future__ import annotations

from typing import Callable

import torch
from einops import rearrange
from torch import Tensor

from .frechet import frechet_distance_of
from .networks import I3DFeatures, InceptionFeatures


def _check_videos(videos: Tensor, name: str) -> None:
    if not isinstance(videos, Tensor):
        raise TypeError(f"{name} must be a tensor (n, channels, frames, height, width) in [0, 1], got {type(videos).__name__}")
    if videos.ndim != 5 or videos.shape[1] not in (1, 3) or videos.shape[0] < 2:
        raise ValueError(f"{name} must be at least 2 videos (n, 1 or 3 channels, frames, height, width), got shape {tuple(videos.shape)}")


def batched_features(inputs: Tensor, network: Callable[[Tensor], Tensor], batch_size: int, device: torch.device | str) -> Tensor:
    """`network` over `inputs` in batches of `batch_size` on `device`; features `(n, d)` on the CPU."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return torch.cat([network(batch.to(device)).cpu() for batch in inputs.split(batch_size)])


def frechet_video_distance(
    real: Tensor, fake: Tensor, *, network: Callable[[Tensor], Tensor] | None = None, weights: str | None = None,
    batch_size: int = 8, device: torch.device | str = "cpu",
) -> float:  # fmt: skip
    """FVD between videos `(n, c, f, h, w)` in [0, 1] (c = 1 or 3; the two sets may differ
    in size but not in frames): the Fréchet distance of I3D's Kinetics-400 logits.

    Args:
        real, fake: the two sets of videos.
        network: videos -> features `(b, d)`, on `device` (default: I3D with the released
            weights, from `weights` or downloaded on first use).
        weights: a path to I3D's `rgb_imagenet.pt`.
        batch_size, device: how the network is run.
    """
    _check_videos(real, "real")
    _check_videos(fake, "fake")
    if real.shape[2] != fake.shape[2]:
        raise ValueError(f"real and fake videos must have the same number of frames, got {real.shape[2]} and {fake.shape[2]}")
    network = network or I3DFeatures(weights=weights).to(device)
    features = [batched_features(videos, network, batch_size, device) for videos in (real, fake)]
    return frechet_distance_of(*features)


def frame_fid(
    real: Tensor, fake: Tensor, *, network: Callable[[Tensor], Tensor] | None = None, weights: str | None = None,
    batch_size: int = 32, device: torch.device | str = "cpu",
) -> float:  # fmt: skip
    """Per-frame FID between videos `(n, c, f, h, w)` in [0, 1]: every frame of each set is
    an image, compared on the FID Inception's 2048 pooled features.

    Args:
        real, fake: the two sets of videos (any number of frames each).
        network: frames `(b, c, h, w)` -> features `(b, d)`, on `device` (default: the FID
            Inception-v3, weights from `weights` or downloaded on first use).
        weights: a path to the FID Inception weights.
        batch_size, device: how the network is run (frames per batch).
    """
    _check_videos(real, "real")
    _check_videos(fake, "fake")
    network = network or InceptionFeatures(weights=weights).to(device)
    # (n, c, f, h, w) -> (n f, c, h, w): every frame an image
    frames = [rearrange(videos, "n c f h w -> (n f) c h w") for videos in (real, fake)]
    return frechet_distance_of(*(batched_features(f, network, batch_size, device) for f in frames))
