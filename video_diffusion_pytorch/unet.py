"""Unet3D: the space-time factorised U-net of Video Diffusion Models (Ho et al. 2022, §3)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch
from einops import rearrange, reduce, repeat
from rotary_embedding_torch import RotaryEmbedding
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import Attention, SpatialAttention, SpatialLinearAttention, TemporalAttention, compute_dtype
from .checks import check_number
from .denoiser import DenoiserSpec
from .helpers import default, exists, prob_mask_like
from .nn import Downsample, FrameConv3d, PreNorm, Residual, ResnetBlock, SinusoidalPosEmb, Upsample
from .positions import RelativePositionBias, rotary_tables
from .pretrained import PretrainedMixin, records_config
from .text import BERT_MODEL_DIM
from .unet_inputs import batch_of_steps, check_arguments, check_inputs, input_signature

# classifier-free guidance runs its conditional and null forwards as one forward of the
# doubled batch when the batch holds at most this many voxels (b * f * h * w): on CPU,
# fewer larger operations pay for small batches (1.3x to 1.9x faster at 1 x 8 x 32^2) and cost
# for large ones (working sets outgrow the caches; 0.85x at 4 x 8 x 32^2). Always on CUDA.
BATCHED_GUIDANCE_MAX_VOXELS = 2 * 8 * 32 * 32


@dataclass
class _Layers:
    """The U-net's repeated pieces, built with its attention settings."""

    heads: int
    dim_head: int
    rotary_emb: RotaryEmbedding  # one, shared by every temporal attention
    sparse_linear_attn: bool

    def temporal_attn(self, width: int) -> nn.Module:
        attention = Attention(width, heads=self.heads, dim_head=self.dim_head, rotary_emb=self.rotary_emb)
        return Residual(PreNorm(width, TemporalAttention(attention)))

    def spatial_linear_attn(self, width: int) -> nn.Module:
        if not self.sparse_linear_attn:
            return nn.Identity()
        return Residual(PreNorm(width, SpatialLinearAttention(width, heads=self.heads)))

    def level(self, dim_in: int, dim_out: int, emb_dim: int, resample: nn.Module) -> nn.ModuleList:
        """Two ResnetBlocks, spatial and temporal attention, then down- or upsampling."""
        return nn.ModuleList([
            ResnetBlock(dim_in, dim_out, time_emb_dim=emb_dim),
            ResnetBlock(dim_out, dim_out, time_emb_dim=emb_dim),
            self.spatial_linear_attn(dim_out),
            self.temporal_attn(dim_out),
            resample,
        ])  # fmt: skip


class Unet3D(PretrainedMixin, nn.Module):
    """Denoising U-net over videos `(b, channels, frames, height, width)`.

    Convolutions mix pixels within a frame; every level has a temporal attention that
    mixes frames, with rotary embeddings and a relative-position bias, so one model
    handles any number of frames.

    Args:
        dim: base width; level widths are `dim * m` for `m` in `dim_mults`.
        cond_dim: width of a conditioning vector (makes the model conditional).
        out_dim: output channels (default `channels`).
        dim_mults: width multipliers, one per resolution level.
        channels: input channels.
        attn_heads: heads of every attention.
        attn_dim_head: head width of the temporal attention.
        use_bert_text_cond: condition on BERT-base text embeddings (`cond_dim` = 768).
        init_dim: width after the first convolution (default `dim`).
        init_kernel_size: odd spatial kernel of the first convolution.
        use_sparse_linear_attn: add linear spatial attention at every level.
        block_type: only 'resnet'.
        gradient_checkpointing: keep only each block's inputs for the backward pass and
            recompute the rest there: less memory for about a quarter more training time.
            Can also be switched later through the attribute of the same name.
    """

    @records_config
    def __init__(
        self,
        dim: int,
        cond_dim: int | None = None,
        out_dim: int | None = None,
        dim_mults: tuple[int, ...] = (1, 2, 4, 8),
        channels: int = 3,
        attn_heads: int = 8,
        attn_dim_head: int = 32,
        use_bert_text_cond: bool = False,
        init_dim: int | None = None,
        init_kernel_size: int = 7,
        use_sparse_linear_attn: bool = True,
        block_type: str = "resnet",
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        check_arguments(
            dim=dim, cond_dim=cond_dim, out_dim=out_dim, dim_mults=dim_mults, channels=channels, attn_heads=attn_heads,
            attn_dim_head=attn_dim_head, init_dim=init_dim, init_kernel_size=init_kernel_size, block_type=block_type,
        )  # fmt: skip
        self.channels = channels
        self.use_bert_text_cond = use_bert_text_cond
        self.gradient_checkpointing = gradient_checkpointing
        # set by `compile`: torch.compile of the unbound `_unet`, so a deep copy (EMA) runs its own weights
        self._compiled_unet: Callable[..., Tensor] | None = None
        self._checked_signature: tuple | None = None  # of the last inputs `_check_inputs` accepted
        self._cuda_graphs = False

        # one rotary embedding and one position bias shared by every temporal attention
        # no frequency cache: it would go stale when a state dict loads other `freqs`
        rotary_emb = RotaryEmbedding(min(32, attn_dim_head), cache_if_possible=False)
        # its tables, once per step for all temporal attentions (a function: the state dict keeps its keys)
        self._rotary_tables = partial(rotary_tables, rotary_emb, dim_head=attn_dim_head)
        self.time_rel_pos_bias = RelativePositionBias(heads=attn_heads, max_distance=32)

        layers = _Layers(attn_heads, attn_dim_head, rotary_emb, use_sparse_linear_attn)
        init_dim = default(init_dim, dim)
        self.init_conv = FrameConv3d(channels, init_dim, init_kernel_size, padding=init_kernel_size // 2)
        self.init_temporal_attn = layers.temporal_attn(init_dim)

        dims = [init_dim, *(dim * m for m in dim_mults)]
        in_out = list(zip(dims[:-1], dims[1:]))
        self.num_downsamples = len(in_out) - 1

        time_dim = dim * 4
        self.time_mlp = nn.Sequential(SinusoidalPosEmb(dim), nn.Linear(dim, time_dim), nn.GELU(), nn.Linear(time_dim, time_dim))

        # conditioning: a vector per sample, concatenated with the time embedding
        self.has_cond = exists(cond_dim) or use_bert_text_cond
        self.cond_dim = BERT_MODEL_DIM if use_bert_text_cond else cond_dim
        self.null_cond_emb = nn.Parameter(torch.randn(1, self.cond_dim)) if self.has_cond else None
        emb_dim = time_dim + (self.cond_dim if self.has_cond else 0)

        last = len(in_out) - 1
        self.downs = nn.ModuleList([
            layers.level(dim_in, dim_out, emb_dim, Downsample(dim_out) if index < last else nn.Identity())
            for index, (dim_in, dim_out) in enumerate(in_out)
        ])  # fmt: skip
        self.ups = nn.ModuleList([])  # registered here, as in the original's state dicts; filled below

        mid_dim = dims[-1]
        self.mid_block1 = ResnetBlock(mid_dim, mid_dim, time_emb_dim=emb_dim)
        self.mid_spatial_attn = Residual(PreNorm(mid_dim, SpatialAttention(Attention(mid_dim, heads=attn_heads))))
        self.mid_temporal_attn = layers.temporal_attn(mid_dim)
        self.mid_block2 = ResnetBlock(mid_dim, mid_dim, time_emb_dim=emb_dim)

        self.ups.extend(  # each up level takes its down level's skip too: twice the channels
            layers.level(dim_out * 2, dim_in, emb_dim, Upsample(dim_in) if index < last else nn.Identity())
            for index, (dim_in, dim_out) in enumerate(reversed(in_out))
        )

        # the skip from right after init_temporal_attn joins here, so 2 * init_dim channels
        self.final_conv = nn.Sequential(ResnetBlock(init_dim * 2, dim), FrameConv3d(dim, default(out_dim, channels), 1))

    # ------------------------------------------------------------ input checks

    def _check_inputs(
        self,
        x: Tensor,
        time: Tensor | float,
        cond: Any,
        focus_present_mask: Tensor | None,
        independent_frames: Tensor | None,
        cond_scale: float = 1.0,
    ) -> Tensor:
        """Raise on malformed inputs (`unet_inputs.check_inputs`); return `time` as a `(b,)` tensor.

        The checks read shapes only, never values, and run once per input signature: a
        sampling loop calls the network hundreds of times with the shapes of its first call,
        whose conditioning `GaussianDiffusion` has already checked.
        """
        time = batch_of_steps(x, time)
        signature = input_signature(x, time, cond, focus_present_mask, independent_frames, cond_scale)
        if signature != self._checked_signature:
            check_inputs(
                self.spec, 2**self.num_downsamples, x, time, cond, focus_present_mask=focus_present_mask,
                independent_frames=independent_frames, cond_scale=cond_scale,
            )  # fmt: skip
            self._checked_signature = signature
        return time

    @property
    def spec(self) -> DenoiserSpec:
        """What this network takes, as `GaussianDiffusion` reads it (`video_diffusion_pytorch.denoiser`)."""
        return DenoiserSpec(channels=self.channels, cond_dim=self.cond_dim, text=self.use_bert_text_cond)

    # ------------------------------------------------------------ forward

    def forward_with_cond_scale(
        self,
        x: Tensor,
        time: Tensor,
        cond: Tensor | None = None,
        *,
        cond_scale: float = 2.0,
        focus_present_mask: Tensor | None = None,
        prob_focus_present: float = 0.0,
        independent_frames: Tensor | None = None,
    ) -> Tensor:
        """Classifier-free guidance (Ho & Salimans 2022, eq. 6):
        `null + (cond_out - null) * cond_scale`, where `cond_out` is the forward with `cond`
        and `null` the forward with the null embedding. Same arguments as `forward`.

        A small batch runs both as one forward of the doubled batch (fewer, larger
        operations; see `BATCHED_GUIDANCE_MAX_VOXELS`), a large one as two forwards; both
        compute the same, and random focus masks are drawn for the conditional half, then
        the null half, as two forwards draw them.
        """
        if cond_scale == 1:
            return self.forward(
                x, time, cond=cond, focus_present_mask=focus_present_mask,
                prob_focus_present=prob_focus_present, independent_frames=independent_frames,
            )  # fmt: skip
        time = self._check_inputs(x, time, cond, focus_present_mask, independent_frames, cond_scale)
        batch, device = x.shape[0], x.device
        focus = [_draw_focus(batch, focus_present_mask, prob_focus_present, device) for _ in range(2)]
        if any(map(exists, focus)):
            focus = [default(mask, lambda: prob_mask_like((batch,), 0.0, device=device)) for mask in focus]
        drop = (prob_mask_like((batch,), 0.0, device=device), prob_mask_like((batch,), 1.0, device=device))
        if x.is_cuda or x[:, 0].numel() <= BATCHED_GUIDANCE_MAX_VOXELS:
            # (b, ...) -> (2b, ...): the conditional half, then the null half
            if exists(independent_frames) and independent_frames.ndim == 2:
                independent_frames = torch.cat((independent_frames, independent_frames))
            logits, null_logits = self._denoise(
                torch.cat((x, x)), torch.cat((time, time)), torch.cat((cond, cond)),
                drop_cond=torch.cat(drop), focus_present_mask=torch.cat(focus) if exists(focus[0]) else None,
                independent_frames=independent_frames,
            ).chunk(2)  # fmt: skip
        else:
            logits, null_logits = (
                self._denoise(
                    x, time, cond, drop_cond=drop_half, focus_present_mask=focus_half,
                    independent_frames=independent_frames,
                )  # fmt: skip
                for drop_half, focus_half in zip(drop, focus)
            )
        return null_logits + (logits - null_logits) * cond_scale

    def forward(
        self,
        x: Tensor,
        time: Tensor,
        cond: Tensor | None = None,
        null_cond_prob: float = 0.0,
        focus_present_mask: Tensor | None = None,
        prob_focus_present: float = 0.0,
        independent_frames: Tensor | None = None,
    ) -> Tensor:
        """Predict the noise in `x`.

        Args:
            x: noisy videos `(b, channels, f, h, w)`; h and w multiples of
                `2 ** (len(dim_mults) - 1)`; any number of frames.
            time: diffusion steps `(b,)`.
            cond: conditioning `(b, cond_dim)`, required exactly when the model is
                conditional.
            null_cond_prob: probability of replacing each sample's `cond` with the learned
                null embedding (classifier-free guidance training).
            focus_present_mask: bool `(b,)`; True makes that sample's temporal attention
                attend only to the present frame. Drawn with `prob_focus_present` when None.
            prob_focus_present: probability per sample of focusing on the present.
            independent_frames: bool `(b, f)` or `(f,)`, True for frames that are
                independent images (joint image-video training): in every temporal
                attention they attend only to themselves and no other frame sees them.
        Returns the predicted noise `(b, out_dim, f, h, w)`.
        """
        time = self._check_inputs(x, time, cond, focus_present_mask, independent_frames)
        batch = x.shape[0]
        focus_present_mask = _draw_focus(batch, focus_present_mask, prob_focus_present, x.device)
        check_number("null_cond_prob", null_cond_prob, low=0, high=1)
        drop_cond = prob_mask_like((batch,), null_cond_prob, device=x.device) if self.has_cond else None
        return self._denoise(
            x, time, cond, drop_cond=drop_cond, focus_present_mask=focus_present_mask,
            independent_frames=independent_frames,
        )  # fmt: skip

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """Compile the U-net in place with `torch.compile(*args, **kwargs)`, guided sampling
        (`forward_with_cond_scale`) included, unlike `nn.Module.compile`; input checks and
        random masks stay eager. Each new input shape (and grad mode) compiles on its first
        call; outputs equal the eager ones to float rounding. einops calls enter the graph
        as single operations (tracing is about ten times faster).
        `mode="reduce-overhead"` (or `"max-autotune"`) replays each compiled shape as a CUDA
        graph, one launch per step: each call marks a new step and reuses the last one's
        output memory, so use or clone an output before the next call (as training and the
        samplers do). `TORCHINDUCTOR_CACHE_DIR` keeps compiled code for later runs."""
        for op in (rearrange, repeat, reduce):
            torch.compiler.allow_in_graph(op)
        self._compiled_unet = torch.compile(Unet3D._unet, *args, **kwargs)
        self._cuda_graphs = kwargs.get("mode") in ("reduce-overhead", "max-autotune")

    def _denoise(self, *args: Any, **kwargs: Any) -> Tensor:
        if exists(self._compiled_unet):
            if self._cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            return self._compiled_unet(self, *args, **kwargs)
        return self._unet(*args, **kwargs)

    def _unet(
        self,
        x: Tensor,
        time: Tensor,
        cond: Tensor | None,
        *,
        drop_cond: Tensor | None,
        focus_present_mask: Tensor | None,
        independent_frames: Tensor | None,
    ) -> Tensor:
        """The U-net proper, on checked inputs; `drop_cond` (b,) marks the samples whose
        condition is replaced by the null embedding. No value of any input is read (the
        host never waits for the device, and `torch.compile` captures one graph)."""
        num_frames = x.shape[2]
        # in the attention logits' dtype, contiguous, once per step: as fused kernels take it
        time_rel_pos_bias = self.time_rel_pos_bias(num_frames, device=x.device)
        time_rel_pos_bias = time_rel_pos_bias.to(compute_dtype(x.device, x.dtype)).contiguous()
        # gradient checkpointing (Chen et al. 2016): keep each block's inputs, recompute the rest
        checkpointed = self.gradient_checkpointing and torch.is_grad_enabled()
        run = partial(checkpoint, use_reentrant=False) if checkpointed else _call

        rotation = self._rotary_tables(num_frames, device=x.device)
        temporal_kwargs = dict(pos_bias=time_rel_pos_bias, independent_frames=independent_frames, rotation=rotation)

        # channels-last from here on: norms and projections act on the last axis, no copies
        x = self.init_conv(x.contiguous(memory_format=torch.channels_last_3d))
        x = run(self.init_temporal_attn, x, **temporal_kwargs)  # no focus here, as in the original
        r = x
        temporal_kwargs.update(focus_present_mask=focus_present_mask)

        t = self.time_mlp(time)
        if self.has_cond:
            # classifier-free guidance: the null embedding where drop_cond is set
            cond = torch.where(rearrange(drop_cond, "b -> b 1"), self.null_cond_emb, cond)
            t = torch.cat((t, cond), dim=-1)

        skips = []
        for block1, block2, spatial_attn, temporal_attn, downsample in self.downs:
            x = run(block1, x, t)
            x = run(block2, x, t)
            x = run(spatial_attn, x)
            x = run(temporal_attn, x, **temporal_kwargs)
            skips.append(x)
            x = downsample(x)

        x = run(self.mid_block1, x, t)
        x = run(self.mid_spatial_attn, x)
        x = run(self.mid_temporal_attn, x, **temporal_kwargs)
        x = run(self.mid_block2, x, t)

        for block1, block2, spatial_attn, temporal_attn, upsample in self.ups:
            x = torch.cat((x, skips.pop()), dim=1)
            x = run(block1, x, t)
            x = run(block2, x, t)
            x = run(spatial_attn, x)
            x = run(temporal_attn, x, **temporal_kwargs)
            x = upsample(x)

        x = torch.cat((x, r), dim=1)
        return run(self.final_conv, x).contiguous()


def _call(module: nn.Module, *args: Any, **kwargs: Any) -> Tensor:
    return module(*args, **kwargs)


def _draw_focus(batch: int, mask: Tensor | None, prob: float, device: torch.device) -> Tensor | None:
    """The focus mask `(b,)`: the given one, else drawn with probability `prob` (no draw,
    None, at 0)."""
    if exists(mask) or check_number("prob_focus_present", prob, low=0, high=1) == 0:
        return mask
    return prob_mask_like((batch,), prob, device=device)
