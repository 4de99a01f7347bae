"""Attention layers: multi-head attention with rotary and relative-position terms, the
linear spatial attention, and the folds that turn a video into token sequences.

Temporal attention treats every pixel as its own sequence of frames; spatial attention
treats every frame as its own sequence of pixels (Ho et al. 2022, §3: "space-time
factorised" U-net).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from einops_exts import rearrange_many
from rotary_embedding_torch import RotaryEmbedding
from torch import Tensor, nn

from .helpers import exists

# ---------------------------------------------------------------- multi-head attention


class Attention(nn.Module):
    """Multi-head softmax attention over the second-to-last axis of `(..., n, dim)`.

    Args:
        dim: token width.
        heads: number of heads.
        dim_head: width of each head.
        rotary_emb: a `RotaryEmbedding` that rotates queries and keys along the token
            axis (shared between layers), or None.
    """

    def __init__(
        self, dim: int, heads: int = 4, dim_head: int = 32, rotary_emb: RotaryEmbedding | None = None
    ):
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        hidden_dim = dim_head * heads
        self.rotary_emb = rotary_emb
        self.to_qkv = nn.Linear(dim, hidden_dim * 3, bias=False)
        self.to_out = nn.Linear(hidden_dim, dim, bias=False)

    def forward(
        self, x: Tensor, pos_bias: Tensor | None = None, attn_mask: Tensor | None = None
    ) -> Tensor:
        """Args:
            x: tokens `(..., n, dim)`.
            pos_bias: additive logit bias `(heads, n, n)`.
            attn_mask: bool, True where query i may attend to key j, broadcastable to
                `(..., heads, n, n)`. Every query must be allowed at least one key.
        Returns `(..., n, dim)`.
        """
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        # (..., n, heads * d) -> (..., heads, n, d)
        q, k, v = rearrange_many((q, k, v), "... n (h d) -> ... h n d", h=self.heads)

        if exists(self.rotary_emb):
            q = self.rotary_emb.rotate_queries_or_keys(q)
            k = self.rotary_emb.rotate_queries_or_keys(k)

        bias = pos_bias
        if exists(attn_mask):
            # a forbidden key gets -inf, so its softmax weight is exactly zero
            bias = torch.zeros((), device=x.device) if bias is None else bias
            bias = bias.masked_fill(~attn_mask, float("-inf"))
        if exists(bias):
            bias = bias.to(q.dtype)

        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        out = rearrange(out, "... h n d -> ... n (h d)")
        return self.to_out(out)

    def values_only(self, x: Tensor) -> Tensor:
        """The output when every token may attend only to itself: `to_out(v)`."""
        v = self.to_qkv(x).chunk(3, dim=-1)[-1]
        return self.to_out(v)


# ---------------------------------------------------------------- relative position bias


class RelativePositionBias(nn.Module):
    """T5-style bidirectional relative-position bias for temporal attention.

    Offsets `i - j` are bucketed: half of the buckets for each direction, exact buckets
    for small offsets, logarithmic ones up to `max_distance` (Raffel et al. 2020, §2.1).
    """

    def __init__(self, heads: int = 8, num_buckets: int = 32, max_distance: int = 128):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    @staticmethod
    def _relative_position_bucket(
        relative_position: Tensor, num_buckets: int = 32, max_distance: int = 128
    ) -> Tensor:
        n = -relative_position
        num_buckets //= 2
        bucket = (n < 0).long() * num_buckets
        n = torch.abs(n)

        max_exact = num_buckets // 2
        is_small = n < max_exact
        # log-spaced buckets between max_exact and max_distance
        val_if_large = max_exact + (
            torch.log(n.float() / max_exact)
            / math.log(max_distance / max_exact)
            * (num_buckets - max_exact)
        ).long()
        val_if_large = torch.minimum(val_if_large, torch.full_like(val_if_large, num_buckets - 1))
        return bucket + torch.where(is_small, n, val_if_large)

    def forward(self, n: int, device: torch.device) -> Tensor:
        """Bias `(heads, n, n)` for `n` frames."""
        pos = torch.arange(n, dtype=torch.long, device=device)
        rel_pos = rearrange(pos, "j -> 1 j") - rearrange(pos, "i -> i 1")
        buckets = self._relative_position_bucket(
            rel_pos, num_buckets=self.num_buckets, max_distance=self.max_distance
        )
        values = self.relative_attention_bias(buckets)
        return rearrange(values, "i j h -> h i j")


# ---------------------------------------------------------------- masks over frames


def temporal_attention_mask(
    num_frames: int,
    focus_present_mask: Tensor | None = None,
    independent_frames: Tensor | None = None,
    *,
    device: torch.device,
) -> Tensor | None:
    """Which frame may attend to which: bool `(b or 1, f, f)`, or None when all may.

    Args:
        num_frames: f.
        focus_present_mask: bool `(b,)`; a True element attends only to each frame itself
            ("focus on the present": trains the model as an image model for that sample).
        independent_frames: bool `(b, f)` or `(f,)`; True marks a frame that is an
            independent image (joint image-video training, Ho et al. 2022, §3): it attends
            only to itself, and no other frame attends to it.
    """
    focus_any = exists(focus_present_mask) and bool(focus_present_mask.any())
    independent_any = exists(independent_frames) and bool(independent_frames.any())
    if not (focus_any or independent_any):
        return None

    eye = torch.eye(num_frames, dtype=torch.bool, device=device)
    allowed = torch.ones((1, num_frames, num_frames), dtype=torch.bool, device=device)
    if independent_any:
        # (b, f) -> (b, f, f): both frames must belong to the clip, or it is the diagonal
        in_clip = ~independent_frames.reshape(-1, num_frames)
        allowed = (rearrange(in_clip, "b i -> b i 1") & rearrange(in_clip, "b j -> b 1 j")) | eye
    if focus_any:
        # (b,) -> (b, 1, 1): a focused sample keeps only the diagonal
        allowed = allowed & (eye | ~rearrange(focus_present_mask, "b -> b 1 1"))
    return allowed


# ---------------------------------------------------------------- folds


class TemporalAttention(nn.Module):
    """Attention across frames, every pixel on its own: `(b, c, f, h, w)` in and out."""

    def __init__(self, attention: Attention):
        super().__init__()
        self.fn = attention

    def forward(
        self,
        x: Tensor,
        pos_bias: Tensor | None = None,
        focus_present_mask: Tensor | None = None,
        independent_frames: Tensor | None = None,
    ) -> Tensor:
        b, c, f, h, w = x.shape
        x = rearrange(x, "b c f h w -> b (h w) f c")

        if exists(focus_present_mask) and bool(focus_present_mask.all()):
            # every sample attends only to the present frame: softmax over one key is 1
            out = self.fn.values_only(x)
        else:
            allowed = temporal_attention_mask(
                f, focus_present_mask, independent_frames, device=x.device
            )
            if exists(allowed):
                # (b, i, j) -> (b, 1, 1, i, j): broadcast over pixels and heads
                allowed = rearrange(allowed, "b i j -> b 1 1 i j")
            out = self.fn(x, pos_bias=pos_bias, attn_mask=allowed)

        return rearrange(out, "b (h w) f c -> b c f h w", h=h, w=w)


class SpatialAttention(nn.Module):
    """Full attention across the pixels of each frame: `(b, c, f, h, w)` in and out."""

    def __init__(self, attention: Attention):
        super().__init__()
        self.fn = attention

    def forward(self, x: Tensor) -> Tensor:
        b, c, f, h, w = x.shape
        x = rearrange(x, "b c f h w -> b f (h w) c")
        out = self.fn(x)
        return rearrange(out, "b f (h w) c -> b c f h w", h=h, w=w)


# ---------------------------------------------------------------- linear spatial attention


class SpatialLinearAttention(nn.Module):
    """Linear attention over the pixels of each frame (Shen et al. 2021, "Efficient
    attention"): cost linear in h*w. `(b, c, f, h, w)` in and out."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        hidden_dim = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden_dim * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden_dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, f, h, w = x.shape
        x = rearrange(x, "b c f h w -> (b f) c h w")
        q, k, v = self.to_qkv(x).chunk(3, dim=1)
        # (bf, heads * d, h, w) -> (bf, heads, d, h*w)
        q, k, v = rearrange_many((q, k, v), "b (h d) x y -> b h d (x y)", h=self.heads)

        q = q.softmax(dim=-2) * self.scale  # over features
        k = k.softmax(dim=-1)  # over pixels

        context = torch.einsum("b h d n, b h e n -> b h d e", k, v)  # (bf, heads, d, d)
        out = torch.einsum("b h d e, b h d n -> b h e n", context, q)
        out = rearrange(out, "b h d (x y) -> b (h d) x y", x=h, y=w)
        out = self.to_out(out)
        return rearrange(out, "(b f) c h w -> b c f h w", b=b)
