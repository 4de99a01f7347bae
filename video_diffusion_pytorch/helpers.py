"""Small helpers shared by every module (the only copy of each)."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


def exists(value: Any) -> bool:
    return value is not None


def default(value: T | None, fallback: T | Callable[[], T]) -> T:
    """`value` when it is given, else `fallback` (called when it is a function)."""
    if exists(value):
        return value
    return fallback() if callable(fallback) else fallback


def cast_tuple(value: Any, length: int = 1) -> tuple:
    return value if isinstance(value, tuple) else (value,) * length


def extract(table: Tensor, t: Tensor, x_shape: torch.Size) -> Tensor:
    """Gather `table[t]` for a batch of timesteps and shape it to broadcast over `x_shape`.

    (b,) -> (b, 1, 1, 1, 1) for a video batch.
    """
    out = table.gather(-1, t)
    return out.reshape(t.shape[0], *((1,) * (len(x_shape) - 1)))


def randn(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise of `like`'s shape, dtype and device, drawn from `generator`
    (the global generator when None); `torch.randn_like` takes no generator."""
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def prob_mask_like(shape: tuple[int, ...], prob: float, device: torch.device) -> Tensor:
    """Boolean mask, each entry True with probability `prob`; 0 and 1 draw no random numbers."""
    if prob == 1:
        return torch.ones(shape, device=device, dtype=torch.bool)
    if prob == 0:
        return torch.zeros(shape, device=device, dtype=torch.bool)
    return torch.zeros(shape, device=device).float().uniform_(0, 1) < prob


def normalize_to_neg_one_to_one(videos: Tensor) -> Tensor:
    return videos * 2 - 1


def unnormalize_to_zero_to_one(x: Tensor) -> Tensor:
    return (x + 1) * 0.5


def num_to_groups(num: int, divisor: int) -> list[int]:
    """Split `num` into chunks of at most `divisor`: 10, 4 -> [4, 4, 2]."""
    groups, remainder = divmod(num, divisor)
    return [divisor] * groups + ([remainder] if remainder > 0 else [])
