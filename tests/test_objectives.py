"""Training objectives (eps, x_0, v, rectified flow), Min-SNR weighting, the noise schedules
and how training draws its steps."""

import pytest
import torch
import torch.nn.functional as F

from video_diffusion_pytorch import RECTIFIED_FLOW, GaussianDiffusion, Unet3D
from video_diffusion_pytorch.samplers import SAMPLERS
from video_diffusion_pytorch.schedules import BETA_SCHEDULES, PURE_NOISE_AT_THE_END, linear_beta_schedule
from video_diffusion_pytorch.synthetic import moving_shapes

TINY = dict(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8)


def make_diffusion(**kwargs):
    torch.manual_seed(0)
    return GaussianDiffusion(Unet3D(**TINY), image_size=8, num_frames=3, timesteps=kwargs.pop("timesteps", 20), **kwargs)


# ------------------------------------------------------------ schedules


@pytest.mark.parametrize("name", sorted(BETA_SCHEDULES))
@pytest.mark.parametrize("timesteps", [10, 1000])
def test_schedules_are_monotone_from_data_to_noise(name, timesteps):
    betas = BETA_SCHEDULES[name](timesteps)
    assert betas.dtype == torch.float64 and betas.shape == (timesteps,)
    assert (betas > 0).all() and (betas[:-1] < 1).all()
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    assert (alphas_cumprod[1:] < alphas_cumprod[:-1]).all()  # strictly more noise at every step
    assert alphas_cumprod[-1] < 1e-3  # pure noise at the end
    assert (alphas_cumprod[-1] == 0) == (name in PURE_NOISE_AT_THE_END)
    if timesteps == 1000:
        assert alphas_cumprod[0] > 0.999  # almost clean data at the start


def test_linear_schedule_is_ddpm_scaled_to_the_number_of_steps():
    torch.testing.assert_close(linear_beta_schedule(1000)[[0, -1]], torch.tensor([1e-4, 0.02], dtype=torch.float64))
    torch.testing.assert_close(linear_beta_schedule(250)[[0, -1]], torch.tensor([4e-4, 0.08], dtype=torch.float64))


def test_beta_schedule_reaches_the_buffers():
    for name, schedule in BETA_SCHEDULES.items():
        diffusion = make_diffusion(beta_schedule=name, objective="pred_flow" if name == "rectified_flow" else "pred_noise")
        torch.testing.assert_close(diffusion.betas, schedule(20).float())


def test_the_rectified_flow_schedule_is_the_straight_path_made_variance_preserving():
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    alphas_cumprod = torch.cumprod(1 - BETA_SCHEDULES["rectified_flow"](1000), dim=0)
    torch.testing.assert_close(alphas_cumprod, (1 - t) ** 2 / ((1 - t) ** 2 + t**2), atol=1e-12, rtol=0)


def test_a_schedule_ending_at_pure_noise_refuses_to_predict_the_noise():
    with pytest.raises(ValueError, match="ends at pure noise.*'pred_flow'"):
        make_diffusion(beta_schedule="rectified_flow")


# ------------------------------------------------------------ objectives and their targets


@pytest.mark.parametrize("objective", ["pred_noise", "pred_x0", "pred_v", "pred_flow"])
def test_each_objective_regresses_its_target(objective):
    diffusion = make_diffusion(objective=objective)
    x_start = torch.rand(2, 3, 3, 8, 8) * 2 - 1
    t, noise = torch.tensor([0, 17]), torch.randn(2, 3, 3, 8, 8)
    alpha, sigma = diffusion.sqrt_alphas_cumprod[t].view(2, 1, 1, 1, 1), diffusion.sqrt_one_minus_alphas_cumprod[t].view(2, 1, 1, 1, 1)
    v = alpha * noise - sigma * x_start
    target = {"pred_noise": noise, "pred_x0": x_start, "pred_v": v, "pred_flow": noise - x_start}[objective]
    x_t = alpha * x_start + sigma * noise
    if objective == "pred_flow":  # the network sees the straight path's sample at time sigma / (alpha + sigma)
        time = sigma / (alpha + sigma)
        x_t = (1 - time) * x_start + time * noise
    output = diffusion.denoise_fn(x_t, t)
    torch.testing.assert_close(diffusion.p_losses(x_start, t, noise=noise), F.l1_loss(output, target))


@pytest.mark.parametrize("objective", ["pred_noise", "pred_x0", "pred_v", "pred_flow"])
def test_each_objectives_target_gives_back_the_sample_and_its_noise(objective):
    schedule = "rectified_flow" if objective != "pred_noise" else "cosine"
    diffusion = make_diffusion(objective=objective, beta_schedule=schedule)
    x_start, noise, t = torch.rand(3, 3, 3, 8, 8) * 2 - 1, torch.randn(3, 3, 3, 8, 8), torch.tensor([0, 9, 19])
    x_t = diffusion.q_sample(x_start, t, noise=noise)
    x_back = diffusion.predict_start_from_output(x_t, t, diffusion.training_target(x_start, t, noise))
    if objective == "pred_noise":  # eps at pure noise would say nothing of x_0; the cosine schedule stops short
        torch.testing.assert_close(x_back, x_start, atol=1e-3, rtol=0)
    else:  # at the last step the straight path is pure noise: x_0 still follows, and eps with it
        torch.testing.assert_close(x_back, x_start, atol=1e-5, rtol=0)
        torch.testing.assert_close(diffusion.predict_noise_from_start(x_t, t, x_start)[1:], noise[1:], atol=1e-4, rtol=0)
        assert diffusion.sqrt_alphas_cumprod[-1] == 0 and diffusion.predict_noise_from_start(x_t, t, x_start).isfinite().all()


def test_logit_normal_steps_follow_their_distribution():
    diffusion = make_diffusion(timestep_sampling="logit_normal", timesteps=1000)
    torch.manual_seed(0)
    steps = diffusion.sample_timesteps(40_000, torch.device("cpu"))
    assert steps.dtype == torch.long and steps.min() >= 0 and steps.max() <= 999
    # P(step < 250) = P(t <= 1/4) = Phi(logit(1/4)) = Phi(-1.0986) = 0.1360; uniform steps give 0.25
    torch.testing.assert_close((steps < 250).float().mean().item(), 0.1360, atol=0.01, rtol=0)
    torch.testing.assert_close((steps < 500).float().mean().item(), 0.5, atol=0.01, rtol=0)
    with pytest.raises(ValueError, match="timestep_sampling must be one of"):
        make_diffusion(timestep_sampling="normal")


def test_v_converts_to_the_start_and_back():
    diffusion = make_diffusion()
    x_start, noise, t = torch.rand(2, 3, 3, 8, 8) * 2 - 1, torch.randn(2, 3, 3, 8, 8), torch.tensor([3, 15])
    x_t = diffusion.q_sample(x_start, t, noise=noise)
    v = diffusion.predict_v(x_start, t, noise)
    torch.testing.assert_close(diffusion.predict_start_from_v(x_t, t, v), x_start, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(diffusion.predict_noise_from_start(x_t, t, x_start), noise, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "settings",
    [
        dict(objective="pred_noise"),
        dict(objective="pred_x0", loss_type="l2"),
        dict(objective="pred_v", min_snr_loss_weight=True, beta_schedule="sigmoid"),
        dict(objective="pred_noise", min_snr_loss_weight=True, beta_schedule="linear"),
        RECTIFIED_FLOW,
    ],
    ids=lambda s: "-".join(str(v) for v in s.values()),
)
def test_each_objective_trains_a_tiny_model(settings):
    """A few dozen Adam steps lower the loss on a fixed set of (video, step, noise)."""
    diffusion = make_diffusion(**settings)
    generator = torch.Generator().manual_seed(0)
    videos = moving_shapes(8, num_frames=3, image_size=8, generator=generator) * 2 - 1
    t = torch.randint(0, 20, (8,), generator=generator)
    noise = torch.randn(videos.shape, generator=generator)

    def held_out_loss():
        with torch.no_grad():
            return diffusion.p_losses(videos, t, noise=noise).item()

    before = held_out_loss()
    optimizer = torch.optim.Adam(diffusion.parameters(), lr=2e-3)
    for _ in range(20):
        loss = diffusion(videos[torch.randint(0, 8, (4,), generator=generator)] * 0.5 + 0.5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert held_out_loss() < 0.9 * before


# ------------------------------------------------------------ Min-SNR weighting


@pytest.mark.parametrize("objective", ["pred_noise", "pred_x0", "pred_v", "pred_flow"])
def test_min_snr_weights_follow_the_formula(objective):
    gamma = 5.0
    diffusion = make_diffusion(objective=objective, min_snr_loss_weight=True, min_snr_gamma=gamma, timesteps=1000)
    t = torch.tensor([0, 100, 500, 999])
    abar = diffusion.alphas_cumprod[t].double()
    snr = abar / (1 - abar)
    expected = {
        "pred_noise": torch.minimum(snr, torch.tensor(gamma)) / snr,
        "pred_x0": torch.minimum(snr, torch.tensor(gamma)),
        "pred_v": torch.minimum(snr, torch.tensor(gamma)) / (snr + 1),
        # x_0 = x_flow - time (eps - x_0): the velocity's error is x_0's over the flow's time
        "pred_flow": torch.minimum(snr, torch.tensor(gamma)) * ((1 - abar).sqrt() / (abar.sqrt() + (1 - abar).sqrt())) ** 2,
    }[objective]
    torch.testing.assert_close(diffusion.min_snr_weight(t).double(), expected, rtol=1e-4, atol=1e-7)
    if objective == "pred_noise":  # low noise: snr above gamma, weight gamma / snr; high noise: 1
        assert diffusion.min_snr_weight(t)[0] < 1e-3 and diffusion.min_snr_weight(t)[-1] == 1


def test_min_snr_weighting_weights_each_sample_loss():
    weighted = make_diffusion(objective="pred_v", min_snr_loss_weight=True, loss_type="l2")
    x_start, noise, t = torch.rand(2, 3, 3, 8, 8) * 2 - 1, torch.randn(2, 3, 3, 8, 8), torch.tensor([1, 18])
    output = weighted.denoise_fn(weighted.q_sample(x_start, t, noise=noise), t)
    per_sample = ((output - weighted.predict_v(x_start, t, noise)) ** 2).mean(dim=(1, 2, 3, 4))
    expected = (per_sample * weighted.min_snr_weight(t)).mean()
    torch.testing.assert_close(weighted.p_losses(x_start, t, noise=noise), expected)


# ------------------------------------------------------------ rectified flow end to end


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_a_rectified_flow_model_samples_with_every_sampler(sampler, tmp_path):
    diffusion = make_diffusion(**RECTIFIED_FLOW)
    steps = 20 if sampler == "ancestral" else 5
    diffusion.configure_sampling(steps, sampler=sampler, sampling_spacing="karras" if sampler == "dpmpp_2m_sde" else None)
    videos = diffusion.sample(batch_size=2, generator=torch.Generator().manual_seed(0), progress=False)
    assert videos.shape == (2, 3, 3, 8, 8) and videos.isfinite().all() and 0 <= videos.min() <= videos.max() <= 1
    diffusion.save_pretrained(tmp_path)
    restored = GaussianDiffusion.from_pretrained(tmp_path)
    assert {key: restored.config[key] for key in RECTIFIED_FLOW} == RECTIFIED_FLOW


def test_rectified_flow_extends_a_clip_with_reconstruction_guidance():
    diffusion = make_diffusion(**RECTIFIED_FLOW)
    diffusion.configure_sampling(4)
    clip = torch.rand(1, 3, 2, 8, 8)
    out = diffusion.extend(clip, 4, context_frames=2, method="reconstruction", w_r=2.0, progress=False)
    assert out.shape == (1, 3, 4, 8, 8) and out.isfinite().all()
    torch.testing.assert_close(out[:, :, :2], clip)
