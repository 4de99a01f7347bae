"""A milestone's samples: a grid of videos from the EMA model, the same noise every time."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .data import video_tensor_to_gif
from .files import atomic_write_text
from .helpers import exists, num_to_groups
from .results import video_grid
from .training_data import TrainingData


@torch.no_grad()
def write_samples(
    ema_model: nn.Module,
    data: TrainingData,
    path: Path,
    *,
    rows: int,
    batch_size: int,
    cond_scale: float,
    seed: int,
    progress: bool,
) -> tuple[Path, Tensor]:
    """Sample `rows ** 2` videos from `ema_model` in batches of `batch_size` into the GIF
    grid `path` (and, for a text model, their prompts into the `.txt` beside it), with the
    data's conditions and noise from a generator seeded with `seed`. Returns the path and
    the grid `(c, f, h, w)`."""
    n = rows**2
    conditions, prompts = data.sample_conditions(n)
    device = next(ema_model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    videos, start = [], 0
    for size in num_to_groups(n, batch_size):
        cond = conditions[start : start + size].to(device) if exists(conditions) else None
        videos.append(ema_model.sample(
            cond=cond, cond_scale=cond_scale, batch_size=size, generator=generator, progress=progress,
        ))  # fmt: skip
        start += size
    grid = video_grid(torch.cat(videos).cpu(), rows)
    video_tensor_to_gif(grid, path)
    if exists(prompts):
        atomic_write_text(path.with_suffix(".txt"), "\n".join(prompts) + "\n")
    return path, grid
