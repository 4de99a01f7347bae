"""Temporal coherence of videos of one moving shape (`synthetic.moving_shapes`), measured
against what the data makes measurable. Criteria are read off real clips (`Criteria.from_data`):

- well-formed frame: the background sits at the data's level and the frame holds exactly
  one bright blob whose area lies in the range seen in the data;
- coherent video: every frame well-formed, and from frame to frame the blob moves with
  the data's smoothness (centroid acceleration), keeps its brightness and its size,
  each within the data's 99.5th percentile (with a 25% margin).

FVD and FID see whether samples look like the data; this sees whether their frames move
like it, which is what few-step samplers lose first. `wilson_interval` gives the
confidence interval of such a rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

BACKGROUND = 0.08  # moving_shapes' background level
FOREGROUND_THRESHOLD = 0.2  # between the background and the dimmest shape colour (0.35)


def label_blobs(foreground: Tensor) -> Tensor:
    """Connected components (8-neighbourhood) of bool frames `(n, h, w)`: labels `(n, h, w)`,
    0 for background. Each pixel takes the largest label around it until nothing changes."""
    n, h, w = foreground.shape
    labels = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, h, w) * foreground
    while True:
        grown = F.max_pool2d(labels[:, None], 3, stride=1, padding=1)[:, 0] * foreground
        if torch.equal(grown, labels):
            return labels.long()
        labels = grown


@dataclass
class FrameStats:
    """Per-frame measurements of videos `(b, c, f, h, w)`, each shaped `(b, f)` (colour `(b, f, c)`)."""

    blobs: Tensor
    area: Tensor
    background_error: Tensor
    centroid: Tensor  # (b, f, 2) in pixels
    colour: Tensor

    @classmethod
    def of(cls, videos: Tensor) -> "FrameStats":
        b, c, f, h, w = videos.shape
        frames = rearrange(videos.clamp(0, 1), "b c f h w -> (b f) c h w")
        brightness = frames.amax(dim=1)  # (n, h, w)
        foreground = brightness > FOREGROUND_THRESHOLD
        labels = label_blobs(foreground)
        blobs = torch.tensor([len(torch.unique(frame[frame > 0])) for frame in labels])
        area = foreground.sum(dim=(1, 2)).float()
        background = ~F.max_pool2d(foreground[:, None].float(), 3, stride=1, padding=1)[:, 0].bool()
        background_error = ((brightness - BACKGROUND).abs() * background).sum(dim=(1, 2)) / background.sum(
            dim=(1, 2)
        ).clamp(min=1)
        weight = (brightness - BACKGROUND).clamp(min=0)  # intensity-weighted centroid
        coords = torch.arange(h, dtype=torch.float32)
        total = weight.sum(dim=(1, 2)).clamp(min=1e-6)
        centroid = torch.stack(
            ((weight.sum(dim=2) * coords).sum(dim=1) / total, (weight.sum(dim=1) * coords).sum(dim=1) / total), dim=-1
        )
        core = brightness >= 0.8 * brightness.amax(dim=(1, 2), keepdim=True)  # fully covered pixels
        colour = (frames * core[:, None]).sum(dim=(2, 3)) / core[:, None].sum(dim=(2, 3)).clamp(min=1)

        def per_video(x: Tensor) -> Tensor:
            return rearrange(x, "(b f) ... -> b f ...", b=b)

        return cls(*(per_video(x) for x in (blobs, area, background_error, centroid, colour)))

    def acceleration(self) -> Tensor:
        """|c_{f+1} - 2 c_f + c_{f-1}| in pixels, `(b, f - 2)`, for frames 1..f-2."""
        c = self.centroid
        return (c[:, 2:] - 2 * c[:, 1:-1] + c[:, :-2]).norm(dim=-1)

    def colour_jump(self) -> Tensor:
        """Mean absolute colour change from each frame to the next, `(b, f - 1)`."""
        return (self.colour[:, 1:] - self.colour[:, :-1]).abs().mean(dim=-1)

    def area_jump(self) -> Tensor:
        """Relative area change from each frame to the next, `(b, f - 1)`."""
        return (self.area[:, 1:] - self.area[:, :-1]).abs() / self.area[:, :-1].clamp(min=1)


@dataclass
class Criteria:
    """Thresholds read off the training data; `well_formed`, `smooth_steps` and `coherent`
    apply them to `FrameStats`."""

    min_area: float
    max_area: float
    max_background_error: float
    max_acceleration: float
    max_colour_jump: float
    max_area_jump: float

    @classmethod
    def from_data(cls, videos: Tensor, margin: float = 1.25) -> "Criteria":
        """Thresholds from real clips `(b, c, f, h, w)` in [0, 1]: their 0.5th and 99.5th
        percentiles, widened by `margin`."""
        stats = FrameStats.of(videos)

        def high(x: Tensor) -> float:
            return torch.quantile(x.flatten().float(), 0.995).item() * margin

        area = stats.area.flatten()
        return cls(
            min_area=torch.quantile(area, 0.005).item() / margin,
            max_area=high(area),
            max_background_error=max(high(stats.background_error), 0.03),
            max_acceleration=max(high(stats.acceleration()), 1.0),
            max_colour_jump=max(high(stats.colour_jump()), 0.05),
            max_area_jump=max(high(stats.area_jump()), 0.25),
        )

    def well_formed(self, stats: FrameStats) -> Tensor:
        """Bool `(b, f)`: the background at the data's level and one blob of plausible size."""
        return (
            (stats.blobs == 1)
            & (stats.area >= self.min_area)
            & (stats.area <= self.max_area)
            & (stats.background_error <= self.max_background_error)
        )

    def smooth_steps(self, stats: FrameStats) -> Tensor:
        """Bool `(b, f - 1)`: the step from frame i to i+1 keeps colour and size, and the
        motion around it (acceleration at i and i+1, where defined) is data-like."""
        steps = (stats.colour_jump() <= self.max_colour_jump) & (stats.area_jump() <= self.max_area_jump)
        smooth = stats.acceleration() <= self.max_acceleration  # (b, f - 2) at frames 1..f-2
        steps[:, 1:] &= smooth  # acceleration at frame i for the step i -> i+1
        steps[:, :-1] &= smooth  # and at frame i+1
        return steps

    def coherent(self, stats: FrameStats) -> Tensor:
        """Bool `(b,)`: every frame well-formed and every step smooth."""
        return self.well_formed(stats).all(dim=1) & self.smooth_steps(stats).all(dim=1)


def motion_coherence(videos: Tensor, criteria: Criteria) -> dict[str, float]:
    """The scores of videos `(b, c, f, h, w)` in [0, 1]: the fraction of well-formed frames
    and of coherent videos, and the mean centroid acceleration, colour jump and frame
    difference (over well-formed frames where they need a blob)."""
    stats = FrameStats.of(videos)
    well_formed = criteria.well_formed(stats)
    both = well_formed[:, 1:] & well_formed[:, :-1]  # steps between well-formed frames
    inner = well_formed[:, 2:] & well_formed[:, 1:-1] & well_formed[:, :-2]
    return dict(
        well_formed_frames=well_formed.float().mean().item(),
        coherent_videos=criteria.coherent(stats).float().mean().item(),
        acceleration_px=stats.acceleration()[inner].mean().item() if inner.any() else math.nan,
        colour_jump=stats.colour_jump()[both].mean().item() if both.any() else math.nan,
        frame_difference=(videos[:, :, 1:] - videos[:, :, :-1]).abs().mean().item(),
    )


def coherent_videos(videos: Tensor, criteria: Criteria) -> Tensor:
    """Bool `(b,)`: which of the videos `(b, c, f, h, w)` in [0, 1] are coherent."""
    return criteria.coherent(FrameStats.of(videos))


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a rate (Wilson 1927), 95% at z = 1.96: unlike the
    normal approximation it stays in [0, 1] and is sound near 0 and 1 and for few trials."""
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes} of {trials}")
    p = successes / trials
    centre = (p + z**2 / (2 * trials)) / (1 + z**2 / trials)
    half = z / (1 + z**2 / trials) * math.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2))
    return max(centre - half, 0.0), min(centre + half, 1.0)
