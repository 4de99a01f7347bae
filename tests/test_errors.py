"""Bad input raises ValueError/TypeError naming what was expected and what came."""

import pytest
import torch

from video_diffusion_pytorch import GaussianDiffusion, Unet3D

TINY = dict(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8)


@pytest.fixture(scope="module")
def unconditional():
    torch.manual_seed(0)
    return GaussianDiffusion(Unet3D(**TINY), image_size=8, num_frames=4, timesteps=10)


@pytest.fixture(scope="module")
def conditional():
    torch.manual_seed(0)
    return GaussianDiffusion(Unet3D(**TINY, cond_dim=6), image_size=8, num_frames=4, timesteps=10)


def test_wrong_rank(unconditional):
    with pytest.raises(ValueError, match=r"expected videos of shape \('b', 3, 4, 8, 8\).*got \(2, 3, 8, 8\)"):
        unconditional(torch.rand(2, 3, 8, 8))


def test_wrong_channels(unconditional):
    with pytest.raises(ValueError, match=r"got \(2, 1, 4, 8, 8\)"):
        unconditional(torch.rand(2, 1, 4, 8, 8))


def test_wrong_frame_count(unconditional):
    with pytest.raises(ValueError, match=r"\('b', 3, 4, 8, 8\).*got \(2, 3, 5, 8, 8\)"):
        unconditional(torch.rand(2, 3, 5, 8, 8))


def test_wrong_size(unconditional):
    with pytest.raises(ValueError, match=r"\('b', 3, 4, 8, 8\).*got \(2, 3, 4, 16, 16\)"):
        unconditional(torch.rand(2, 3, 4, 16, 16))


def test_not_a_tensor(unconditional):
    with pytest.raises(TypeError, match="must be a tensor"):
        unconditional([[0.0]])


def test_unet_wrong_rank_and_channels():
    unet = Unet3D(**TINY)
    with pytest.raises(ValueError, match=r"expected a video batch \(b, c, f, h, w\), got \(2, 3, 8, 8\)"):
        unet(torch.rand(2, 3, 8, 8), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="expected 3 channels, got 4"):
        unet(torch.rand(2, 4, 4, 8, 8), torch.tensor([1, 2]))


def test_unet_size_not_divisible():
    with pytest.raises(ValueError, match="multiples of 2 .* got 7x7"):
        Unet3D(**TINY)(torch.rand(2, 3, 4, 7, 7), torch.tensor([1, 2]))


def test_unet_time_of_wrong_batch():
    with pytest.raises(ValueError, match=r"one timestep per video, shape \(2,\), got \(3,\)"):
        Unet3D(**TINY)(torch.rand(2, 3, 4, 8, 8), torch.tensor([1, 2, 3]))


def test_cond_of_wrong_width(conditional):
    with pytest.raises(ValueError, match=r"expected cond of shape \(2, 6\), got \(2, 5\)"):
        conditional(torch.rand(2, 3, 4, 8, 8), cond=torch.randn(2, 5))


def test_cond_of_wrong_batch(conditional):
    with pytest.raises(ValueError, match=r"expected cond of shape \(2, 6\), got \(3, 6\)"):
        conditional(torch.rand(2, 3, 4, 8, 8), cond=torch.randn(3, 6))


def test_missing_cond(conditional):
    with pytest.raises(ValueError, match=r"conditional: pass cond of shape \(2, 6\)"):
        conditional(torch.rand(2, 3, 4, 8, 8))


def test_sample_without_cond_on_a_conditional_model(conditional):
    with pytest.raises(ValueError, match="this model is conditional"):
        conditional.sample(batch_size=2, progress=False)


def test_cond_given_to_an_unconditional_model(unconditional):
    with pytest.raises(ValueError, match=r"unconditional .* got cond of shape \(2, 6\)"):
        unconditional(torch.rand(2, 3, 4, 8, 8), cond=torch.randn(2, 6))


def test_strings_given_to_a_model_without_bert_conditioning(conditional, unconditional):
    for diffusion in (conditional, unconditional):
        with pytest.raises(TypeError, match="use_bert_text_cond=True"):
            diffusion(torch.rand(2, 3, 4, 8, 8), cond=["a red square", "a circle"])
        with pytest.raises(TypeError, match="use_bert_text_cond=True"):
            diffusion.sample(cond=["a red square"], progress=False)


def test_strings_given_to_the_unet_directly():
    with pytest.raises(TypeError, match="bert_embed"):
        Unet3D(**TINY, use_bert_text_cond=True)(torch.rand(1, 3, 4, 8, 8), torch.tensor([1]), cond=["a whale"])


def test_cond_scale_on_an_unconditional_model(unconditional):
    with pytest.raises(ValueError, match="cond_scale=2.0 .* unconditional"):
        unconditional.sample(batch_size=1, cond_scale=2.0, progress=False)
    with pytest.raises(ValueError, match="cond_scale=3 .* unconditional"):
        unconditional.denoise_fn.forward_with_cond_scale(torch.rand(1, 3, 4, 8, 8), torch.tensor([1]), cond_scale=3)


def test_interpolate_with_mismatched_inputs(unconditional):
    with pytest.raises(ValueError, match="x2"):
        unconditional.interpolate(torch.rand(1, 3, 4, 8, 8), torch.rand(1, 3, 3, 8, 8))
    with pytest.raises(ValueError, match="same shape"):
        unconditional.interpolate(torch.rand(1, 3, 4, 8, 8), torch.rand(2, 3, 4, 8, 8))
    with pytest.raises(ValueError, match=r"t must be in \[0, 10\), got 10"):
        unconditional.interpolate(torch.rand(1, 3, 4, 8, 8), torch.rand(1, 3, 4, 8, 8), t=10)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(loss_type="huber"), "loss_type must be one of"),
        (dict(timesteps=0), "timesteps must be at least 1"),
        (dict(channels=1), "denoise_fn takes 3 channels but channels=1"),
        (dict(dynamic_thres_percentile=1.5), "dynamic_thres_percentile"),
    ],
)
def test_bad_diffusion_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GaussianDiffusion(Unet3D(**TINY), **{"image_size": 8, "num_frames": 4, **kwargs})
