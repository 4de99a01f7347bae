"""The paths a GPU takes, checked where they can be: on CPU, what reaches the fused
attention kernels, which matrix products run in bf16, that no step reads a device value
back to the host, and how many operations a training step dispatches against the
original computation; on CUDA (skipped without it), the memory-efficient attention kernel
in a training step and CUDA's own synchronisation check.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from counting import count_work  # noqa: E402
from original_unet import OriginalUnet3D  # noqa: E402

from video_diffusion_pytorch import GaussianDiffusion, Unet3D  # noqa: E402

TINY = dict(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8)
COND_DIM = 4
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# aten operations that read a tensor's value on the host: on a GPU, each is a wait
HOST_READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default}
HOST_READS |= {torch.ops.aten.item.default}
# matrix products and convolutions: under bf16 autocast each must take bf16 operands
PRODUCTS = {
    torch.ops.aten.mm.default, torch.ops.aten.bmm.default, torch.ops.aten.addmm.default,
    torch.ops.aten.baddbmm.default, torch.ops.aten.convolution.default,
    torch.ops.aten.convolution_backward.default,
}  # fmt: skip


class Recorder(TorchDispatchMode):
    """Records every aten operation dispatched inside, with its tensor arguments."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[object, list[torch.Tensor]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tensors = [a for a in (*args, *(kwargs or {}).values()) if isinstance(a, torch.Tensor)]
        self.calls.append((func, tensors))
        return func(*args, **(kwargs or {}))


def diffusion(device: str = "cpu", **kwargs) -> GaussianDiffusion:
    torch.manual_seed(0)
    unet = Unet3D(**TINY, cond_dim=COND_DIM, **kwargs)
    return GaussianDiffusion(unet, image_size=8, num_frames=4, timesteps=10).to(device)


def inputs(device: str = "cpu", batch: int = 2):
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 3, 4, 8, 8, generator=generator) * 2 - 1
    t = torch.randint(0, 10, (batch,), generator=generator)
    cond = torch.randn(batch, COND_DIM, generator=generator)
    return x.to(device), t.to(device), cond.to(device)


def step_data(device: str):
    independent = torch.tensor([[False, True, False, False], [False] * 4], device=device)
    return (*inputs(device), independent)


def train_and_sample(model: GaussianDiffusion, device: str = "cpu", data=None) -> None:
    """One bf16 training step with random focus masks and independent frames, and one
    guided sampling step, on `data` (x, t, cond, independent frames) or fresh inputs."""
    x, t, cond, independent = data or step_data(device)
    with torch.autocast(device, dtype=torch.bfloat16):
        loss = model.p_losses(x, t, cond=cond, prob_focus_present=0.5, independent_frames=independent)
    loss.backward()
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        model.p_sample(x, t, cond=cond, cond_scale=3.0)


# ---------------------------------------------------------------- on CPU


def test_every_bias_reaching_the_fused_attention_has_stride_one_and_the_query_dtype(monkeypatch):
    """The fused CUDA kernels take an additive bias only with stride 1 in its last
    dimension and in the query's dtype. On CPU the package takes SDPA where
    `torch.compile` traces, so pretend to trace and look at every call."""
    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        seen.append((q.dtype, attn_mask))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    model = diffusion()
    train_and_sample(model)
    x, t, cond = inputs()
    model.p_losses(x, t, cond=cond).backward()  # and in float32

    biases = [(dtype, bias) for dtype, bias in seen if bias is not None]
    assert {dtype for dtype, _ in biases} == {torch.bfloat16, torch.float32}
    for dtype, bias in biases:
        assert bias.stride(-1) == 1 and bias.dtype == dtype, (bias.shape, bias.stride(), bias.dtype, dtype)
    assert model.denoise_fn.time_rel_pos_bias.relative_attention_bias.weight.grad is not None


def test_no_host_reads_in_a_bf16_training_or_sampling_step():
    """On a GPU each of these operations makes the host wait for the device."""
    model = diffusion()
    recorder = Recorder()
    with recorder:
        train_and_sample(model)
    reads = Counter(str(func) for func, _ in recorder.calls if func in HOST_READS)
    assert not reads, reads


def test_matrix_products_run_in_bf16_under_autocast():
    model = diffusion()
    recorder = Recorder()
    with recorder:
        train_and_sample(model)
    products = [(func, tensors) for func, tensors in recorder.calls if func in PRODUCTS]
    assert len(products) > 50
    for func, tensors in products:
        dtypes = {t.dtype for t in tensors if t.is_floating_point()}
        assert dtypes == {torch.bfloat16}, (func, [tuple(t.shape) for t in tensors], dtypes)


def test_a_training_step_dispatches_fewer_operations_and_copies_than_the_original():
    """Counted with `torch.profiler` (every aten dispatch, nested ones too) on a small
    four-level U-net; the counts hardly depend on the sizes. At the `medium` size of
    `benchmarks/speed.py` the original dispatches 13,982 operations, 1,141 of them copies."""
    torch.set_num_threads(1)
    kwargs = dict(dim=8, dim_mults=(1, 2, 4, 8), attn_heads=2, attn_dim_head=8)
    torch.manual_seed(0)
    unet = Unet3D(**kwargs)
    original = OriginalUnet3D(**kwargs)
    original.load_state_dict(unet.state_dict())
    x = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    t, noise = torch.tensor([3, 7]), torch.randn_like(x)
    counts = {}
    for name, net in (("package", unet), ("original", original)):
        model = GaussianDiffusion(net, image_size=16, num_frames=4, timesteps=10)

        def step():
            model.p_losses(x, t, noise=noise).backward()

        step()
        counts[name] = count_work(step, torch.device("cpu"))
    ops = counts["package"]["aten_ops"] / counts["original"]["aten_ops"]
    copies = counts["package"]["copies"] / counts["original"]["copies"]
    assert ops <= 0.75 and copies <= 0.5, counts


def test_compiled_steps_keep_no_tensor_made_inside_the_graph():
    """Under CUDA graphs a tensor made inside the compiled graph and kept across calls is
    overwritten by the next replay: the position-bias buckets are not cached there."""
    model = diffusion()
    unet = model.denoise_fn
    x, t, cond = inputs()
    with torch.no_grad():
        eager = unet.forward_with_cond_scale(x, t, cond, cond_scale=3.0)
        unet.time_rel_pos_bias._buckets.clear()
        unet.compile(backend="aot_eager")
        compiled = unet.forward_with_cond_scale(x, t, cond, cond_scale=3.0)
    assert unet.time_rel_pos_bias._buckets == {}
    assert torch.allclose(compiled, eager, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- on CUDA


@CUDA
def test_training_runs_on_the_memory_efficient_attention_kernel_alone():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = diffusion("cuda")
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        train_and_sample(model, "cuda")
    bias = model.denoise_fn.time_rel_pos_bias.relative_attention_bias.weight
    assert bias.grad is not None and bias.grad.abs().sum() > 0


@CUDA
def test_cuda_reports_no_synchronisation_in_a_training_or_sampling_step():
    model = diffusion("cuda")
    data = step_data("cuda")  # copying inputs from the host waits for the device
    train_and_sample(model, "cuda", data)  # first calls may build caches
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        train_and_sample(model, "cuda", data)
    finally:
        torch.cuda.set_sync_debug_mode("default")
