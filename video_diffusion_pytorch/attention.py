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
from einops import rearrange, repeat
from einops_exts import rearrange_many
from rotary_embedding_torch import RotaryEmbedding
from torch import Tensor, nn

from .helpers import exists

# ---------------------------------------------------------------- multi-head attention


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, *, fused: bool | None = None) -> Tensor:
    """`softmax(q k^T + bias) v` for `(B, heads, n, d)` inputs, q already scaled.

    Args:
        bias: additive logits broadcastable to `(B, heads, n, n)`, 4-D.
        fused: use `F.scaled_dot_product_attention`; by default on CUDA and under
            `torch.compile` (whose attention-pattern rewrite would otherwise turn the
            products below into it, and fails on these strided layouts). Eager on CPU,
            its fused kernel (flash, taken for 4-D inputs whose bias needs no gradient) and
            its math fallback (two extra scaling passes) are both slower than the three
            products below for this model's short sequences (frames, or at most a few
            dozen pixels): 1.4x and 2x in training and sampling at 8 frames.
    """
    if fused if exists(fused) else (q.is_cuda or torch.compiler.is_compiling()):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
    sim = q @ k.transpose(-1, -2)
    if exists(bias):
        sim = sim + bias
    return sim.softmax(dim=-1) @ v


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
        *batch, n, dim = x.shape
        w_q, w_k, w_v = self.to_qkv.weight.chunk(3, dim=0)  # (heads * d, dim) each
        # (..., n, c) -> (n, B, c): positions lead, so each can have its own weights
        tokens = rearrange(x, "... n c -> n (...) c")
        if exists(self.rotary_emb):
            w_q, w_k = rearrange(self._rotated_qk_weight(n), "t n o c -> t n c o")
            q, k = torch.bmm(tokens, w_q), torch.bmm(tokens, w_k)
        else:
            q, k = F.linear(tokens, w_q * self.scale), F.linear(tokens, w_k)
        v = F.linear(tokens, w_v)
        # (n, B, heads * d) -> (B, heads, n, d), views
        q, k, v = rearrange_many((q, k, v), "n B (h d) -> B h n d", h=self.heads)

        bias = self._logit_bias(pos_bias, attn_mask, batch, n)
        out = attend(q, k, v, bias.to(q.dtype) if exists(bias) else None)

        # (B, heads, n, d) -> (n, B, heads * d) -> (..., n, dim)
        out = self.to_out(rearrange(out, "B h n d -> n B (h d)"))
        return rearrange(out, "n B c -> B n c").reshape(*batch, n, dim)

    def _rotated_qk_weight(self, n: int) -> Tensor:
        """The query and key weights of each of `n` positions, `(2, n, heads * d, dim)`,
        with the rotary embedding and the query's `d ** -0.5` scale folded in. A rotation
        is linear, so rotating the weights rotates the projections: `R_i (W x_i) =
        (R_i W) x_i` (RoFormer, Su et al. 2021, eq. 34), at the cost of a few weight-sized
        products instead of several passes over every query and key."""
        w_q, w_k, _ = self.to_qkv.weight.chunk(3, dim=0)  # (heads * d, c) each
        # (heads * d, c) -> (2, heads, c, n, d): rotate d along the position axis n
        w_qk = repeat(
            torch.stack((w_q * self.scale, w_k)), "t (h d) c -> t h c n d", h=self.heads, n=n
        )
        w_qk = self.rotary_emb.rotate_queries_or_keys(w_qk)
        return rearrange(w_qk, "t h c n d -> t n (h d) c")

    def _logit_bias(
        self, pos_bias: Tensor | None, attn_mask: Tensor | None, batch: list[int], n: int
    ) -> Tensor | None:
        """The additive logit bias as SDPA takes it, 4-D: `(1 or B, heads, n, n)`."""
        bias = pos_bias
        if exists(attn_mask):
            # a forbidden key gets -inf, so its softmax weight is exactly zero;
            # (..., heads, n, n) -> (B, heads, n, n), one copy of the per-sample mask
            bias = torch.zeros((), device=attn_mask.device) if bias is None else bias
            bias = bias.masked_fill(~attn_mask, float("-inf"))
            return bias.expand(*batch, self.heads, n, n).reshape(-1, self.heads, n, n)
        if exists(bias):
            bias = rearrange(bias, "h i j -> 1 h i j")
        return bias

    def values_only(self, x: Tensor) -> Tensor:
        """The output when every token may attend only to itself: `to_out(v)`."""
        return self.to_out(F.linear(x, self.to_qkv.weight.chunk(3, dim=0)[-1]))


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
        # bucket indices per (frame count, device); they depend on nothing else, so they
        # never go stale (the bias itself is looked up on every call: it is learned)
        self._buckets: dict[tuple[int, torch.device], Tensor] = {}

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
        key = (n, torch.device(device))
        if key not in self._buckets:
            # built outside inference mode, so a cache filled while sampling still serves
            # autograd later (reconstruction guidance, training)
            with torch.inference_mode(False):
                self._buckets[key] = self._buckets_for(n, device)
        values = self.relative_attention_bias(self._buckets[key])
        return rearrange(values, "i j h -> h i j")

    def _buckets_for(self, n: int, device: torch.device) -> Tensor:
        """Bucket indices `(n, n)` of the offsets between n frames."""
        pos = torch.arange(n, dtype=torch.long, device=device)
        rel_pos = rearrange(pos, "j -> 1 j") - rearrange(pos, "i -> i 1")
        return self._relative_position_bucket(rel_pos, num_buckets=self.num_buckets, max_distance=self.max_distance)


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

        # back to channels-last in one copy, rather than one in every layer that follows
        out = rearrange(out, "b (h w) f c -> b c f h w", h=h, w=w)
        return out.contiguous(memory_format=torch.channels_last_3d)


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
    attention"): cost linear in h*w. `(b, c, f, h, w)` in and out.

    Per head, with q softmaxed over its features and k over the pixels:
    `out = W_out (context^T q) * scale` with `context = k v^T` (d x d). The products are
    regrouped (same function): `context = (k x^T) W_v^T`, so the values are never formed,
    and `W_out context^T` is one small `(dim, heads * d)` mixer per frame, applied to q.
    """

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        hidden_dim = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden_dim * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden_dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, f, h, w = x.shape
        w_q, w_k, w_v = rearrange(self.to_qkv.weight, "(t o) c 1 1 -> t o c", t=3)
        # (b, c, f, h, w) -> (b*f, h*w, c): a view for a channels-last video
        tokens = rearrange(x, "b c f h w -> (b f) (h w) c")

        # (bf, n, heads * d) -> (bf, n, heads, d)
        # (bf, n, heads * d) -> (bf, n, heads, d): softmax over each head's features
        q = rearrange(F.linear(tokens, w_q), "b n (h d) -> b n h d", h=self.heads).softmax(dim=-1)
        k = F.linear(tokens, w_k).softmax(dim=1)  # (bf, n, heads * d), over the pixels

        # (x k^T): (bf, c, n) @ (bf, n, heads * d) -> (bf, c, heads, d); in this order the
        # gradient of k comes out in k's own layout
        x_k = rearrange(rearrange(tokens, "b n c -> b c n") @ k, "b c (h d) -> b c h d", h=self.heads)
        context = torch.einsum("b c h d, h e c -> b h d e", x_k, rearrange(w_v, "(h e) c -> h e c", h=self.heads))
        w_out = rearrange(self.to_out.weight, "o (h e) 1 1 -> o h e", h=self.heads)
        mixer = torch.einsum("o h e, b h d e -> b h d o", w_out, context) * self.scale
        mixer = rearrange(mixer, "b h d o -> b (h d) o")
        # (bf, n, heads * d) @ (bf, heads * d, c) + bias -> (bf, n, c)
        out = torch.baddbmm(self.to_out.bias, rearrange(q, "b n h d -> b n (h d)"), mixer)
        return rearrange(out, "(b f) (h w) c -> b c f h w", b=b, h=h)
