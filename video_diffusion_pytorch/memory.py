"""How much memory a training step needs, estimated before any work.

One training loss is taken on a batch of fake tensors (`FakeTensorMode`, what
`torch.compile` traces with: tensors with a shape, dtype and device but no storage, so
nothing is computed or allocated, and the model's code runs as on the real device); the
tensors autograd saves for the backward pass are what a step holds at its peak. Views
are counted once, through their base tensor. Added to that: the weights, their
gradients, Adam's two moments and the EMA copy. The step runs on a copy of the model, so
nothing it caches (fake tensors) reaches the real one. On the CPU the estimate came
within about 40% of the resident memory a step adds.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from .denoiser import DenoiserSpec

# weights, gradients, Adam's two moments and the EMA copy
PARAMETER_COPIES = 5


def training_step_memory(diffusion: nn.Module, batch_size: int, frames: int | None = None) -> int:
    """Bytes a training step of `diffusion` (a GaussianDiffusion) needs for `batch_size`
    videos of `frames` frames (default: the model's; more with the images of joint
    training appended, counted in proportion): activations saved for the backward
    pass, plus the weights and what the optimizer and EMA keep of them."""
    model = copy.deepcopy(diffusion)  # whatever the model caches during the fake step stays in the copy
    shape = (batch_size, model.channels, model.num_frames, model.image_size, model.image_size)
    cond_dim = DenoiserSpec.of(model.denoise_fn).cond_dim  # text models take their embeddings
    device = next(model.parameters()).device
    saved: dict[int, torch.Tensor] = {}  # holding the tensors keeps their ids from being reused

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        base = tensor if tensor._base is None else tensor._base
        saved[id(base)] = base
        return tensor

    with FakeTensorMode(allow_non_fake_inputs=True), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        cond = torch.rand(batch_size, cond_dim, device=device) if cond_dim is not None else None
        model(torch.rand(shape, device=device), cond=cond)
    activations = sum(tensor.numel() * tensor.element_size() for tensor in saved.values())
    # appended images (joint training) add activations about in proportion to the frames
    activations = activations * (frames or diffusion.num_frames) // diffusion.num_frames
    weights = sum(p.numel() * p.element_size() for p in diffusion.parameters())
    return activations + PARAMETER_COPIES * weights


def available_memory(device: torch.device) -> int:
    """Bytes free for a run on `device`: the GPU's free memory, or the machine's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available
