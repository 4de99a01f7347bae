"""Position terms of temporal attention: the rotary tables folded into the projection
weights, and the learned relative-position bias added to the logits."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from rotary_embedding_torch import RotaryEmbedding
from torch import Tensor, nn

# ---------------------------------------------------------------- rotary embedding


def rotary_tables(rotary_emb: RotaryEmbedding, n: int, *, dim_head: int, device: torch.device) -> Tensor:
    """Cosines and signed sines `(2, 3, n, 1, 1, dim_head)` that rotate the query columns
    (scaled by `dim_head ** -0.5`) and the key columns of a transposed projection weight
    `(3, dim, heads, dim_head)` to each of `n` positions, and leave the value columns;
    computed once per step and shared by every temporal attention.

    The rotary embedding (RoFormer, Su et al. 2021, eq. 34) rotates feature pairs
    `(x_2i, x_2i+1)` of position m by angle `m theta_i`: `x cos + rotate_half(x) sin`, with
    `rotate_half(x)_2i = -x_2i+1` and `rotate_half(x)_2i+1 = x_2i`. The frequencies come
    from `rotary_emb`; features past its width are not rotated (cos 1, sin 0).
    """
    seq = rotary_emb.get_seq_pos(n, device=device, dtype=rotary_emb.freqs.dtype)
    angles = rotary_emb(seq, seq_len=n)  # (n, r), each angle repeated for its pair
    # the first of each pair turned the other way: sin(-a) = -sin(a) is rotate_half's sign,
    # cos(-a) = cos(a)
    angles = rearrange(angles, "n (i r) -> n i r", r=2)
    angles = torch.stack((-angles[..., 0], angles[..., 1]), dim=-1).flatten(1)
    # (n, r) -> (3, n, d): queries, keys, values; angle 0 (cos 1, sin 0) leaves the values
    # and the features past the embedding's width unrotated
    angles = F.pad(angles.expand(2, n, -1), (0, dim_head - angles.shape[-1], 0, 0, 0, 1))
    tables = torch.stack((angles.cos(), angles.sin()))
    tables[:, 0] *= dim_head**-0.5  # the queries' scale
    # (2, 3, n, d) -> (2, 3, n, 1, 1, d): over in-features and heads
    return rearrange(tables, "cs t n d -> cs t n 1 1 d")


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
        values = self.relative_attention_bias(self._bucket_indices(n, device))
        return rearrange(values, "i j h -> h i j")

    def _bucket_indices(self, n: int, device: torch.device) -> Tensor:
        if torch.compiler.is_compiling():
            # traced as constants; a cached tensor would be a graph output, which CUDA
            # graphs overwrite on their next replay
            return self._buckets_for(n, device)
        key = (n, torch.device(device))
        if key not in self._buckets:
            # built outside inference mode, so a cache filled while sampling still serves
            # autograd later (reconstruction guidance, training)
            with torch.inference_mode(False):
                self._buckets[key] = self._buckets_for(n, device)
        return self._buckets[key]

    def _buckets_for(self, n: int, device: torch.device) -> Tensor:
        """Bucket indices `(n, n)` of the offsets between n frames."""
        pos = torch.arange(n, dtype=torch.long, device=device)
        rel_pos = rearrange(pos, "j -> 1 j") - rearrange(pos, "i -> i 1")
        return self._relative_position_bucket(rel_pos, num_buckets=self.num_buckets, max_distance=self.max_distance)
