"""The U-net's checks: its constructor arguments, and its inputs by shape only, never by
value (reading values would make the host wait for the GPU), each with one message naming
what was expected and what came."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .checks import check_int, check_number
from .denoiser import DenoiserSpec, condition_kind
from .helpers import exists


def check_arguments(
    *,
    dim: int,
    cond_dim: int | None,
    out_dim: int | None,
    dim_mults: tuple[int, ...],
    channels: int,
    attn_heads: int,
    attn_dim_head: int,
    init_dim: int | None,
    init_kernel_size: int,
    block_type: str,
) -> None:
    """Raise a TypeError or ValueError for constructor arguments that build no working U-net."""
    sizes = dict(dim=dim, channels=channels, attn_heads=attn_heads, attn_dim_head=attn_dim_head,
                 init_kernel_size=init_kernel_size, cond_dim=cond_dim, out_dim=out_dim, init_dim=init_dim)  # fmt: skip
    for name, value in sizes.items():
        if value is not None:  # cond_dim, out_dim and init_dim are optional
            check_int(name, value)
    if block_type != "resnet":
        raise ValueError(f"block_type must be 'resnet', got {block_type!r}")
    if init_kernel_size % 2 != 1:
        raise ValueError(f"init_kernel_size must be odd, got {init_kernel_size}")
    if not isinstance(dim_mults, (tuple, list)) or len(dim_mults) == 0:
        raise ValueError(f"dim_mults must name at least one level, a tuple of positive integers, got {dim_mults!r}")
    for index, mult in enumerate(dim_mults):
        check_int(f"dim_mults[{index}]", mult)


def batch_of_steps(x: Any, time: Tensor | float) -> Tensor:
    """The diffusion steps as a `(b,)` tensor (a number or a 0-d tensor is broadcast)."""
    if not isinstance(x, Tensor) or x.ndim != 5:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"expected a video batch (b, c, f, h, w), got {shape}")
    if not isinstance(time, Tensor):
        time = torch.tensor(check_number("time", time), device=x.device)
    return time.expand(x.shape[0]) if time.ndim == 0 else time


def input_signature(*inputs: Any) -> tuple:
    """What the checks depend on: each tensor's shape and dtype, numbers as they are, the type of anything else."""
    return tuple(
        (tuple(value.shape), value.dtype) if isinstance(value, Tensor)
        else value if isinstance(value, (int, float)) else type(value)
        for value in inputs
    )  # fmt: skip


def check_inputs(
    spec: DenoiserSpec,
    size_multiple: int,
    x: Tensor,
    time: Tensor,
    cond: Any,
    *,
    focus_present_mask: Tensor | None,
    independent_frames: Tensor | None,
    cond_scale: float,
) -> None:
    """Raise a ValueError or TypeError for inputs the network cannot take.

    Args:
        spec: what the network takes.
        size_multiple: height and width must be multiples of it (2 ** downsamplings).
        x, time, cond, focus_present_mask, independent_frames, cond_scale: as in
            `Unet3D.forward` and `forward_with_cond_scale`; `time` already `(b,)`.
    """
    b, c, f, h, w = x.shape
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point video batch (noisy videos around [-1, 1]), got dtype {x.dtype}")
    if c != spec.channels:
        raise ValueError(f"expected {spec.channels} channels, got {c} (video shape {tuple(x.shape)})")
    if h % size_multiple or w % size_multiple:
        downsamplings = size_multiple.bit_length() - 1
        raise ValueError(
            f"height and width must be multiples of {size_multiple} for {downsamplings} downsamplings, got {h}x{w}"
        )
    if time.shape != (b,):
        raise ValueError(f"expected one timestep per video, shape ({b},), got {tuple(time.shape)}")
    if isinstance(cond, (str, list, tuple)):
        raise TypeError(
            "Unet3D takes conditioning as a tensor (b, cond_dim); embed strings with "
            "bert_embed(tokenize(texts)), or pass them to GaussianDiffusion, which does"
        )
    if exists(independent_frames) and independent_frames.shape not in ((f,), (b, f)):
        raise ValueError(
            f"independent_frames must have shape ({f},) or ({b}, {f}), got {tuple(independent_frames.shape)}"
        )
    if exists(focus_present_mask) and focus_present_mask.shape != (b,):
        raise ValueError(f"focus_present_mask must have shape ({b},), got {tuple(focus_present_mask.shape)}")
    shape = tuple(cond.shape) if isinstance(cond, Tensor) else None
    spec.check_condition(condition_kind(cond), shape=shape, rows=b, cond_scale=cond_scale)
