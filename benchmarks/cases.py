"""What `speed.py` measures: the configurations, the two paths and one step of each task.

Both paths are `GaussianDiffusion` around a U-net loaded with the same state dict: the
package's `Unet3D` ("optimised") or `original_unet.OriginalUnet3D` ("baseline", the
original library's computation), so every difference in time or memory is the U-net's.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

# benchmark the checkout this file lives in, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from original_unet import OriginalUnet3D  # noqa: E402

from video_diffusion_pytorch import GaussianDiffusion, Unet3D  # noqa: E402

PATHS = ("baseline", "optimised")
TRAIN_BATCH = 2
GUIDANCE_SCALE = 3.0
GUIDED_BATCHES = (1, 4)
COND_DIM = 16  # width of the conditioning vector of the guided-sampling model


@dataclass(frozen=True)
class Config:
    """A U-net and the videos it sees."""

    unet: dict[str, Any]
    frames: int
    size: int
    timesteps: int = 1000
    train_batch: int = TRAIN_BATCH
    guided_batches: tuple[int, ...] = GUIDED_BATCHES
    cond_dim: int = COND_DIM  # of the guided-sampling model
    train_conditional: bool = False  # train the conditional model (with `cond_dim`)
    notes: str = field(default="", compare=False)

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.unet.items())
        cond = f", cond_dim={self.cond_dim}" if self.train_conditional else ""
        return f"Unet3D({args}{cond}), {self.frames} frames of {self.size}^2, train batch {self.train_batch}"


CONFIGS: dict[str, Config] = {
    "tiny": Config(dict(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8), frames=4, size=16),
    "small": Config(dict(dim=16, dim_mults=(1, 2, 4, 8)), frames=8, size=32),
    "medium": Config(dict(dim=32, dim_mults=(1, 2, 4, 8)), frames=8, size=32),
    "large": Config(dict(dim=32, dim_mults=(1, 2, 4, 8)), frames=16, size=64),
    # the scale of the paper's experiments (Ho et al. 2022, §4): GPU-sized
    "paper": Config(
        dict(dim=64, dim_mults=(1, 2, 4, 8)), frames=16, size=64, train_batch=8, guided_batches=(4,),
        cond_dim=64, train_conditional=True,
    ),
}


def build_pair(
    config: Config, *, conditional: bool, device: torch.device, seed: int = 0
) -> dict[str, GaussianDiffusion]:
    """Baseline and optimised diffusion models with the same weights, in eval mode."""
    unet_kwargs = dict(config.unet, **({"cond_dim": config.cond_dim} if conditional else {}))
    torch.manual_seed(seed)
    optimised = Unet3D(**unet_kwargs)
    baseline = OriginalUnet3D(**unet_kwargs)
    baseline.load_state_dict(optimised.state_dict(), strict=True)
    return {
        name: GaussianDiffusion(
            unet, image_size=config.size, num_frames=config.frames, timesteps=config.timesteps
        ).to(device).eval()
        for name, unet in (("baseline", baseline), ("optimised", optimised))
    }


@dataclass
class Inputs:
    """Fixed inputs of one task: videos in [-1, 1] (or noisy ones), steps, noise, cond."""

    x: Tensor
    t: Tensor
    noise: Tensor
    cond: Tensor | None


def make_inputs(config: Config, batch: int, *, conditional: bool, device: torch.device, seed: int = 1) -> Inputs:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 3, config.frames, config.size, config.size)
    x = torch.rand(shape, generator=generator) * 2 - 1
    t = torch.randint(1, config.timesteps, (batch,), generator=generator)
    noise = torch.randn(shape, generator=generator)
    cond = torch.randn(batch, config.cond_dim, generator=generator) if conditional else None
    return Inputs(*(v.to(device) if v is not None else None for v in (x, t, noise, cond)))


def autocast(device: torch.device, dtype: str):
    """The precision context: fp32 (nothing) or bf16 autocast."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")


def train_step(model: GaussianDiffusion, inputs: Inputs, dtype: str) -> Callable[[], None]:
    """Forward and backward of `p_losses` (gradients dropped first, untimed by callers)."""
    device = inputs.x.device

    def step() -> None:
        with autocast(device, dtype):
            loss = model.p_losses(inputs.x, inputs.t, cond=inputs.cond, noise=inputs.noise)
        loss.backward()

    return step


def guided_step(model: GaussianDiffusion, inputs: Inputs, dtype: str) -> Callable[[], None]:
    """One ancestral step `p_sample` with classifier-free guidance."""
    device = inputs.x.device

    def step() -> None:
        with autocast(device, dtype):
            model.p_sample(inputs.x, inputs.t, cond=inputs.cond, cond_scale=GUIDANCE_SCALE)

    return step


@contextmanager
def exact_float32() -> Iterator[None]:
    """Float32 matrix products and convolutions in full float32 on CUDA. By default
    PyTorch lets cuDNN convolutions use TF32 (10 bits of mantissa), and two convolution
    algorithms then differ by ~3e-3 relative: more than the parity tolerance, and no
    difference between the computations themselves."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@torch.no_grad()
def max_relative_error(config: Config, device: torch.device) -> float:
    """Largest `max|a - b| / max|b|` between the two paths' U-net outputs (fp32, TF32
    off) on the benchmark's inputs: the plain forward (train inputs) and the guided
    forward at every guided batch size."""
    with exact_float32():
        return _max_relative_error(config, device)


def _max_relative_error(config: Config, device: torch.device) -> float:
    errors = []
    conditional = config.train_conditional
    pair = build_pair(config, conditional=conditional, device=device)
    inputs = make_inputs(config, config.train_batch, conditional=conditional, device=device)
    outs = [m.denoise_fn(inputs.x, inputs.t, cond=inputs.cond) for m in pair.values()]
    errors.append(_relative_error(outs[1], outs[0]))
    del pair
    pair = build_pair(config, conditional=True, device=device)
    for batch in config.guided_batches:
        inputs = make_inputs(config, batch, conditional=True, device=device)
        outs = [
            m.denoise_fn.forward_with_cond_scale(inputs.x, inputs.t, cond=inputs.cond, cond_scale=GUIDANCE_SCALE)
            for m in pair.values()
        ]
        errors.append(_relative_error(outs[1], outs[0]))
    return max(errors)


def _relative_error(out: Tensor, ref: Tensor) -> float:
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
