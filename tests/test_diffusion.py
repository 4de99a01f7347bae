import pytest
import torch
import torch.nn.functional as F

from video_diffusion_pytorch import GaussianDiffusion, Unet3D

TINY = dict(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8)


def make_diffusion(cond_dim=None, **kwargs):
    torch.manual_seed(0)
    return GaussianDiffusion(Unet3D(**TINY, cond_dim=cond_dim), image_size=8, num_frames=3, timesteps=8, **kwargs)


def test_sample_shape_range_and_reproducibility():
    diffusion = make_diffusion()
    first = diffusion.sample(batch_size=2, generator=torch.Generator().manual_seed(0), progress=False)
    second = diffusion.sample(batch_size=2, generator=torch.Generator().manual_seed(0), progress=False)
    assert first.shape == (2, 3, 3, 8, 8)
    assert first.min() >= 0 and first.max() <= 1
    torch.testing.assert_close(first, second)


def test_conditional_sample_takes_its_batch_from_cond():
    diffusion = make_diffusion(cond_dim=4)
    samples = diffusion.sample(cond=torch.randn(3, 4), cond_scale=2.0, batch_size=16, progress=False)
    assert samples.shape == (3, 3, 3, 8, 8)


@pytest.mark.parametrize("loss_type, distance", [("l1", F.l1_loss), ("l2", F.mse_loss)])
def test_p_losses_compares_true_and_predicted_noise(loss_type, distance):
    diffusion = make_diffusion(loss_type=loss_type)
    x_start = torch.rand(2, 3, 3, 8, 8) * 2 - 1
    t, noise = torch.tensor([0, 7]), torch.randn(2, 3, 3, 8, 8)
    x_noisy = diffusion.q_sample(x_start, t, noise=noise)
    expected = distance(noise, diffusion.denoise_fn(x_noisy, t))
    torch.testing.assert_close(diffusion.p_losses(x_start, t, noise=noise), expected)


def test_forward_trains():
    diffusion = make_diffusion()
    loss = diffusion(torch.rand(2, 3, 3, 8, 8), prob_focus_present=0.5)
    loss.backward()
    assert loss.ndim == 0 and diffusion.denoise_fn.init_conv.weight.grad is not None


def test_q_sample_and_predict_start_are_inverse():
    diffusion = make_diffusion()
    x_start, noise, t = torch.rand(2, 3, 3, 8, 8) * 2 - 1, torch.randn(2, 3, 3, 8, 8), torch.tensor([2, 6])
    x_t = diffusion.q_sample(x_start, t, noise=noise)
    torch.testing.assert_close(diffusion.predict_start_from_noise(x_t, t, noise), x_start, rtol=1e-4, atol=1e-4)


def test_dynamic_thresholding_scales_by_the_quantile():
    diffusion = make_diffusion(use_dynamic_thres=True, dynamic_thres_percentile=0.5)
    x_start = torch.zeros(2, 3, 3, 8, 8)
    x_start[0] = torch.linspace(-4, 4, 3 * 3 * 8 * 8).reshape(3, 3, 8, 8)
    x_start[1] = 0.5
    clipped = diffusion._clip_start(x_start)
    s = torch.quantile(x_start[0].abs().flatten(), 0.5)
    torch.testing.assert_close(clipped[0], x_start[0].clamp(-s, s) / s)
    torch.testing.assert_close(clipped[1], x_start[1])  # the threshold is at least 1
    static = make_diffusion()._clip_start(x_start)
    torch.testing.assert_close(static, x_start.clamp(-1, 1))


def test_interpolate_accepts_cond_and_returns_videos_in_unit_range():
    diffusion = make_diffusion(cond_dim=4)
    x1, x2 = torch.zeros(2, 3, 3, 8, 8), torch.ones(2, 3, 3, 8, 8)
    cond = torch.randn(2, 4)
    mixed = diffusion.interpolate(x1, x2, t=3, cond=cond, cond_scale=2.0, progress=False)
    assert mixed.shape == (2, 3, 3, 8, 8)
    assert mixed.min() >= 0 and mixed.max() <= 1


def test_interpolate_from_a_low_step_keeps_the_inputs_apart():
    diffusion = make_diffusion()
    dark, bright = torch.full((1, 3, 3, 8, 8), 0.1), torch.full((1, 3, 3, 8, 8), 0.9)
    generator = torch.Generator().manual_seed(0)
    towards_dark = diffusion.interpolate(dark, bright, t=0, lam=0.0, generator=generator, progress=False)
    towards_bright = diffusion.interpolate(dark, bright, t=0, lam=1.0, generator=generator, progress=False)
    assert towards_dark.mean() < towards_bright.mean()


def test_sample_draws_random_numbers_in_the_original_order():
    # the original draws x_T, then one noise tensor per step (also at t == 0), from the
    # global generator: a seeded script gives the same videos with either library
    diffusion = make_diffusion(cond_dim=4)
    cond = torch.randn(2, 4)
    torch.manual_seed(123)
    samples = diffusion.sample(cond=cond, cond_scale=2.0, progress=False)

    torch.manual_seed(123)
    x = torch.randn(2, 3, 3, 8, 8)
    with torch.no_grad():
        for i in reversed(range(diffusion.num_timesteps)):
            t = torch.full((2,), i, dtype=torch.long)
            mean, _, log_variance = diffusion.p_mean_variance(x, t, clip_denoised=True, cond=cond, cond_scale=2.0)
            noise = torch.randn_like(x)
            x = mean + (i > 0) * (0.5 * log_variance).exp() * noise
    torch.testing.assert_close(samples, (x + 1) * 0.5)


def test_forward_draws_random_numbers_in_the_original_order():
    diffusion = make_diffusion()
    videos = torch.rand(2, 3, 3, 8, 8)
    torch.manual_seed(7)
    loss = diffusion(videos)
    torch.manual_seed(7)
    t = torch.randint(0, diffusion.num_timesteps, (2,))
    x_start = videos * 2 - 1
    noise = torch.randn_like(x_start)
    torch.testing.assert_close(loss, diffusion.p_losses(x_start, t, noise=noise))


def test_training_after_sampling_at_the_same_frame_count():
    # caches filled while sampling (inference mode) must still serve autograd
    diffusion = make_diffusion()
    diffusion.sample(batch_size=1, progress=False)
    diffusion(torch.rand(2, 3, 3, 8, 8)).backward()
    assert diffusion.denoise_fn.time_rel_pos_bias.relative_attention_bias.weight.grad is not None
