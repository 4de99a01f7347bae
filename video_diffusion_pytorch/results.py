"""What a training run shows besides checkpoints: sample grids, the loss curve and the
validation loss."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .files import atomic_path
from .helpers import normalize_to_neg_one_to_one


def video_grid(videos: Tensor, rows: int, padding: int = 2) -> Tensor:
    """Tile videos `(n, c, f, h, w)` into one video `(c, f, rows * (h + 2p), cols * (w + 2p))`.

    Each frame is padded by `padding` black pixels on every side (the original Trainer's
    layout); tiles fill row by row, and missing tiles of the last row stay black.
    """
    n = videos.shape[0]
    if rows < 1 or n < 1:
        raise ValueError(f"need at least one row and one video, got rows={rows} and {n} videos")
    cols = -(-n // rows)  # ceil
    blank = videos.new_zeros((rows * cols - n, *videos.shape[1:]))
    videos = F.pad(torch.cat((videos, blank)), (padding,) * 4)
    # (rows * cols, c, f, h, w) -> (c, f, rows * h, cols * w)
    return rearrange(videos, "(i j) c f h w -> c f (i h) (j w)", i=rows)


def plot_losses(losses: Sequence[float], path: str | os.PathLike, smoothing: int = 50) -> Path:
    """Write a PNG of the training loss per step (and its moving average), atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = torch.tensor(list(losses), dtype=torch.float64)
    figure = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    steps = torch.arange(1, len(values) + 1)
    axes.plot(steps, values, color="tab:blue", alpha=0.35, linewidth=0.8, label="loss")
    window = min(smoothing, len(values))
    if window > 1:
        average = values.unfold(0, window, 1).mean(dim=-1)  # (steps - window + 1,)
        axes.plot(steps[window - 1 :], average, color="tab:blue", linewidth=1.6, label=f"mean of {window} steps")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    if len(values) and bool((values > 0).all()):
        axes.set_yscale("log")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right")
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    return path


@torch.no_grad()
def validation_loss(diffusion: nn.Module, videos: Tensor, cond: Tensor | None = None, *, seed: int = 0) -> float:
    """The denoising loss of `diffusion` on held-out `videos (n, c, f, h, w)` in [0, 1] with
    fixed noise and fixed steps, so that milestones (and runs) are comparable.

    Clip i is noised at step `floor((i + 1/2) T / n)`, spreading the clips over the whole
    schedule, with noise drawn from a generator seeded with `seed`.
    """
    n, steps = videos.shape[0], diffusion.num_timesteps
    t = ((torch.arange(n, dtype=torch.float64) + 0.5) * steps / n).long()  # (n,) evenly over [0, T)
    noise = torch.randn(videos.shape, generator=torch.Generator().manual_seed(seed))
    device = next(diffusion.parameters()).device
    cond = cond.to(device) if cond is not None else None
    x_start = normalize_to_neg_one_to_one(videos.to(device))
    return float(diffusion.p_losses(x_start, t.to(device), cond=cond, noise=noise.to(device)))
