"""Synthetic clips with known motion: shapes that move in straight lines and bounce.

Used by the demo, the tests and the quality benchmark, where the true motion lets a
sample's temporal coherence be measured.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from .checks import check_int, check_number


def moving_shapes(
    num_clips: int,
    *,
    num_frames: int = 8,
    image_size: int = 16,
    channels: int = 3,
    num_shapes: int = 1,
    shape_size: float = 0.3,
    max_speed: float = 0.12,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Clips of bright squares and discs gliding over a dark background.

    Each shape has a random colour, size around `shape_size` (a fraction of the frame),
    kind (square or disc), start position and constant velocity (at most `max_speed`
    frame widths per frame); it bounces off the borders. Shapes are drawn anti-aliased.

    Returns videos `(num_clips, channels, num_frames, image_size, image_size)` in [0, 1].
    """
    check_int("num_clips", num_clips, minimum=0)
    for name, value in dict(num_frames=num_frames, image_size=image_size, channels=channels, num_shapes=num_shapes).items():
        check_int(name, value)
    check_number("shape_size", shape_size, low=0, high=1)
    check_number("max_speed", max_speed, low=0)
    g = generator
    n, s = num_clips * num_shapes, image_size

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=g)

    radius = shape_size / 2 * (0.75 + 0.5 * rand(n))  # (n,)
    start = radius[:, None] + rand(n, 2) * (1 - 2 * radius[:, None])  # (n, 2) in [r, 1 - r]
    angle = rand(n) * 2 * torch.pi
    speed = max_speed * (0.5 + 0.5 * rand(n))
    velocity = torch.stack((angle.cos(), angle.sin()), dim=-1) * speed[:, None]  # (n, 2)
    is_disc = rand(n) < 0.5
    colour = 0.35 + 0.65 * rand(n, channels)  # bright on a dark background

    # straight-line motion reflected at the borders of [r, 1 - r]: a triangle wave
    steps = torch.arange(num_frames, dtype=torch.float32)  # (f,)
    span = (1 - 2 * radius)[:, None, None]  # (n, 1, 1)
    travelled = start[:, None, :] - radius[:, None, None] + velocity[:, None, :] * steps[None, :, None]
    phase = torch.remainder(travelled, 2 * span)
    centre = radius[:, None, None] + torch.where(phase > span, 2 * span - phase, phase)  # (n, f, 2)

    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / s  # pixel centres in (0, 1)
    dy = coords[None, None, :, None] - centre[..., 0, None, None]  # (n, f, s, 1)
    dx = coords[None, None, None, :] - centre[..., 1, None, None]  # (n, f, 1, s)
    r = radius[:, None, None, None]
    disc_distance = (dy**2 + dx**2).sqrt() - r
    square_distance = torch.maximum(dy.abs(), dx.abs()) - r
    distance = torch.where(is_disc[:, None, None, None], disc_distance, square_distance)
    coverage = (0.5 - distance * s).clamp(0, 1)  # (n, f, s, s), one pixel of anti-aliasing

    # (n, f, s, s) x (n, c) -> (clips, shapes, c, f, s, s), composited by maximum
    layers = coverage[:, None] * colour[:, :, None, None, None]
    layers = rearrange(layers, "(b k) c f h w -> b k c f h w", k=num_shapes)
    background = 0.08
    return layers.amax(dim=1).clamp(min=background)
