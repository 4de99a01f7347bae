"""Conditioning a sample on known frames or pixels (Video Diffusion Models, Ho et al. 2022, §3.1).

Two methods generate the unknown part `x^b` of a video consistently with a known part `x^a`:

- replacement (Song et al. 2021, §5.2 / appendix): at every step the known part of the
  noisy sample is replaced by a fresh draw from the forward process, `z_t^a ~ q(z_t | x^a)`;
- reconstruction guidance (Ho et al. 2022, eq. 7): the same replacement, and in addition
  the model's prediction of the unknown part is moved along the gradient that makes its
  reconstruction of the known part match the data,
  `x~^b = x^^b - (w_r alpha_t / 2) grad_{z_t^b} || x^a - x^^a(z_t) ||²`.

Long videos are made block by block (`plan_windows`): each block is one sample of the
model's frame count, conditioned on the frames that already exist inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from .helpers import normalize_to_neg_one_to_one

CONDITIONING_METHODS = ("reconstruction", "replacement")

# Weight of reconstruction guidance. The squared error is summed over the known values,
# so the gradient already grows with their number; the paper finds weights above 1 help.
# On the quality benchmark (benchmarks/quality.py, 4 known frames of 16 x 16 px) weights
# of 4 to 10 gave the most coherent block boundaries; 1 was too weak, and 30 overshot
# into artefacts.
DEFAULT_RECONSTRUCTION_WEIGHT = 4.0


@dataclass(frozen=True)
class FrameCondition:
    """Known values of a batch of noise-free videos, and how to condition on them.

    Attributes:
        videos: the known videos in [0, 1], `(b, c, f, h, w)`; values where `mask` is
            False are ignored.
        known: the same in [-1, 1], the diffusion's data space.
        mask: bool `(b, c, f, h, w)`, True where the value is known.
        method: 'reconstruction' or 'replacement'.
        w_r: the reconstruction guidance weight (unused by replacement).
    """

    videos: Tensor
    known: Tensor
    mask: Tensor
    method: str
    w_r: float

    def replace(self, x_t: Tensor, noised_known: Tensor) -> Tensor:
        """Put the forward-noised known values `z_t^a ~ q(z_t | x^a)` into `x_t`."""
        return torch.where(self.mask, noised_known, x_t)

    def paste(self, videos: Tensor) -> Tensor:
        """Put the known values, exactly as given, into generated videos in [0, 1]."""
        return torch.where(self.mask, self.videos, videos)

    def guide(self, x_t: Tensor, predict_x_start: Callable[[Tensor], Tensor], alpha_t: Tensor) -> Tensor:
        """The model's x_0 prediction at `x_t`, with reconstruction guidance (eq. 7) when the
        method asks for it; `alpha_t = sqrt(abar_t)` broadcasts against `x_t`."""
        if self.method == "replacement":
            return predict_x_start(x_t)
        # sampling runs in inference mode; autograd needs ordinary tensors, hence the clones
        with torch.inference_mode(False), torch.enable_grad():
            z_t = x_t.clone().requires_grad_()
            known, mask = self.known.clone(), self.mask.clone()
            x_start = predict_x_start(z_t)
            error = torch.where(mask, known - x_start, 0.0).square().sum()  # || x^a - x^^a(z_t) ||²
            (grad,) = torch.autograd.grad(error, z_t)
        x_start = x_start.detach()
        weight = self.w_r * alpha_t / 2
        return torch.where(mask, x_start, x_start - weight * grad)  # eq. 7, on the unknown part only


def frame_condition(
    known: Any,
    known_mask: Any,
    *,
    video_shape: tuple[int, int, int, int],
    method: str,
    w_r: float,
    device: torch.device,
) -> FrameCondition:
    """Check and normalise the known videos and mask given to `sample`.

    Args:
        known: videos in [0, 1] of shape `(b, *video_shape)`.
        known_mask: bool, `(b, c, f, h, w)` or broadcastable to it with ones elsewhere,
            e.g. `(b, 1, f, 1, 1)` (whole frames) or `(1, 1, f, 1, 1)`.
        video_shape: the expected `(channels, frames, height, width)`.
        method: 'reconstruction' or 'replacement'.
        w_r: the reconstruction guidance weight, at least 0.
        device: where sampling runs.
    """
    if method not in CONDITIONING_METHODS:
        raise ValueError(f"method must be one of {CONDITIONING_METHODS}, got {method!r}")
    if not w_r >= 0:
        raise ValueError(f"w_r must be at least 0, got {w_r}")
    if not isinstance(known, Tensor):
        raise TypeError(f"known must be a tensor of shape (b, {', '.join(map(str, video_shape))}), got {type(known).__name__}")
    if known.ndim != 5 or tuple(known.shape[1:]) != tuple(video_shape):
        raise ValueError(
            f"expected known videos of shape (b, {', '.join(map(str, video_shape))}), got {tuple(known.shape)}"
        )
    if not isinstance(known_mask, Tensor) or known_mask.dtype != torch.bool:
        kind = known_mask.dtype if isinstance(known_mask, Tensor) else type(known_mask).__name__
        raise TypeError(f"known_mask must be a bool tensor, got {kind}")
    full = tuple(known.shape)
    if known_mask.ndim != 5 or any(m not in (1, n) for m, n in zip(known_mask.shape, full)):
        raise ValueError(
            f"known_mask must have shape {full} or be broadcastable to it with ones elsewhere, "
            f"e.g. ({full[0]}, 1, {full[2]}, 1, 1); got {tuple(known_mask.shape)}"
        )
    if not (known.min() >= 0 and known.max() <= 1):  # NaN fails both
        raise ValueError(f"known videos must be in [0, 1], got values in [{known.min():.3g}, {known.max():.3g}]")
    videos = known.to(device)
    mask = known_mask.to(device).expand(full)
    return FrameCondition(videos, normalize_to_neg_one_to_one(videos), mask, method, float(w_r))


def plan_windows(known_frames: list[bool], window: int, context: int) -> list[tuple[int, int, int]]:
    """The blocks that generate every unknown frame of a long video, in order.

    Each block is `window` consecutive frames (or all of them when the video is shorter),
    conditioned on every frame already known inside it. A block reaches forward to the next
    known frame when the gap fits, so that a gap is filled between both of its ends
    (interpolation); otherwise it starts `context` frames before the first unknown frame
    and runs on (extension). Returns `(start, first_new, stop)` per block: the block covers
    `[start, start + window)` and produces the frames `[first_new, stop)`.
    """
    known = list(known_frames)
    length = len(known)
    window = min(window, length)
    blocks = []
    while not all(known):
        first_new = known.index(False)
        next_known = next((j for j in range(first_new, length) if known[j]), length)
        if next_known < length and next_known + 1 - window <= first_new:
            start = max(0, next_known + 1 - window)
        else:
            start = min(max(0, first_new - context), length - window)
        stop = min(next_known, start + window)
        blocks.append((start, first_new, stop))
        known[first_new:stop] = [True] * (stop - first_new)
    return blocks
