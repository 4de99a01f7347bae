"""Checks of arguments, and of tensor values without making the host wait for an accelerator.

Reading a value of a GPU tensor on the host (`.item()`, `bool(...)`, `.all()`) stalls
the device's queue, so the tensor checks read the values of CPU tensors only (data is on
the CPU before it is moved to the device) and check just the dtype of the others.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import torch
from torch import Tensor, nn

RANGE_TOLERANCE = 1e-3  # rounding in a user's transforms may step this far outside [0, 1]

# ---------------------------------------------------------------- arguments


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """`value` when it is an integer of at least `minimum`: else a TypeError (a float, a
    string, a bool) or a ValueError naming `name`, what was expected and what came."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, at least {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def check_number(name: str, value: Any, *, low: float = -math.inf, high: float = math.inf) -> float:
    """`value` when it is a finite real number in [low, high]: else a TypeError or a ValueError
    naming `name`, what was expected and what came (NaN and infinity included)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not (math.isfinite(value) and low <= value <= high):
        bounds = f" in [{low}, {high}]" if math.isfinite(low) or math.isfinite(high) else ""
        raise ValueError(f"{name} must be a finite number{bounds}, got {value}")
    return float(value)


# ---------------------------------------------------------------- tensors


def check_finite(tensor: Tensor, name: str) -> None:
    """A ValueError when a CPU `tensor` holds NaN or infinite values (others: unchecked)."""
    if not _readable(tensor) or not tensor.is_floating_point():
        return
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise ValueError(f"{name} holds {bad} NaN or infinite value{'s' if bad > 1 else ''} among {tensor.numel()}; expected finite values")


def check_videos(videos: Any, expected: tuple, name: str = "videos") -> None:
    """Videos that a model takes: a tensor of the `expected` shape (entries that are not
    ints, such as 'b', match any size), a batch of at least one, values as in
    `check_video_values`; a TypeError or ValueError naming what came."""
    if not isinstance(videos, Tensor):
        raise TypeError(f"{name} must be a tensor of shape {expected}, got {type(videos).__name__}")
    if videos.ndim != len(expected) or any(isinstance(e, int) and e != n for e, n in zip(expected, videos.shape)):
        raise ValueError(
            f"expected {name} of shape {expected} (batch, channels, frames, height, width), got {tuple(videos.shape)}"
        )
    if videos.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one video, got a batch of 0 {tuple(videos.shape)}")
    check_video_values(videos, name)


def check_video_values(videos: Tensor, name: str = "videos") -> None:
    """Videos must be floating point in [0, 1]: a TypeError for another dtype (uint8
    pixels included), a ValueError for NaN, infinity or values outside [0, 1] (0-255
    pixels, or [-1, 1]); values are read only when `videos` is on the CPU."""
    if not videos.is_floating_point():
        hint = ": divide uint8 pixels by 255, videos.float() / 255" if videos.dtype == torch.uint8 else ""
        raise TypeError(f"{name} must be floating point with values in [0, 1], got dtype {videos.dtype}{hint}")
    check_finite(videos, name)
    if not _readable(videos) or videos.numel() == 0:
        return
    low, high = (float(value) for value in torch.aminmax(videos))
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ValueError(f"{name} must hold values in [0, 1], got values from {low:.4g} to {high:.4g}{_range_hint(low, high)}")


def _readable(tensor: Tensor) -> bool:
    """Whether reading `tensor`'s values costs no wait: a plain tensor on the CPU. Tensor
    subclasses are not read: fake tensors (shape-only estimates) hold no values, and
    distributed ones would communicate."""
    return tensor.device.type == "cpu" and type(tensor) in (Tensor, nn.Parameter)


def _range_hint(low: float, high: float) -> str:
    if high > 2:
        return ": divide 0-255 pixels by 255"
    if low < 0:
        return ": map [-1, 1] to [0, 1] with (x + 1) / 2"
    return ""
