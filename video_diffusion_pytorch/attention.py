"""Attention layers: multi-head attention (its position terms are in `positions.py`), the
linear spatial attention, and the folds that turn a video into token sequences.

Temporal attention treats every pixel as its own sequence of frames; spatial attention
treats every frame as its own sequence of pixels (Ho et al. 2022, §3: "space-time
factorised" U-net).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from rotary_embedding_torch import RotaryEmbedding
from torch import Tensor, nn

from .helpers import exists
from .nn import in_input_dtype
from .positions import rotary_tables

# ---------------------------------------------------------------- multi-head attention


def compute_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype matrix products produce on `device` for `dtype` inputs: autocast's when it
    is on there, else `dtype`. Biases added to attention logits are cast to it once per
    step, so that the fused kernels take them as they are."""
    device_type = torch.device(device).type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else dtype


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, *, fused: bool | None = None) -> Tensor:
    """`softmax(q k^T + bias) v` for `(B, heads, n, d)` inputs, q already scaled.

    Args:
        bias: additive logits broadcastable to `(B, heads, n, n)`, 4-D. The fused CUDA
            kernels (memory-efficient, cuDNN) take it only with stride 1 in its last
            dimension and in the query's dtype; `Attention` hands it so.
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
    # batch and heads as one axis (a view of the layouts `Attention.project` hands over):
    # `torch.bmm` on it dispatches fewer operations than `matmul`'s broadcasting
    b, heads, n, _ = q.shape
    q, k, v = (t.reshape(b * heads, t.shape[2], -1) for t in (q, k, v))
    if n >= _SHORT_ROWS:
        sim = torch.bmm(q, k.transpose(1, 2)).view(b, heads, n, -1)
        attn = (sim + bias if exists(bias) else sim).softmax(dim=-1)
    else:
        # the logits transposed, (keys, queries), normalised over their second-to-last axis
        sim_t = torch.bmm(k, q.transpose(1, 2)).view(b, heads, -1, n)
        attn = (sim_t + bias.transpose(-1, -2) if exists(bias) else sim_t).softmax(dim=-2).transpose(-1, -2)
    return torch.bmm(attn.reshape(b * heads, n, -1), v).view(b, heads, n, -1)


# A CPU softmax over a last axis shorter than this runs a slow kernel: forward and backward
# take about 4x as long as the same softmax over the second-to-last axis (measured for
# lengths 2 to 15 on AVX-512; equal at 16, the last axis faster beyond). Temporal attention
# over 8 frames spent 6% of a CPU training step there.
_SHORT_ROWS = 16


class _SplitHeads(torch.autograd.Function):
    """`(n, B, heads * d) -> (B, heads, n, d)`, a view, whose gradient comes back
    contiguous in `(n, B, heads * d)`. The attention returns the gradients of the queries,
    keys and values in `(B, heads, n, d)` order; passed to the projection's backward
    matrix product as a strided view, they take it off the batched BLAS path to a loop of
    per-position products, each copying its operand. One copy here keeps it on that path.
    (A rearrange would give the strided view; `contiguous` copies in the forward.)"""

    @staticmethod
    def forward(ctx, x: Tensor, heads: int) -> Tensor:
        n, batch, _ = x.shape
        return x.view(n, batch, heads, -1).permute(1, 2, 0, 3)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        batch, heads, n, d = grad.shape
        out = grad.new_empty((n, batch, heads * d))
        out.view(n, batch, heads, d).permute(1, 2, 0, 3).copy_(grad)
        return out, None


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
        self.dim_head = dim_head
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
        # (..., n, c) -> (n, B, c): positions lead, so each can have its own weights
        q, k, v = self.project(rearrange(x, "... n c -> n (...) c"), self._tables(n, x.device))
        out = attend(q, k, v, self.logit_bias(pos_bias, attn_mask, batch, n, q.dtype))
        # (B, heads, n, d) -> (n, B, heads * d) -> (..., n, dim)
        out = self.to_out(rearrange(out, "B h n d -> n B (h d)"))
        return rearrange(out, "n B c -> B n c").reshape(*batch, n, dim)

    def _tables(self, n: int, device: torch.device) -> Tensor | None:
        if not exists(self.rotary_emb):
            return None
        return rotary_tables(self.rotary_emb, n, dim_head=self.dim_head, device=device)

    def project(self, tokens: Tensor, rotation: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Queries (scaled, rotated), keys (rotated) and values `(B, heads, n, d)` of
        position-major tokens `(n, B, dim)`; `rotation` is `rotary_tables(self.rotary_emb,
        n, ...)` when there is a rotary embedding. Each comes from its own matrix product,
        a view of it: batch and heads merge into one axis, so matrix products and the fused
        kernels read them without copies. Three products, not one: the gradients need no
        stacking, and no buffer reaches glibc's 32 MiB limit past which every allocation is
        a fresh `mmap` (one product's qkv and its gradient, 48 MiB at the `medium` size of
        benchmarks/speed.py, took about 120,000 page faults per CPU training step)."""
        if exists(self.rotary_emb):
            # 3 x (n, B, c) @ (n, c, heads * d): a weight per position
            qkv = [torch.bmm(tokens, w) for w in self._rotated_weights(rotation).unbind(0)]
        else:
            # one product for all positions, (n, B, 3 * heads * d), split into views
            w_q, w_kv = self.to_qkv.weight.split((self.heads * self.dim_head, 2 * self.heads * self.dim_head))
            qkv = F.linear(tokens, torch.cat((w_q * self.scale, w_kv))).chunk(3, dim=-1)
        return tuple(_SplitHeads.apply(x, self.heads) for x in qkv)

    def _rotated_weights(self, rotation: Tensor) -> Tensor:
        """The transposed projection weights of each of n positions, `(3, n, dim, heads *
        d)`: the query's, the key's and the value's, with the rotary embedding and the
        query's `d ** -0.5` scale folded in. A rotation is linear, so rotating the weights
        rotates the projections: `R_m (W x_m) = (R_m W) x_m` (RoFormer, Su et al. 2021, eq.
        34), at the cost of a few weight-sized products instead of several passes over
        every query and key."""
        cos, sin = rotation  # (3, n, 1, 1, d) each
        # (3 * heads * d, c) -> (3, 1, c, heads, d)
        weight = rearrange(self.to_qkv.weight, "(t h d) c -> t 1 c h d", t=3, h=self.heads)
        # each feature pair swapped: rotate_half with its signs folded into the sines
        swapped = rearrange(weight, "t 1 c h (i r) -> t 1 c h i r", r=2).flip(-1).flatten(4, 5)
        # (3, 1, c, heads, d) -> (3, n, c, heads, d) -> (3, n, c, heads * d)
        return (weight * cos + swapped * sin).flatten(3, 4)

    def logit_bias(
        self, pos_bias: Tensor | None, attn_mask: Tensor | None, batch: list[int], n: int, dtype: torch.dtype
    ) -> Tensor | None:
        """The additive logit bias as SDPA takes it, 4-D: `(1 or B, heads, n, n)`, stride 1
        in its last dimension, in `dtype` (the query's)."""
        bias = pos_bias
        if exists(attn_mask):
            # a forbidden key gets -inf, so its softmax weight is exactly zero;
            # (..., heads, n, n) -> (B, heads, n, n), one copy of the per-sample mask
            bias = torch.zeros((), device=attn_mask.device, dtype=dtype) if bias is None else bias.to(dtype)
            bias = bias.masked_fill(~attn_mask, float("-inf"))
            return bias.expand(*batch, self.heads, n, n).reshape(-1, self.heads, n, n)
        if not exists(bias):
            return None
        # (heads, n, n) -> (1, heads, n, n); a copy only if it comes in another layout or
        # dtype (checked here: a no-op `to` or `contiguous` would still be dispatched)
        bias = bias.unsqueeze(0)
        return bias if bias.dtype == dtype and bias.is_contiguous() else bias.to(dtype).contiguous()


# ---------------------------------------------------------------- masks over frames


def temporal_attention_mask(
    num_frames: int,
    focus_present_mask: Tensor | None = None,
    independent_frames: Tensor | None = None,
    *,
    device: torch.device,
) -> Tensor | None:
    """Which frame may attend to which: bool `(b or 1, f, f)`, or None when no mask is
    given. The masks' values are not read here (that would make the host wait for the
    device): pass None rather than a mask that masks nothing.

    Args:
        num_frames: f.
        focus_present_mask: bool `(b,)`; a True element attends only to each frame itself
            ("focus on the present": trains the model as an image model for that sample).
        independent_frames: bool `(b, f)` or `(f,)`; True marks a frame that is an
            independent image (joint image-video training, Ho et al. 2022, §3): it attends
            only to itself, and no other frame attends to it.
    """
    if not (exists(focus_present_mask) or exists(independent_frames)):
        return None

    eye = torch.eye(num_frames, dtype=torch.bool, device=device)
    allowed = torch.ones((1, num_frames, num_frames), dtype=torch.bool, device=device)
    if exists(independent_frames):
        # (b, f) -> (b, f, f): both frames must belong to the clip, or it is the diagonal
        in_clip = ~independent_frames.reshape(-1, num_frames)
        allowed = (rearrange(in_clip, "b i -> b i 1") & rearrange(in_clip, "b j -> b 1 j")) | eye
    if exists(focus_present_mask):
        # (b,) -> (b, 1, 1): a focused sample keeps only the diagonal
        allowed = allowed & (eye | ~rearrange(focus_present_mask, "b -> b 1 1"))
    return allowed


# ---------------------------------------------------------------- folds


class TemporalAttention(nn.Module):
    """Attention across frames, every pixel on its own: `(b, c, f, h, w)` in and out,
    channels-last-3d out."""

    def __init__(self, attention: Attention):
        super().__init__()
        self.fn = attention

    def forward(
        self,
        x: Tensor,
        pos_bias: Tensor | None = None,
        focus_present_mask: Tensor | None = None,
        independent_frames: Tensor | None = None,
        rotation: Tensor | None = None,
    ) -> Tensor:
        """`pos_bias` `(heads, f, f)`; the masks as `temporal_attention_mask` takes them;
        `rotation`: `rotary_tables(...)` for f frames, computed here when None."""
        b, c, f, h, w = x.shape
        rotation = rotation if exists(rotation) else self.fn._tables(f, x.device)
        # (b, c, f, h, w) -> (f, b * h * w, c): frames lead, one copy
        q, k, v = self.fn.project(rearrange(x, "b c f h w -> f (b h w) c"), rotation)
        allowed = temporal_attention_mask(f, focus_present_mask, independent_frames, device=x.device)
        if exists(allowed):
            # (b, i, j) -> (b, 1, 1, i, j): broadcast over pixels and heads
            allowed = rearrange(allowed, "b i j -> b 1 1 i j")
        bias = self.fn.logit_bias(pos_bias, allowed, [b, h * w], f, q.dtype)
        out = attend(q, k, v, bias)
        # (b * h * w, heads, f, d) -> (b, f, h * w, heads * d), one copy; projected, it is
        # the channels-last layout of (b, c, f, h, w), so the layers that follow copy nothing
        out = self.fn.to_out(rearrange(out, "(b p) heads f d -> b f p (heads d)", b=b))
        return rearrange(out, "b f (h w) c -> b c f h w", h=h)


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
        heads = self.heads
        weight = rearrange(self.to_qkv.weight, "(t h d) c 1 1 -> t h d c", t=3, h=heads)
        # (b, c, f, h, w) -> (b*f, h*w, c): a view for a channels-last video
        tokens = rearrange(x, "b c f h w -> (b f) (h w) c")

        # queries and keys in one product, (bf, n, 2 * heads * d) -> 2 x (bf, n, heads, d)
        qk = F.linear(tokens, rearrange(weight[:2], "t h d c -> (t h d) c"))
        q, k = rearrange(qk, "b n (t h d) -> t b n h d", t=2, h=heads).unbind(0)
        with in_input_dtype(qk):
            q = q.softmax(dim=-1)  # over each head's features
            k = k.softmax(dim=1)  # over the pixels

        # (x k^T): (bf, c, n) @ (bf, n, heads * d) -> (bf, c, heads * d); in this order the
        # gradient of k comes out in k's own layout
        x_k = torch.bmm(tokens.transpose(1, 2), k.flatten(2))
        # per head, the frames' features stacked: (bf, c, heads * d) -> (heads, bf * d, c)
        x_k = rearrange(x_k, "b c (h d) -> h (b d) c", h=heads)
        # context^T: (heads, bf * d, c) @ (heads, c, e) -> (heads, bf * d, e)
        context = torch.bmm(x_k, rearrange(weight[2], "h e c -> h c e"))
        # the per-frame mixer: (heads, bf * d, e) @ (heads, e, o) -> (bf, heads * d, o)
        mixer = torch.bmm(context, rearrange(self.to_out.weight, "o (h e) 1 1 -> h e o", h=heads))
        mixer = rearrange(mixer, "h (b d) o -> b (h d) o", b=b * f)
        # (bf, n, heads * d) @ (bf, heads * d, c) * scale + bias -> (bf, n, c)
        out = torch.baddbmm(self.to_out.bias, q.flatten(2), mixer, alpha=self.scale)
        return rearrange(out, "(b f) (h w) c -> b c f h w", b=b, h=h)
