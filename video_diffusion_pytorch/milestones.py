"""What a Trainer writes and logs at a milestone besides its checkpoint: a grid of samples
from the EMA model (the same noise every time), the loss curve, the validation loss and
the scores of `milestone_metrics` on the samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .data import video_tensor_to_gif
from .files import atomic_write_text
from .helpers import exists, num_to_groups
from .results import plot_losses, validation_loss, video_grid
from .tracking import log_sample_grid
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
) -> tuple[Path, Tensor, Tensor]:
    """Sample `rows ** 2` videos from `ema_model` in batches of `batch_size` into the GIF
    grid `path` (and, for a text model, their prompts into the `.txt` beside it), with the
    data's conditions and noise from a generator seeded with `seed`. Returns the path, the
    grid `(c, f, h, w)` and the videos `(rows², c, f, h, w)`."""
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
    videos = torch.cat(videos).cpu()
    grid = video_grid(videos, rows)
    video_tensor_to_gif(grid, path)
    if exists(prompts):
        atomic_write_text(path.with_suffix(".txt"), "\n".join(prompts) + "\n")
    return path, grid, videos


def write_outputs(trainer: Any, milestone: int) -> dict[str, Any]:
    """Write a Trainer's milestone `{milestone}.gif` and `loss.png`, send the grid, the
    validation loss and the scores of `milestone_metrics` to its trackers; returns
    `{'sample': path, 'validation_loss': ..., <score>: ...}` (the loss only with held-out
    clips, scores only with `milestone_metrics`). Main process only."""
    path, grid, videos = write_samples(
        trainer.ema_model, trainer.data, trainer.results_folder / f"{milestone}.gif", rows=trainer.num_sample_rows,
        batch_size=trainer.train_batch_size, cond_scale=trainer.sample_cond_scale, seed=trainer.sample_seed,
        progress=trainer.progress,
    )  # fmt: skip
    log_sample_grid(trainer.accelerator, grid, trainer.step)
    plot_losses(trainer.losses, trainer.results_folder / "loss.png")
    outputs: dict[str, Any] = {"sample": str(path)}
    held_out = trainer.data.validation_batch()
    if exists(held_out):
        loss = validation_loss(trainer.ema_model, held_out.videos, held_out.cond, seed=trainer.sample_seed)
        trainer.accelerator.log({"validation_loss": loss}, step=trainer.step)
        outputs["validation_loss"] = loss
    if exists(trainer.milestone_metrics):
        scores = trainer.milestone_metrics(videos)
        trainer.accelerator.log(scores, step=trainer.step)
        outputs.update(scores)
    return outputs
