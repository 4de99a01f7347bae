"""Layers of the 3D U-net: norms, wrappers, convolution blocks, resampling, time embedding.

Every convolution has a temporal kernel of 1: these layers mix pixels within a frame and
never across frames ("space-time factorised", Ho et al. 2022, §3). Frames meet only in
the temporal attention of `attention.py`.

Layout: every layer takes and returns videos `(b, c, f, h, w)` in any memory layout. The
U-net keeps them in `torch.channels_last_3d`, where `channels_last(x)` is a free view with
the channels on the last axis: norms then run as fused kernels and projections as plain
matrix products, without copies.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .helpers import exists

# ---------------------------------------------------------------- layout


def channels_last(x: Tensor) -> Tensor:
    """`(b, c, f, h, w) -> (b, f, h, w, c)`: a view, contiguous for a channels-last-3d video."""
    return rearrange(x, "b c f h w -> b f h w c")


def channels_first(x: Tensor) -> Tensor:
    """`(b, f, h, w, c) -> (b, c, f, h, w)`: a view, the inverse of `channels_last`."""
    return rearrange(x, "b f h w c -> b c f h w")


# ---------------------------------------------------------------- precision


def same_dtype(t: Tensor, like: Tensor) -> Tensor:
    """`t` in `like`'s dtype (no operation when it already is)."""
    return t if t.dtype == like.dtype else t.to(like.dtype)


def in_input_dtype(x: Tensor) -> torch.autocast:
    """A context that turns autocast off on x's device, so that norms and softmaxes run
    in their input's dtype: their kernels keep float32 statistics inside, and a bfloat16
    video stays bfloat16 (under autocast they would return float32, and every matrix
    product after them would cast it back, a copy of every activation)."""
    return torch.autocast(x.device.type, enabled=False)


# ---------------------------------------------------------------- norms and wrappers


class LayerNorm(nn.Module):
    """LayerNorm over the channel axis of `(b, c, f, h, w)`, biased variance, no bias term."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(1, dim, 1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        # (b, c, f, h, w) -> (b, f, h, w, c): the fused kernel normalises the last axis
        gamma = same_dtype(rearrange(self.gamma, "1 c 1 1 1 -> c"), x)
        with in_input_dtype(x):
            out = F.layer_norm(channels_last(x), gamma.shape, gamma, None, self.eps)
        return channels_first(out)


class _RMSNormalize(torch.autograd.Function):
    """`n = x / max(rms(x), 1e-12 / sqrt(c))` over axis 1 (c), as `F.normalize(x, dim=1) *
    sqrt(c)` (`rms(x) = ||x|| / sqrt(c)`), in two passes forward and four backward from the
    saved output: `dx = r (dn - n mean(dn n))` with `r = 1 / rms(x)`. (Autograd's
    decomposition of `F.normalize` or `F.rms_norm` takes about twice as many passes and
    keeps x too.) The backward treats the norm as unclamped: it differs only for
    ||x|| < 1e-12. On a channels-last video, axis 1 is the contiguous one: no layout
    changes are needed. `inv_c` is `1 / c` as a 0-dim tensor: a Python number meeting a
    tensor would cost a conversion copy on every call. Sums accumulate in at least float32;
    n and dx come out in x's dtype."""

    @staticmethod
    def forward(ctx, x: Tensor, inv_c: Tensor) -> Tensor:
        with in_input_dtype(x):
            square_sum = torch.sum(x * x, dim=1, keepdim=True, dtype=_statistics_dtype(x))
            r = torch.rsqrt((square_sum * inv_c).clamp_min(1e-24 / x.shape[1]))
            n = x * same_dtype(r, x)
        ctx.save_for_backward(n, r, inv_c)
        return n

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        n, r, inv_c = ctx.saved_tensors
        with in_input_dtype(grad):
            mean_grad_n = torch.sum(grad * n, dim=1, keepdim=True, dtype=_statistics_dtype(grad)) * inv_c
            return (grad - n * same_dtype(mean_grad_n, grad)) * same_dtype(r, grad), None


def _statistics_dtype(x: Tensor) -> torch.dtype:
    """float32, or float64 for a float64 x: `torch.promote_types(x.dtype, torch.float32)`
    for floating x, without dispatching an operation on every call."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class RMSNorm(nn.Module):
    """`x / ||x||_2 * sqrt(dim) * gamma` over the channel axis of `(b, c, f, h, w)`."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1, 1))
        self.register_buffer("inv_dim", torch.tensor(1.0 / dim), persistent=False)

    def normalize(self, x: Tensor) -> Tensor:
        """`x / ||x||_2 * sqrt(dim)` over axis 1, without the gain."""
        return _RMSNormalize.apply(x, self.inv_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.normalize(x) * same_dtype(self.gamma, x)


class PreNorm(nn.Module):
    """`fn(LayerNorm(x), ...)`."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.norm = LayerNorm(dim)

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        return self.fn(self.norm(x), **kwargs)


class Residual(nn.Module):
    """`fn(x, ...) + x`."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        return self.fn(x, **kwargs) + x


# ---------------------------------------------------------------- convolution blocks


def _per_frame(x: Tensor, conv2d: Callable[[Tensor], Tensor]) -> Tensor:
    """Apply a 2-D convolution to every frame: frames folded into the batch, a view of
    a channels-last video, (b, c, f, h, w) -> (b*f, c, h, w) -> (b, c', f, h', w')."""
    frames = rearrange(x, "b c f h w -> (b f) c h w")
    return rearrange(conv2d(frames), "(b f) c h w -> b c f h w", b=x.shape[0])


def _frame_kernel(kernel_size: int, stride: int, padding: int) -> tuple[tuple[int, ...], ...]:
    """Conv3d kernel, stride and padding that leave the frame axis alone."""
    return (1, kernel_size, kernel_size), (1, stride, stride), (0, padding, padding)


def _channels_last_parameter(weight: Tensor) -> nn.Parameter:
    """The weight stored channels-last (loading a state dict copies into it and keeps
    that), so that oneDNN takes it as it is instead of converting it on every call."""
    return nn.Parameter(weight.detach().contiguous(memory_format=torch.channels_last_3d))


class FrameConv3d(nn.Conv3d):
    """A Conv3d with kernel `(1, k, k)`: same parameters and state-dict keys as
    `nn.Conv3d(dim, dim_out, (1, k, k), (1, stride, stride), (0, padding, padding))`,
    computed as a Conv2d over the frames folded into the batch (a view of the weight).

    oneDNN runs it for any batch, channels-last in and out; PyTorch's Conv3d falls back to
    a slow kernel for a batch of one (sampling) and to a channels-first output for 1x1x1.
    """

    def __init__(self, dim: int, dim_out: int, kernel_size: int, *, stride: int = 1, padding: int = 0):
        super().__init__(dim, dim_out, *_frame_kernel(kernel_size, stride, padding))
        self.weight = _channels_last_parameter(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        weight = rearrange(self.weight, "o c 1 kh kw -> o c kh kw")
        return _per_frame(x, lambda frames: F.conv2d(frames, weight, self.bias, self.stride[1:], self.padding[1:]))


class FrameConvTranspose3d(nn.ConvTranspose3d):
    """A ConvTranspose3d with kernel `(1, k, k)` (same parameters and state-dict keys),
    computed as a ConvTranspose2d over the frames folded into the batch; see `FrameConv3d`."""

    def __init__(self, dim: int, dim_out: int, kernel_size: int, *, stride: int = 1, padding: int = 0):
        super().__init__(dim, dim_out, *_frame_kernel(kernel_size, stride, padding))
        self.weight = _channels_last_parameter(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        weight = rearrange(self.weight, "c o 1 kh kw -> c o kh kw")
        return _per_frame(
            x, lambda frames: F.conv_transpose2d(frames, weight, self.bias, self.stride[1:], self.padding[1:])
        )


class Block(nn.Module):
    """Conv (1, 3, 3) -> RMSNorm -> optional FiLM `x * (scale + 1) + shift` -> SiLU."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        self.proj = FrameConv3d(dim, dim_out, 3, padding=1)
        self.norm = RMSNorm(dim_out)
        self.act = nn.SiLU()

    def forward(self, x: Tensor, scale_shift: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """`scale_shift`: a pair of `(b, dim_out, 1, 1, 1)` tensors, or None."""
        x = self.proj(x)
        if not exists(scale_shift):
            return self.act(self.norm(x))
        # norm and FiLM in two passes: x / rms(x) * (gamma * (scale + 1)) + shift
        scale, shift = scale_shift
        gamma = self.norm.gamma
        gain = same_dtype(gamma + gamma * scale, shift)  # (b, c, 1, 1, 1)
        return self.act(self.norm.normalize(x) * gain + shift)


class ResnetBlock(nn.Module):
    """Two Blocks and a residual; the conditioning vector modulates the first (FiLM).

    Args:
        dim: input channels.
        dim_out: output channels.
        time_emb_dim: width of the conditioning vector (time embedding, concatenated with
            the condition when there is one), or None for an unconditioned block.
    """

    def __init__(self, dim: int, dim_out: int, *, time_emb_dim: int | None = None):
        super().__init__()
        self.mlp = (
            nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim, dim_out * 2))
            if exists(time_emb_dim)
            else None
        )
        self.block1 = Block(dim, dim_out)
        self.block2 = Block(dim_out, dim_out)
        self.res_conv = FrameConv3d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: Tensor, time_emb: Tensor | None = None) -> Tensor:
        scale_shift = None
        if exists(self.mlp):
            if not exists(time_emb):
                raise ValueError("this ResnetBlock is conditioned: pass the time embedding")
            emb = rearrange(self.mlp(time_emb), "b c -> b c 1 1 1")
            scale_shift = emb.chunk(2, dim=1)
        h = self.block1(x, scale_shift=scale_shift)
        h = self.block2(h)
        return h + self.res_conv(x)


# ---------------------------------------------------------------- resampling


def Downsample(dim: int) -> nn.Module:
    """Halve height and width, keep frames: (b, c, f, h, w) -> (b, c, f, h/2, w/2)."""
    return FrameConv3d(dim, dim, 4, stride=2, padding=1)


def Upsample(dim: int) -> nn.Module:
    """Double height and width, keep frames: (b, c, f, h, w) -> (b, c, f, 2h, 2w)."""
    return FrameConvTranspose3d(dim, dim, 4, stride=2, padding=1)


# ---------------------------------------------------------------- time embedding


class SinusoidalPosEmb(nn.Module):
    """Transformer sinusoidal embedding of a (float) diffusion step: (b,) -> (b, dim)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        half_dim = self.dim // 2
        exponent = math.log(10000) / (half_dim - 1)
        freqs = torch.exp(torch.arange(half_dim, device=t.device) * -exponent)
        args = rearrange(t, "b -> b 1") * rearrange(freqs, "d -> 1 d")
        return torch.cat((args.sin(), args.cos()), dim=-1)
