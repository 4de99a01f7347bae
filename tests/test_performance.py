"""The fast U-net computes the original function, and its opt-in switches keep it.

The reference is `benchmarks/original_unet.py`: the original library's computation
(einsum attention, Conv3d, hand-written norms, two-forward guidance), loaded with the same
state dict.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import peak_memory  # noqa: E402
import speed  # noqa: E402
from original_unet import OriginalUnet3D  # noqa: E402

from video_diffusion_pytorch import GaussianDiffusion, Unet3D  # noqa: E402
from video_diffusion_pytorch import unet as unet_module  # noqa: E402

TOLERANCE = 1e-4  # relative: max |difference| / max |reference|
BF16_TOLERANCE = 5e-2  # relative L2 error of the output under bf16 autocast
TINY = dict(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8)
COND_DIM = 4


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from a second thread, and on a busy machine every
    multi-threaded operation waits for the slower thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    scale = ref.double().abs().max().clamp(min=1e-30)
    return ((out.double() - ref.double()).abs().max() / scale).item()


def assert_same_gradients(model: torch.nn.Module, reference: torch.nn.Module) -> None:
    for (name, ours), theirs in zip(model.named_parameters(), reference.parameters()):
        if theirs.grad is None:  # rotary frequencies, which are not learned
            assert ours.grad is None, name
        else:
            assert relative_error(ours.grad, theirs.grad) < TOLERANCE, name


def make_pair(**kwargs) -> tuple[Unet3D, OriginalUnet3D]:
    torch.manual_seed(0)
    unet = Unet3D(**TINY, **kwargs)
    original = OriginalUnet3D(**TINY, **kwargs)
    original.load_state_dict(unet.state_dict(), strict=True)
    return unet, original


def make_inputs(batch: int = 2, frames: int = 3, size: int = 8, cond: bool = True, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, frames, size, size, generator=generator)
    t = torch.randint(0, 1000, (batch,), generator=generator)
    c = torch.randn(batch, COND_DIM, generator=generator) if cond else None
    return x, t, c


# ---------------------------------------------------------------- same function


def test_state_dicts_are_the_originals_both_ways():
    unet, original = make_pair(cond_dim=COND_DIM)
    theirs, ours = original.state_dict(), unet.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    Unet3D(**TINY, cond_dim=COND_DIM).load_state_dict(theirs, strict=True)


def test_forward_matches_the_original():
    unet, original = make_pair(cond_dim=COND_DIM)
    batch = 2
    x, t, c = make_inputs(batch, frames=5)
    focus = torch.tensor([True, False])
    with torch.no_grad():
        for kwargs in (
            {}, {"focus_present_mask": focus}, {"focus_present_mask": torch.ones(batch, dtype=torch.bool)},
            {"null_cond_prob": 1.0},
        ):  # fmt: skip
            assert relative_error(unet(x, t, c, **kwargs), original(x, t, c, **kwargs)) < TOLERANCE, kwargs
        guided = unet.forward_with_cond_scale(x, t, c, cond_scale=3.0)
        assert relative_error(guided, original.forward_with_cond_scale(x, t, c, cond_scale=3.0)) < TOLERANCE


def test_unconditional_forward_matches_the_original():
    unet, original = make_pair()
    x, t, _ = make_inputs(cond=False)
    with torch.no_grad():
        assert relative_error(unet(x, t), original(x, t)) < TOLERANCE


def test_training_gradients_match_the_original():
    unet, original = make_pair(cond_dim=COND_DIM)
    x, t, c = make_inputs()
    noise = torch.randn_like(x)
    for model in (unet, original):
        diffusion = GaussianDiffusion(model, image_size=8, num_frames=3)
        diffusion.p_losses(x.clamp(-1, 1), t, cond=c, noise=noise, prob_focus_present=0.0).backward()
    assert_same_gradients(unet, original)


@pytest.mark.parametrize("frames", [3, 16], ids=["transposed-softmax", "row-softmax"])
def test_temporal_attention_matches_the_original_on_both_softmax_layouts(frames):
    """Under 16 frames the attention normalises transposed logits (a faster CPU kernel);
    from 16 on, the rows. Both compute the original's function and gradients."""
    unet, original = make_pair()
    x, t, _ = make_inputs(frames=frames, size=4, cond=False)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    for model in (unet, original):
        diffusion = GaussianDiffusion(model, image_size=4, num_frames=frames)
        diffusion.p_losses(x.clamp(-1, 1), t, noise=noise, prob_focus_present=0.0).backward()
    assert_same_gradients(unet, original)


def test_the_attention_projection_keeps_small_buffers_and_contiguous_operands():
    """q, k and v come from a product each: no buffer of the three together (past glibc's
    32 MiB, every allocation is a fresh mmap whose pages fault in again), and their
    gradients reach the products' backward in a layout batched BLAS takes, without a
    copy per position."""
    unet = Unet3D(**TINY)
    temporal = unet.downs[0][3].fn.fn  # Residual(PreNorm(TemporalAttention))
    heads, dim_head = TINY["attn_heads"], TINY["attn_dim_head"]
    x = torch.randn(2, TINY["dim"], 4, 8, 8, requires_grad=True)
    pos_bias = unet.time_rel_pos_bias(4, device=x.device)

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.sizes, self.operands = [], []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                self.sizes.append(out.untyped_storage().nbytes())
            if func is torch.ops.aten.bmm.default:
                self.operands += [a.stride() for a in args]
            return out

    with Record() as record:
        temporal(x, pos_bias=pos_bias).sum().backward()
    query_bytes = x.shape[0] * 8 * 8 * 4 * heads * dim_head * 4
    assert max(record.sizes) <= query_bytes
    assert record.operands and all(1 in stride[-2:] for stride in record.operands), record.operands


# ---------------------------------------------------------------- guidance in one batch


@pytest.mark.parametrize("max_voxels", [0, 10**9], ids=["two-forwards", "one-batch"])
def test_guidance_equals_two_forwards_and_draws_focus_masks_alike(monkeypatch, max_voxels):
    monkeypatch.setattr(unet_module, "BATCHED_GUIDANCE_MAX_VOXELS", max_voxels)
    unet, original = make_pair(cond_dim=COND_DIM)
    x, t, c = make_inputs(batch=3)
    with torch.no_grad():
        torch.manual_seed(5)
        ours = unet.forward_with_cond_scale(x, t, c, cond_scale=3.0, prob_focus_present=0.5)
        after_ours = torch.rand(())
        torch.manual_seed(5)
        theirs = original.forward_with_cond_scale(x, t, c, cond_scale=3.0, prob_focus_present=0.5)
        after_theirs = torch.rand(())
        assert relative_error(ours, theirs) < TOLERANCE
        assert after_ours == after_theirs  # the same random draws, in the same order

        independent = torch.tensor([[False, True, False], [False] * 3, [True, False, True]])
        one = unet.forward_with_cond_scale(x, t, c, cond_scale=2.0, independent_frames=independent)
        null = unet(x, t, c, null_cond_prob=1.0, independent_frames=independent)
        cond = unet(x, t, c, independent_frames=independent)
        assert relative_error(one, null + (cond - null) * 2.0) < TOLERANCE


def test_guidance_needs_a_conditional_model_and_scale_one_is_the_plain_forward():
    unet, _ = make_pair()
    x, t, _ = make_inputs(cond=False)
    with pytest.raises(ValueError, match="unconditional"):
        unet.forward_with_cond_scale(x, t, cond_scale=3.0)
    with torch.no_grad():
        assert torch.equal(unet.forward_with_cond_scale(x, t, cond_scale=1.0), unet(x, t))


# ---------------------------------------------------------------- caches


def test_caches_follow_frame_counts_weights_and_dtype():
    unet, original = make_pair(cond_dim=COND_DIM)
    with torch.no_grad():
        for frames in (3, 5, 3):
            x, t, c = make_inputs(frames=frames)
            assert relative_error(unet(x, t, c), original(x, t, c)) < TOLERANCE, frames

        other, other_original = make_pair(cond_dim=COND_DIM)
        for p in other_original.parameters():
            p.add_(0.1 * torch.randn_like(p))
        unet.load_state_dict(other_original.state_dict())
        assert relative_error(unet(x, t, c), other_original(x, t, c)) < TOLERANCE

        unet.double(), other_original.double()
        x, t, c = x.double(), t.double(), c.double()
        assert unet(x, t, c).dtype == torch.float64
        assert relative_error(unet(x, t, c), other_original(x, t, c)) < TOLERANCE


# ---------------------------------------------------------------- opt-in switches


def test_gradient_checkpointing_is_off_by_default_and_keeps_outputs_and_gradients():
    assert Unet3D(**TINY).gradient_checkpointing is False
    plain, _ = make_pair(cond_dim=COND_DIM)
    checkpointed = Unet3D(**TINY, cond_dim=COND_DIM, gradient_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpointed.config["gradient_checkpointing"] is True
    assert json.loads(json.dumps(checkpointed.config))["gradient_checkpointing"] is True

    x, t, c = make_inputs()
    outs = []
    for model in (plain, checkpointed):
        out = model(x, t, c, focus_present_mask=torch.tensor([True, False]))
        out.square().mean().backward()
        outs.append(out)
    assert relative_error(outs[1], outs[0]) < TOLERANCE
    assert_same_gradients(checkpointed, plain)


def test_bf16_autocast_stays_within_its_tolerance():
    """bf16 keeps 8 bits of mantissa: the output moves by ~1.5% (plain) and ~3.5% (guided
    at scale 3, which amplifies the difference of two outputs), for the original too."""
    unet, original = make_pair(cond_dim=COND_DIM)
    x, t, c = make_inputs()
    for scale in (1.0, 3.0):
        errors = []
        for model in (unet, original):
            with torch.no_grad():
                reference = model.forward_with_cond_scale(x, t, c, cond_scale=scale)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = model.forward_with_cond_scale(x, t, c, cond_scale=scale)
            assert out.dtype == torch.bfloat16
            errors.append(((out.double() - reference.double()).norm() / reference.double().norm()).item())
        assert errors[0] < BF16_TOLERANCE and errors[0] < 2 * errors[1], (scale, errors)


def test_compile_keeps_outputs_and_a_deep_copy_uses_its_own_weights():
    """`aot_eager` captures and functionalises the graph as inductor would, without the
    C++ code generation (minutes on a small CPU; see the slow test below)."""
    torch.manual_seed(0)
    unet = Unet3D(dim=8, dim_mults=(1,), attn_heads=2, attn_dim_head=8, cond_dim=COND_DIM)
    x, t, c = make_inputs(batch=1)
    with torch.no_grad():
        eager = unet.forward_with_cond_scale(x, t, c, cond_scale=3.0)
        unet.compile(backend="aot_eager")
        assert relative_error(unet.forward_with_cond_scale(x, t, c, cond_scale=3.0), eager) < TOLERANCE
        twin = copy.deepcopy(unet)
        for p in twin.parameters():
            p.mul_(1.5)
        assert relative_error(twin.forward_with_cond_scale(x, t, c, cond_scale=3.0), eager) > 1e-2


@pytest.mark.skipif(
    not os.environ.get("VIDEO_DIFFUSION_SLOW_TESTS"), reason="slow: set VIDEO_DIFFUSION_SLOW_TESTS=1"
)
def test_inductor_compile_keeps_outputs_and_gradients():
    unet, _ = make_pair(cond_dim=COND_DIM)
    compiled = copy.deepcopy(unet)
    compiled.compile()
    x, t, c = make_inputs()
    outs = []
    for model in (unet, compiled):
        out = model(x, t, c)
        out.square().mean().backward()
        outs.append(out)
    assert relative_error(outs[1], outs[0]) < TOLERANCE
    assert_same_gradients(compiled, unet)


# ---------------------------------------------------------------- benchmark script


def test_speed_benchmark_quick_run_writes_its_table(tmp_path, capsys):
    out = tmp_path / "speed.json"
    payload = speed.main(["--quick", "--no-memory", "--threads", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(payload))
    rows = payload["rows"]
    assert [row["path"] for row in rows] == ["baseline", "optimised", "speed-up / memory ratio"]
    assert all(row["train_step_s"] > 0 and row["guided_step_b4_s"] > 0 for row in rows)
    assert payload["meta"]["parity_max_relative_error"]["tiny/cpu"] < TOLERANCE
    assert "guided b1 ms" in capsys.readouterr().out

    memory = peak_memory.measure("tiny", "optimised", checkpointing=True, dtype="fp32", device="cpu")
    assert set(memory) == {"first_step", "steady"} and memory["first_step"] >= 0
