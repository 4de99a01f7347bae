"""Bad constructor arguments and bad tensors: one TypeError or ValueError each, naming the
argument, what was expected and what came. Value checks read CPU tensors only."""

import math

import pytest
import torch

from tiny_training import TINY, make_diffusion, make_trainer, single_thread  # noqa: F401
from video_diffusion_pytorch import GaussianDiffusion, Unet3D
from video_diffusion_pytorch.checks import check_finite, check_video_values

SHAPE = (2, 3, 3, 8, 8)  # the tiny diffusion's videos: frames 3, 8 x 8


@pytest.fixture(scope="module")
def unconditional():
    return make_diffusion()


@pytest.fixture(scope="module")
def conditional():
    return make_diffusion(cond_dim=6)


# ---------------------------------------------------------------- constructors


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(dim=0), ValueError, r"^dim must be at least 1, got 0$"),
        (dict(dim=-8), ValueError, r"^dim must be at least 1, got -8$"),
        (dict(dim=8.5), TypeError, r"^dim must be an integer, at least 1, got 8\.5 \(float\)$"),
        (dict(dim=True), TypeError, r"^dim must be an integer, at least 1, got True \(bool\)$"),
        (dict(dim=8, attn_heads=0), ValueError, r"^attn_heads must be at least 1, got 0$"),
        (dict(dim=8, attn_dim_head=0), ValueError, r"^attn_dim_head must be at least 1, got 0$"),
        (dict(dim=8, channels=0), ValueError, r"^channels must be at least 1, got 0$"),
        (dict(dim=8, cond_dim=0), ValueError, r"^cond_dim must be at least 1, got 0$"),
        (dict(dim=8, out_dim=-1), ValueError, r"^out_dim must be at least 1, got -1$"),
        (dict(dim=8, init_dim="16"), TypeError, r"^init_dim must be an integer, at least 1, got '16' \(str\)$"),
        (dict(dim=8, dim_mults=(1, 0)), ValueError, r"^dim_mults\[1\] must be at least 1, got 0$"),
        (dict(dim=8, dim_mults=(1, 2.0)), TypeError, r"^dim_mults\[1\] must be an integer, at least 1, got 2\.0"),
        (dict(dim=8, dim_mults=()), ValueError, r"^dim_mults must name at least one level"),
        (dict(dim=8, init_kernel_size=4), ValueError, r"^init_kernel_size must be odd, got 4$"),
    ],
)
def test_unet_constructor_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        Unet3D(**kwargs)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(num_frames=-3), ValueError, r"^num_frames must be at least 1, got -3$"),
        (dict(image_size=0), ValueError, r"^image_size must be at least 1, got 0$"),
        (dict(timesteps=10.5), TypeError, r"^timesteps must be an integer, at least 1, got 10\.5 \(float\)$"),
        (dict(timesteps="10"), TypeError, r"^timesteps must be an integer, at least 1, got '10' \(str\)$"),
        (dict(timesteps=0), ValueError, r"^timesteps must be at least 1, got 0$"),
        (dict(sampling_timesteps=2.5), ValueError, r"sampling_timesteps must be in \[1, timesteps=10\], got 2\.5 \(float, not an integer\)"),
        (dict(ddim_sampling_eta=math.nan, sampling_timesteps=5), ValueError, r"ddim_sampling_eta must be in \[0, 1\], got nan"),
    ],
)
def test_diffusion_constructor_arguments(kwargs, error, message):
    options = {**dict(image_size=8, num_frames=3, timesteps=10), **kwargs}
    with pytest.raises(error, match=message):
        GaussianDiffusion(Unet3D(**TINY), **options)


# ---------------------------------------------------------------- videos given to forward


@pytest.mark.parametrize(
    "videos, error, message",
    [
        (torch.linspace(0, 255, 1152).view(SHAPE), ValueError, r"^videos must hold values in \[0, 1\], got values from 0 to 255: divide 0-255 pixels by 255$"),
        (torch.linspace(-1, 1, 1152).view(SHAPE), ValueError, r"^videos must hold values in \[0, 1\], got values from -1 to 1: map \[-1, 1\] to \[0, 1\] with \(x \+ 1\) / 2$"),
        ((torch.rand(SHAPE) * 255).to(torch.uint8), TypeError, r"videos must be floating point .* got dtype torch\.uint8: divide uint8 pixels by 255"),
        (torch.ones(SHAPE, dtype=torch.long), TypeError, r"got dtype torch\.int64"),
        (torch.full(SHAPE, math.nan), ValueError, r"videos holds 1152 NaN or infinite values among 1152"),
        (torch.rand(SHAPE).index_fill(1, torch.tensor([2]), math.inf), ValueError, r"videos holds 384 NaN"),
        (torch.rand(0, 3, 3, 8, 8), ValueError, r"videos must hold at least one video, got a batch of 0 \(0, 3, 3, 8, 8\)"),
    ],
    ids=["0-255", "minus-one-to-one", "uint8", "int64", "nan", "inf", "batch-0"],
)
def test_bad_videos_are_refused_by_forward(unconditional, videos, error, message):
    with pytest.raises(error, match=message):
        unconditional(videos)


def test_videos_at_the_edges_of_the_range_are_taken(unconditional):
    videos = torch.zeros(SHAPE)
    videos[0] = 1.0
    assert torch.isfinite(unconditional(videos))
    assert torch.isfinite(unconditional(videos.double().clamp(0, 1).float() + 1e-4))  # rounding in a transform


def test_values_of_tensors_off_the_cpu_are_not_read():
    """A check that read a GPU tensor's values would wait for the device: off the CPU only
    the dtype is checked (a 'meta' tensor has no values to read at all)."""
    videos = torch.empty(SHAPE, device="meta")
    check_video_values(videos)
    check_finite(torch.empty(2, 6, device="meta"), "cond")
    with pytest.raises(TypeError, match="torch.uint8"):
        check_video_values(torch.empty(SHAPE, dtype=torch.uint8, device="meta"))
    from torch._subclasses.fake_tensor import FakeTensorMode  # as the memory estimate uses

    with FakeTensorMode():
        check_video_values(torch.rand(SHAPE))  # a fake CPU tensor: shapes only, no values


# ---------------------------------------------------------------- conditions and sampling


def test_a_nan_condition_is_refused_by_forward(conditional):
    cond = torch.randn(2, 6)
    cond[1, 3] = math.nan
    with pytest.raises(ValueError, match=r"^cond holds 1 NaN or infinite value among 12; expected finite values$"):
        conditional(torch.rand(SHAPE), cond=cond)


def test_a_nan_condition_is_refused_by_sample(conditional):
    with pytest.raises(ValueError, match=r"^cond holds 6 NaN"):
        conditional.sample(cond=torch.full((1, 6), math.inf), progress=False)


@pytest.mark.parametrize(
    "cond_scale, error, message",
    [
        (math.nan, ValueError, r"^cond_scale must be a finite number, got nan$"),
        (math.inf, ValueError, r"^cond_scale must be a finite number, got inf$"),
        ("2", TypeError, r"^cond_scale must be a number, got '2' \(str\)$"),
    ],
)
def test_a_bad_guidance_scale_is_refused_before_sampling(conditional, cond_scale, error, message):
    with pytest.raises(error, match=message):
        conditional.sample(cond=torch.randn(2, 6), cond_scale=cond_scale, progress=False)


def test_guidance_on_an_unconditional_model_is_refused(unconditional):
    with pytest.raises(ValueError, match=r"cond_scale=3\.0 asks for classifier-free guidance, but the denoiser is unconditional"):
        unconditional.sample(batch_size=1, cond_scale=3.0, progress=False)


def test_a_batch_size_that_disagrees_with_cond_is_refused(conditional):
    with pytest.raises(ValueError, match=r"^batch_size=3 disagrees with the batch of 2 that cond or known sets"):
        conditional.sample(cond=torch.randn(2, 6), batch_size=3, progress=False)
    videos = conditional.sample(cond=torch.randn(2, 6), batch_size=2, progress=False)
    assert videos.shape == (2, 3, 3, 8, 8)  # agreeing is fine, as is leaving batch_size out


@pytest.mark.parametrize(
    "batch_size, error, message",
    [(0, ValueError, r"^batch_size must be at least 1, got 0$"), (2.0, TypeError, r"^batch_size must be an integer")],
)
def test_a_bad_batch_size_is_refused(unconditional, batch_size, error, message):
    with pytest.raises(error, match=message):
        unconditional.sample(batch_size=batch_size, progress=False)


def test_a_condition_of_no_rows_is_refused(conditional):
    with pytest.raises(ValueError, match=r"the batch of cond or known must be at least 1, got 0"):
        conditional.sample(cond=torch.randn(0, 6), progress=False)


# ---------------------------------------------------------------- the Trainer's arguments


def test_focus_on_the_present_must_be_a_probability(tmp_path):
    trainer = make_trainer(tmp_path)
    for value in (7, -0.5, math.nan):
        with pytest.raises(ValueError, match=r"^prob_focus_present must be a finite number in \[0, 1\]"):
            trainer.train(prob_focus_present=value)
    assert trainer.step == 0


def test_guided_milestone_samples_of_an_unconditional_model_are_refused_at_construction(tmp_path):
    with pytest.raises(ValueError, match=r"cond_scale=3\.0 asks for classifier-free guidance, but the denoiser is unconditional"):
        make_trainer(tmp_path, sample_cond_scale=3.0)


# ---------------------------------------------------------------- generation arguments


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda d, v: d.extend(v[:, :, :2], 4.5, progress=False), TypeError, r"^num_frames must be an integer, at least 1, got 4\.5"),
        (lambda d, v: d.interpolate(v, v, t=2.5, progress=False), TypeError, r"^t must be an integer, at least 0, got 2\.5"),
        (lambda d, v: d.interpolate(v, v, t=10, progress=False), ValueError, r"^t must be in \[0, 10\), got 10$"),
        (lambda d, v: d.interpolate(v, v, lam=math.nan, progress=False), ValueError, r"^lam must be a finite number, got nan$"),
        (lambda d, v: d.interpolate(v, v[:1], progress=False), ValueError, r"^x1 and x2 must have the same shape"),
        (lambda d, v: d.interpolate(v * 255, v, progress=False), ValueError, r"^x1 must hold values in \[0, 1\]"),
        (lambda d, v: d.sample(known=torch.full_like(v, math.nan), known_mask=torch.ones(1, 1, 3, 1, 1, dtype=torch.bool),
                               progress=False), ValueError, r"^known videos must be in \[0, 1\], got values in \[nan, nan\]"),  # fmt: skip
        (lambda d, v: d(v, null_cond_prob=7), ValueError, r"^null_cond_prob must be a finite number in \[0, 1\], got 7$"),
        (lambda d, v: d.denoise_fn(v, "a"), TypeError, r"^time must be a number, got 'a' \(str\)$"),
    ],
    ids=["extend-frames", "interpolate-t-float", "interpolate-t-range", "interpolate-lam", "interpolate-shapes",
         "interpolate-255", "known-nan", "null-cond-prob", "time-str"],  # fmt: skip
)
def test_bad_generation_arguments_name_the_argument(unconditional, call, error, message):
    with pytest.raises(error, match=message):
        call(unconditional, torch.rand(2, 3, 3, 8, 8))


def test_the_network_refuses_integer_videos():
    with pytest.raises(TypeError, match=r"^expected a floating-point video batch .* got dtype torch\.uint8$"):
        Unet3D(**TINY)(torch.zeros(1, 3, 3, 8, 8, dtype=torch.uint8), torch.tensor([1]))
