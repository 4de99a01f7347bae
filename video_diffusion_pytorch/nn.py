"""Layers of the 3D U-net: norms, wrappers, convolution blocks, resampling, time embedding.

Every convolution has a temporal kernel of 1: these layers mix pixels within a frame and
never across frames ("space-time factorised", Ho et al. 2022, §3). Frames meet only in
the temporal attention of `attention.py`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .helpers import exists

# ---------------------------------------------------------------- norms and wrappers


class LayerNorm(nn.Module):
    """LayerNorm over the channel axis of `(b, c, f, h, w)`, biased variance, no bias term."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(1, dim, 1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        var = torch.var(x, dim=1, unbiased=False, keepdim=True)
        mean = torch.mean(x, dim=1, keepdim=True)
        return (x - mean) / (var + self.eps).sqrt() * self.gamma


class RMSNorm(nn.Module):
    """`x / ||x||_2 * sqrt(dim) * gamma` over the channel axis of `(b, c, f, h, w)`."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


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


class Block(nn.Module):
    """Conv (1, 3, 3) -> RMSNorm -> optional FiLM `x * (scale + 1) + shift` -> SiLU."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        self.proj = nn.Conv3d(dim, dim_out, (1, 3, 3), padding=(0, 1, 1))
        self.norm = RMSNorm(dim_out)
        self.act = nn.SiLU()

    def forward(self, x: Tensor, scale_shift: tuple[Tensor, Tensor] | None = None) -> Tensor:
        x = self.norm(self.proj(x))
        if exists(scale_shift):
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.act(x)


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
        self.res_conv = nn.Conv3d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

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
    return nn.Conv3d(dim, dim, (1, 4, 4), (1, 2, 2), (0, 1, 1))


def Upsample(dim: int) -> nn.Module:
    """Double height and width, keep frames: (b, c, f, h, w) -> (b, c, f, 2h, 2w)."""
    return nn.ConvTranspose3d(dim, dim, (1, 4, 4), (1, 2, 2), (0, 1, 1))


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
