"""Experiment tracking through `accelerate`'s trackers (TensorBoard, Weights & Biases, ...).

The Trainer logs its scalars with `Accelerator.log`; this module starts the trackers with
the run's settings and sends them the milestone sample grids: as a video where the
tracker shows videos (Weights & Biases; TensorBoard when `moviepy` is installed, which its
`add_video` needs), else as the frames side by side in one image.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import torch
from accelerate import Accelerator
from einops import rearrange
from torch import Tensor

logger = logging.getLogger(__name__)

PROJECT_NAME = "video-diffusion"
SAMPLE_FPS = 8


def tracker_config(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings as every tracker stores them: numbers, strings and booleans (others as text)."""
    return {name: value if isinstance(value, (bool, int, float, str)) else str(value) for name, value in settings.items()}


def start_trackers(accelerator: Accelerator, settings: dict[str, Any]) -> None:
    """Start the accelerator's trackers (if any) with the run's settings as their config."""
    if accelerator.log_with:
        accelerator.init_trackers(PROJECT_NAME, config=tracker_config(settings))


def log_sample_grid(accelerator: Accelerator, grid: Tensor, step: int) -> None:
    """Send the sample grid `(c, f, h, w)` in [0, 1] to every tracker, as `samples`."""
    if not accelerator.is_main_process:
        return
    frames = rearrange(grid.clamp(0, 1), "c f h w -> f c h w")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            _tensorboard_video(tracker.tracker, frames, step)
        elif tracker.name == "wandb":
            import wandb

            video = frames.mul(255).round().to(torch.uint8).numpy()  # (f, c, h, w)
            tracker.log({"samples": wandb.Video(video, fps=SAMPLE_FPS, format="gif")}, step=step)
        elif hasattr(tracker, "log_images"):
            strip = rearrange(frames, "f c h w -> h (f w) c").mul(255).round().to(torch.uint8).numpy()
            tracker.log_images({"samples": [strip]}, step=step)
        else:
            logger.debug("the %s tracker takes no images: samples not sent", tracker.name)


def _tensorboard_video(writer: Any, frames: Tensor, step: int) -> None:
    if importlib.util.find_spec("moviepy") is not None:
        writer.add_video("samples", frames.unsqueeze(0), global_step=step, fps=SAMPLE_FPS)  # (1, f, c, h, w)
    else:
        # (f, c, h, w) -> (c, h, f * w): the frames left to right in one image
        writer.add_image("samples", rearrange(frames, "f c h w -> c h (f w)"), global_step=step)
