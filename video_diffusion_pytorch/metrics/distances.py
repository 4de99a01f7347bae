"""Fréchet Video Distance (Unterthiner et al. 2018) on I3D features and per-frame FID
(Heusel et al. 2017) on Inception features, between real and generated videos.

`VideoMetrics` holds the real videos and scores any number of sample sets against them
(the networks are built, and the real features computed, once, on first use), e.g. at a
Trainer's milestones; `frechet_video_distance` and `frame_fid` compare two sets once.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from einops import rearrange
from torch import Tensor

from .coherence import Criteria, motion_coherence
from .frechet import frechet_distance_of
from .networks import I3DFeatures, InceptionFeatures

METRICS = ("fvd", "fid", "coherence")
Network = Callable[[Tensor], Tensor]


def _check_videos(videos: Tensor, name: str) -> None:
    if not isinstance(videos, Tensor):
        raise TypeError(f"{name} must be a tensor (n, channels, frames, height, width) in [0, 1], got {type(videos).__name__}")
    if videos.ndim != 5 or videos.shape[1] not in (1, 3) or videos.shape[0] < 2:
        raise ValueError(f"{name} must be at least 2 videos (n, 1 or 3 channels, frames, height, width), got shape {tuple(videos.shape)}")


def batched_features(inputs: Tensor, network: Network, batch_size: int, device: torch.device | str) -> Tensor:
    """`network` over `inputs` in batches of `batch_size` on `device`; features `(n, d)` on the CPU."""
    return torch.cat([network(batch.to(device)).cpu() for batch in inputs.split(batch_size)])


class VideoMetrics:
    """Scores of generated videos against `real` ones: `metrics(samples) -> {name: value}`.

    - 'fvd': Fréchet distance of I3D's Kinetics-400 logits of whole videos;
    - 'fid': Fréchet distance of the FID Inception's features of every frame;
    - 'coherence': the fraction of coherent videos (`coherence.motion_coherence`, criteria
      read off `real`), meaningful for videos of one shape on a plain background.

    Args:
        real: videos `(n, c, f, h, w)` in [0, 1], c = 1 or 3, n >= 2.
        metrics: which of `METRICS` to compute.
        i3d, inception: the feature networks (default: the released weights, from
            `i3d_weights` / `inception_weights` or downloaded on first use).
        i3d_weights, inception_weights: paths to the weight files.
        batch_size: videos per network batch (frames per batch are `batch_size * f`).
        device: where the networks run.
    """

    def __init__(
        self, real: Tensor, metrics: Sequence[str] = ("fvd", "fid"), *, i3d: Network | None = None,
        inception: Network | None = None, i3d_weights: str | None = None, inception_weights: str | None = None,
        batch_size: int = 8, device: torch.device | str = "cpu",
    ):  # fmt: skip
        _check_videos(real, "real")
        if unknown := [name for name in metrics if name not in METRICS]:
            raise ValueError(f"metrics must be some of {METRICS}, got {unknown}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.real, self.metrics, self.batch_size, self.device = real, tuple(metrics), batch_size, device
        self._networks = {"fvd": i3d, "fid": inception}
        self._weights = {"fvd": i3d_weights, "fid": inception_weights}
        self._real_features: dict[str, Tensor] = {}
        self._criteria: Criteria | None = None

    def _features(self, metric: str, videos: Tensor) -> Tensor:
        if self._networks[metric] is None:  # built, and its weights read or fetched, on first use
            build = I3DFeatures if metric == "fvd" else InceptionFeatures
            self._networks[metric] = build(weights=self._weights[metric]).to(self.device)
        if metric == "fid":  # (n, c, f, h, w) -> (n f, c, h, w): every frame an image
            return batched_features(rearrange(videos, "n c f h w -> (n f) c h w"), self._networks[metric],
                                    self.batch_size * videos.shape[2], self.device)  # fmt: skip
        return batched_features(videos, self._networks[metric], self.batch_size, self.device)

    def __call__(self, samples: Tensor) -> dict[str, float]:
        _check_videos(samples, "samples")
        if "fvd" in self.metrics and samples.shape[2] != self.real.shape[2]:
            raise ValueError(f"FVD compares videos of equal length: real have {self.real.shape[2]} frames, samples {samples.shape[2]}")
        scores = {}
        for metric in self.metrics:
            if metric == "coherence":
                self._criteria = self._criteria or Criteria.from_data(self.real)
                scores[metric] = motion_coherence(samples, self._criteria)["coherent_videos"]
                continue
            if metric not in self._real_features:
                self._real_features[metric] = self._features(metric, self.real)
            scores[metric] = frechet_distance_of(self._real_features[metric], self._features(metric, samples))
        return scores


def frechet_video_distance(real: Tensor, fake: Tensor, *, network: Network | None = None, weights: str | None = None,
                           batch_size: int = 8, device: torch.device | str = "cpu") -> float:  # fmt: skip
    """FVD between videos `(n, c, f, h, w)` in [0, 1] of equal length; `network` maps videos to
    features (default: I3D, weights from `weights` or downloaded on first use)."""
    return VideoMetrics(real, ("fvd",), i3d=network, i3d_weights=weights, batch_size=batch_size, device=device)(fake)["fvd"]


def frame_fid(real: Tensor, fake: Tensor, *, network: Network | None = None, weights: str | None = None,
              batch_size: int = 8, device: torch.device | str = "cpu") -> float:  # fmt: skip
    """Per-frame FID between videos `(n, c, f, h, w)` in [0, 1]; `network` maps frames to
    features (default: the FID Inception, weights from `weights` or downloaded on first use)."""
    return VideoMetrics(real, ("fid",), inception=network, inception_weights=weights, batch_size=batch_size, device=device)(fake)["fid"]
