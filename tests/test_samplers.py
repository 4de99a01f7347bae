"""Samplers: the new options are recorded, DDIM solves the right equations (checked on
Gaussian data, where the exact denoiser is known), and every sampler runs with every
objective, guidance and clipping. That the defaults are the original's numbers is checked
in test_reference.py."""

import json

import pytest
import torch

from video_diffusion_pytorch import GaussianDiffusion, Unet3D
from video_diffusion_pytorch.samplers import (
    FAST_ETA, FAST_SAMPLER, FAST_SPACING, karras_timesteps, run_sampler, sample_ancestral, sample_ddim, sample_dpmpp_2m_sde, spaced_timesteps, timestep_schedule,
)
from video_diffusion_pytorch.schedules import cosine_beta_schedule, linear_beta_schedule

TINY = dict(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8)
SAMPLER_SETTINGS = [
    dict(),
    dict(sampler="ddim", sampling_timesteps=3),
    dict(sampler="ddim", sampling_timesteps=3, ddim_sampling_eta=1.0),
    dict(sampling_timesteps=3),  # the fast default
    dict(sampler="ddpm", sampling_timesteps=3, sampling_spacing="karras"),
    dict(sampler="dpmpp_2m_sde", sampling_timesteps=3),
]


def make_diffusion(cond_dim=None, timesteps=10, **kwargs):
    torch.manual_seed(0)
    unet = Unet3D(**TINY, cond_dim=cond_dim)
    return GaussianDiffusion(unet, image_size=8, num_frames=3, timesteps=timesteps, **kwargs)


# ------------------------------------------------------------ options


def test_new_arguments_are_recorded_in_the_config():
    diffusion = make_diffusion(
        objective="pred_v", beta_schedule="sigmoid", min_snr_loss_weight=True, min_snr_gamma=3.0,
        sampling_timesteps=5, ddim_sampling_eta=0.5, sampler="ddim",
    )  # fmt: skip
    rebuilt = GaussianDiffusion(Unet3D(**TINY), **diffusion.config)
    assert rebuilt.config == diffusion.config
    assert (rebuilt.objective, rebuilt.sampler, rebuilt.sampling_timesteps, rebuilt.ddim_sampling_eta) == ("pred_v", "ddim", 5, 0.5)
    torch.testing.assert_close(rebuilt.betas, diffusion.betas)


def test_fewer_sampling_steps_select_the_fast_sampler_and_call_the_network_once_per_step():
    diffusion = make_diffusion(cond_dim=4, sampling_timesteps=4)
    assert (diffusion.sampler, diffusion.sampling_spacing, diffusion.ddim_sampling_eta) == (FAST_SAMPLER, FAST_SPACING, FAST_ETA)
    assert make_diffusion().sampler == "ancestral"
    # count videos passed through the network (its first layer): guidance may batch its two passes
    calls = []
    diffusion.denoise_fn.init_conv.register_forward_hook(lambda module, args, out: calls.append(out.shape[0]))
    diffusion.sample(cond=torch.randn(2, 4), cond_scale=1.0, progress=False)
    assert sum(calls) == 4 * 2
    calls.clear()
    diffusion.sample(cond=torch.randn(2, 4), cond_scale=3.0, progress=False)
    assert sum(calls) == 4 * 2 * 2  # classifier-free guidance: conditional and null pass per step


def test_a_built_model_can_switch_to_fewer_steps_and_saves_the_choice(tmp_path):
    diffusion = make_diffusion()
    calls = []
    diffusion.denoise_fn.init_conv.register_forward_hook(lambda module, args, out: calls.append(out.shape[0]))
    diffusion.configure_sampling(3, ddim_sampling_eta=0.5)
    assert (diffusion.sampler, diffusion.sampling_timesteps, diffusion.ddim_sampling_eta) == ("ddim", 3, 0.5)
    diffusion.sample(batch_size=1, progress=False)
    assert sum(calls) == 3
    reloaded = GaussianDiffusion.from_pretrained(diffusion.save_pretrained(tmp_path / "model"))
    assert (reloaded.sampler, reloaded.sampling_timesteps, reloaded.ddim_sampling_eta) == ("ddim", 3, 0.5)

    diffusion.configure_sampling()  # back to the original's ancestral sampling over every step
    assert (diffusion.sampler, diffusion.sampling_timesteps) == ("ancestral", 10)
    with pytest.raises(ValueError, match=r"sampling_timesteps must be in \[1, timesteps=10\], got 0"):
        diffusion.configure_sampling(0)
    with pytest.raises(ValueError, match="ancestral sampler takes every one of the 10 steps"):
        diffusion.configure_sampling(5, sampler="ancestral")


def test_the_fast_default_ddim_by_its_eta_and_models_saved_before_it(tmp_path):
    """Unnamed, fewer steps sample with the fast default; DDIM's eta given names DDIM, so a
    model saved with `ddim_sampling_eta` recorded (as every model before the fast default
    was) samples as it did; any sampler and spacing can be named and are saved."""
    assert make_diffusion(sampling_timesteps=4, ddim_sampling_eta=0.0).sampler == "ddim"
    diffusion = make_diffusion(sampling_timesteps=4, sampler="dpmpp_2m_sde", sampling_spacing="karras")
    reloaded = GaussianDiffusion.from_pretrained(diffusion.save_pretrained(tmp_path / "model"))
    assert (reloaded.sampler, reloaded.sampling_spacing, reloaded.sampling_timesteps) == ("dpmpp_2m_sde", "karras", 4)
    folder = make_diffusion().save_pretrained(tmp_path / "old")
    saved = json.loads((folder / "config.json").read_text())
    saved["config"].update(sampling_timesteps=4, ddim_sampling_eta=0.0, sampler=None)
    del saved["config"]["sampling_spacing"]  # not there before
    (folder / "config.json").write_text(json.dumps(saved))
    assert GaussianDiffusion.from_pretrained(folder).sampler == "ddim"


def test_every_sampler_steps_along_its_spacing():
    diffusion = make_diffusion(timesteps=100, sampling_timesteps=5, sampler="dpmpp_2m_sde", sampling_spacing="karras")
    seen = []
    forward = diffusion.denoise_fn.forward
    diffusion.denoise_fn.forward = lambda x, t, **kwargs: seen.append(int(t[0])) or forward(x, t, **kwargs)
    diffusion.sample(batch_size=1, progress=False)
    assert seen == karras_timesteps(diffusion.alphas_cumprod, 5) and seen != spaced_timesteps(100, 5)


def test_sampling_steps_are_evenly_spaced_from_the_last_to_the_first():
    assert spaced_timesteps(10, 10) == list(range(9, -1, -1))
    steps = spaced_timesteps(1000, 50)
    assert steps[0] == 999 and steps[-1] == 0 and len(set(steps)) == 50
    assert {a - b for a, b in zip(steps, steps[1:])} <= {20, 21}
    with pytest.raises(ValueError, match=r"in \[1, 10\], got 11"):
        spaced_timesteps(10, 11)


# ------------------------------------------------------------ DDIM eta = 1 is ancestral sampling


def test_ddim_with_eta_one_over_every_step_is_ancestral_sampling():
    """With the same noise, DDIM (eta = 1, all T steps) takes the same path as DDPM's
    ancestral sampler: eq. 16's sigma is the posterior standard deviation and eq. 12's
    mean is the posterior mean. A wrong eta (or sigma) changes the path."""
    ancestral = make_diffusion(timesteps=20)
    samples = {}
    for name, kwargs in [("ancestral", {}), ("ddim1", dict(sampler="ddim", ddim_sampling_eta=1.0)), ("ddim0.5", dict(sampler="ddim", ddim_sampling_eta=0.5))]:
        diffusion = make_diffusion(timesteps=20, **kwargs)
        diffusion.load_state_dict(ancestral.state_dict())
        samples[name] = diffusion.sample(batch_size=2, generator=torch.Generator().manual_seed(3), progress=False)
    torch.testing.assert_close(samples["ddim1"], samples["ancestral"], atol=2e-4, rtol=0)
    assert (samples["ddim0.5"] - samples["ancestral"]).abs().max() > 1e-2


def test_ddim_with_eta_zero_is_deterministic():
    diffusion = make_diffusion(sampling_timesteps=4)
    noise = torch.randn(2, 3, 3, 8, 8)
    denoise = diffusion._denoiser(None, 1.0)
    runs = [
        sample_ddim(denoise, noise, spaced_timesteps(10, 4), alphas_cumprod=diffusion.alphas_cumprod,
                    generator=torch.Generator().manual_seed(seed), progress=False)
        for seed in (0, 1)
    ]  # fmt: skip
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


# ------------------------------------------------------------ exact denoiser on Gaussian data

MU, STD = 0.3, 0.5  # data ~ N(MU, STD²), so E[x_0 | x_t] is known in closed form


def gaussian_setup(timesteps=1000, abar=None):
    diffusion = make_diffusion(timesteps=timesteps)  # for its schedule tables only
    abar = diffusion.alphas_cumprod.double() if abar is None else abar

    def denoise(x, t):
        a, var = abar[t].sqrt()[:, None], (1 - abar[t])[:, None]
        x_start = MU + a * STD**2 / (a**2 * STD**2 + var) * (x - a * MU)  # posterior mean of x_0
        return x_start, (x - a * x_start) / var.sqrt()

    def exact_flow(x_T):  # the probability-flow ODE maps N(a MU, a² STD² + 1 - abar) onto N(MU, STD²)
        a = abar[-1].sqrt()
        return MU + STD * (x_T - a * MU) / (a**2 * STD**2 + 1 - abar[-1]).sqrt()

    return diffusion, denoise, exact_flow


def test_ancestral_and_ddim_eta_one_sample_the_data_distribution():
    diffusion, denoise, _ = gaussian_setup()
    x_T = torch.randn(4000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ancestral = sample_ancestral(denoise, x_T, range(999, -1, -1), q_posterior=diffusion.q_posterior,
                                 generator=torch.Generator().manual_seed(1), progress=False)  # fmt: skip
    ddim = sample_ddim(denoise, x_T, spaced_timesteps(1000, 1000), alphas_cumprod=diffusion.alphas_cumprod, eta=1.0,
                       generator=torch.Generator().manual_seed(1), progress=False)  # fmt: skip
    torch.testing.assert_close(ddim, ancestral, atol=1e-4, rtol=0)
    assert abs(ancestral.mean().item() - MU) < 0.02
    assert abs(ancestral.std().item() - STD) < 0.02


def test_deterministic_ddim_converges_to_the_exact_flow_at_first_order():
    """DDIM with eta = 0 is Euler's method on the probability-flow ODE (Song et al. 2021,
    §4.3): from the same x_T it approaches the exact transport map, the error halving as
    the steps double."""
    diffusion, denoise, exact_flow = gaussian_setup()
    x_T = torch.linspace(-2.5, 2.5, 101, dtype=torch.float64)[:, None]
    errors = []
    for steps in (50, 100, 200):
        out = sample_ddim(denoise, x_T, spaced_timesteps(1000, steps), alphas_cumprod=diffusion.alphas_cumprod, progress=False)
        errors.append((out - exact_flow(x_T)).abs().max().item())
    assert 1.7 < errors[0] / errors[1] < 2.3 and 1.7 < errors[1] / errors[2] < 2.3
    assert errors[2] < 0.015


def test_dpmpp_2m_sde_is_k_diffusions_solver_and_samples_the_data_distribution():
    """The solver written in k-diffusion's variance-exploding form (x / sqrt(abar), sigma =
    sqrt((1 - abar) / abar), `sample_dpmpp_2m_sde`, midpoint) takes the same path; with
    enough steps it samples the data distribution."""
    diffusion, denoise, _ = gaussian_setup()
    abar = diffusion.alphas_cumprod.double()
    x_T = torch.randn(8000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    steps = spaced_timesteps(1000, 10)
    generator = torch.Generator().manual_seed(1)
    x, previous = x_T / abar[steps[0]].sqrt(), None
    for i, i_next in zip(steps, [*steps[1:], -1]):
        denoised, _ = denoise(x * abar[i].sqrt(), torch.full((8000,), i))
        if i_next < 0:
            x = denoised
            break
        sigma, sigma_next = ((1 - abar[i]) / abar[i]).sqrt(), ((1 - abar[i_next]) / abar[i_next]).sqrt()
        h = sigma.log() - sigma_next.log()
        x = sigma_next / sigma * (-h).exp() * x + (-2 * h).expm1().neg() * denoised
        if previous is not None:
            x = x + 0.5 * (-2 * h).expm1().neg() * (h / h_previous) * (denoised - previous)
        x = x + torch.randn(x.shape, generator=generator, dtype=x.dtype) * sigma_next * (-2 * h).expm1().neg().sqrt()
        previous, h_previous = denoised, h
    out = sample_dpmpp_2m_sde(denoise, x_T, steps, alphas_cumprod=diffusion.alphas_cumprod,
                              generator=torch.Generator().manual_seed(1), progress=False)  # fmt: skip
    torch.testing.assert_close(out, x, atol=1e-9, rtol=0)

    out = sample_dpmpp_2m_sde(denoise, x_T, timestep_schedule(diffusion.alphas_cumprod, 50, "karras"),
                              alphas_cumprod=diffusion.alphas_cumprod, generator=torch.Generator().manual_seed(1), progress=False)  # fmt: skip
    assert abs(out.mean().item() - MU) < 0.02 and abs(out.std().item() - STD) < 0.02


def test_dpmpp_2m_without_noise_converges_to_the_exact_flow_at_second_order():
    """At eta = 0 the solver is DPM-Solver++(2M) on the probability-flow ODE: the error falls
    about fourfold as the steps double (DDIM's, first order, halves)."""
    diffusion, denoise, exact_flow = gaussian_setup()
    x_T = torch.linspace(-2.5, 2.5, 101, dtype=torch.float64)[:, None]
    errors = []
    for steps in (50, 100, 200):
        out = sample_dpmpp_2m_sde(denoise, x_T, spaced_timesteps(1000, steps), alphas_cumprod=diffusion.alphas_cumprod,
                                  eta=0.0, progress=False)  # fmt: skip
        errors.append((out - exact_flow(x_T)).abs().max().item())
    assert errors[0] / errors[1] > 3.5 and errors[1] / errors[2] > 3.5, errors
    ddim = sample_ddim(denoise, x_T, spaced_timesteps(1000, 200), alphas_cumprod=diffusion.alphas_cumprod, progress=False)
    assert errors[2] < (ddim - exact_flow(x_T)).abs().max().item() / 5


def test_euler_ancestral_is_the_ddpm_step_on_the_trained_noise_levels():
    """k-diffusion's Euler ancestral step written out in sigma = sqrt((1 - abar) / abar), on
    x / sqrt(abar), takes the same path as the sampler of that name (DDPM over the steps)."""
    diffusion, denoise, _ = gaussian_setup()
    abar = diffusion.alphas_cumprod.double()
    x_T = torch.randn(50, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    steps = spaced_timesteps(1000, 10)
    generator = torch.Generator().manual_seed(1)
    x = x_T / abar[steps[0]].sqrt()  # variance-exploding coordinates
    for i, i_next in zip(steps, [*steps[1:], -1]):
        sigma, sigma_next = ((1 - abar[i]) / abar[i]).sqrt(), ((1 - abar[i_next]) / abar[i_next]).sqrt() if i_next >= 0 else 0.0
        denoised, _ = denoise(x * abar[i].sqrt(), torch.full((50,), i))
        sigma_up = min(sigma_next, (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        x = x + (x - denoised) / sigma * (sigma_down - sigma)  # Euler step of the probability-flow ODE
        if sigma_next > 0:
            x = x + torch.randn(x.shape, generator=generator, dtype=x.dtype) * sigma_up
    out = run_sampler("euler_ancestral", denoise, x_T, steps, alphas_cumprod=diffusion.alphas_cumprod,
                                      generator=torch.Generator().manual_seed(1), progress=False)  # fmt: skip
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)


def test_karras_spacing_follows_its_noise_ramp_and_makes_every_step():
    abar = torch.cumprod(1 - linear_beta_schedule(1000), 0)
    steps = karras_timesteps(abar, 10)
    assert steps[0] == 999 and steps[-1] == 0 and len(steps) == 10
    sigmas = ((1 - abar) / abar).sqrt()
    ramp = (80 ** (1 / 7) + torch.linspace(0, 1, 10, dtype=torch.float64) * (sigmas[0] ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert torch.allclose(sigmas[steps[1:]].double(), ramp[1:], rtol=0.05)  # eq. 5, on the nearest trained level
    cosine = torch.cumprod(1 - cosine_beta_schedule(1000), 0)
    for count in (2, 10, 50, 1000):  # distinct steps even where the trained levels are sparse
        steps = karras_timesteps(cosine, count)
        assert len(steps) == count and all(a > b for a, b in zip(steps, steps[1:])) and steps[0] == 999 and steps[-1] == 0
    with pytest.raises(ValueError, match="spacing must be one of"):
        timestep_schedule(cosine, 10, "quadratic")


def test_every_sampler_handles_a_schedule_ending_in_pure_noise():
    """abar_T = 0 (zero terminal SNR, as rectified flow's path seen as variance-preserving,
    `abar(t) = (1 - t)² / ((1 - t)² + t²)`): the samplers stay finite and sample the data."""
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    abar = (1 - t) ** 2 / ((1 - t) ** 2 + t**2)
    assert abar[-1] == 0
    _, denoise, _ = gaussian_setup(abar=abar)
    x_T = torch.randn(4000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name in ("ddim", "ddpm", "dpmpp_2m_sde"):
        for spacing in ("uniform", "karras"):
            out = run_sampler(name, denoise, x_T, timestep_schedule(abar, 100, spacing), alphas_cumprod=abar, eta=0.5,
                              generator=torch.Generator().manual_seed(1), progress=False)  # fmt: skip
            assert out.isfinite().all() and abs(out.mean().item() - MU) < 0.02 and abs(out.std().item() - STD) < 0.04, (name, spacing, out.std())


# ------------------------------------------------------------ every sampler, objective and option


@pytest.mark.parametrize("settings", SAMPLER_SETTINGS, ids=lambda s: s.get("sampler", "ancestral") + str(s.get("ddim_sampling_eta", "")))
@pytest.mark.parametrize("objective", ["pred_noise", "pred_x0", "pred_v"])
def test_every_sampler_runs_with_every_objective_and_guidance(settings, objective):
    diffusion = make_diffusion(cond_dim=4, objective=objective, timesteps=4, **settings)
    cond = torch.randn(2, 4)
    first = diffusion.sample(cond=cond, cond_scale=2.0, generator=torch.Generator().manual_seed(0), progress=False)
    second = diffusion.sample(cond=cond, cond_scale=2.0, generator=torch.Generator().manual_seed(0), progress=False)
    assert first.shape == (2, 3, 3, 8, 8)
    assert first.min() >= 0 and first.max() <= 1
    torch.testing.assert_close(first, second)


@pytest.mark.parametrize("objective", ["pred_noise", "pred_x0", "pred_v"])
def test_model_predictions_are_consistent_for_every_objective(objective):
    diffusion = make_diffusion(objective=objective)
    x_t, t = torch.randn(2, 3, 3, 8, 8), torch.tensor([1, 8])
    x_start, pred_noise = diffusion.model_predictions(x_t, t, clip_x_start=False)
    output = diffusion.denoise_fn(x_t, t)
    expected = {"pred_noise": diffusion.predict_start_from_noise(x_t, t, output), "pred_x0": output,
                "pred_v": diffusion.predict_start_from_v(x_t, t, output)}[objective]  # fmt: skip
    torch.testing.assert_close(x_start, expected)
    torch.testing.assert_close(diffusion.q_sample(x_start, t, noise=pred_noise), x_t, atol=1e-4, rtol=1e-4)


class Loud(torch.nn.Module):
    """A denoiser whose predictions are far outside [-1, 1]."""

    def __init__(self, unet):
        super().__init__()
        self.unet, self.channels, self.has_cond = unet, unet.channels, False

    def forward_with_cond_scale(self, *args, **kwargs):
        return 50 * self.unet.forward_with_cond_scale(*args, **kwargs)


@pytest.mark.parametrize("settings", SAMPLER_SETTINGS[1:])
@pytest.mark.parametrize("use_dynamic_thres", [False, True])
def test_every_sampler_clips_or_thresholds_the_predicted_start(settings, use_dynamic_thres):
    torch.manual_seed(0)
    diffusion = GaussianDiffusion(Loud(Unet3D(**TINY)), image_size=8, num_frames=3, timesteps=10, objective="pred_x0",
                                  use_dynamic_thres=use_dynamic_thres, **settings)  # fmt: skip
    samples = diffusion.sample(batch_size=2, progress=False)
    assert samples.min() >= 0 and samples.max() <= 1
    assert samples.std() > 0.05  # not collapsed


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sampler="euler"), "sampler must be one of"),
        (dict(sampling_timesteps=11), r"sampling_timesteps must be in \[1, timesteps=10\], got 11"),
        (dict(sampling_timesteps=0), "got 0"),
        (dict(sampler="ancestral", sampling_timesteps=5), "ancestral sampler takes every one of the 10 steps"),
        (dict(sampler="ddim", ddim_sampling_eta=1.5), r"ddim_sampling_eta must be in \[0, 1\], got 1.5"),
        (dict(sampler="ancestral", ddim_sampling_eta=0.5), "applies to sampler='ddim' only"),
        (dict(sampler="dpmpp_2m", sampling_timesteps=5), "sampler must be one of"),
        (dict(objective="pred_eps"), "objective must be one of"),
        (dict(beta_schedule="quadratic"), "beta_schedule must be one of"),
        (dict(sampling_timesteps=5, sampling_spacing="quadratic"), "sampling_spacing must be one of"),
        (dict(sampler="ancestral", sampling_spacing="karras"), "and sampling_spacing='karras'"),
        (dict(sampler="ddpm", sampling_timesteps=5, ddim_sampling_eta=0.5), "applies to sampler='ddim' only"),
        (dict(min_snr_gamma=0), "min_snr_gamma must be positive"),
    ],
)
def test_bad_sampler_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_diffusion(**kwargs)
