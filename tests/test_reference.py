"""Golden parity with the original library: its weights load strictly into our classes
and reproduce every stored output and activation (relative error < 1e-4)."""

import re
from pathlib import Path

import pytest
import torch

from video_diffusion_pytorch import GaussianDiffusion, Unet3D

FIXTURES = Path(__file__).parent / "fixtures"
TOLERANCE = 1e-4


def load_fixture(name):
    return torch.load(FIXTURES / f"{name}.pt", weights_only=True)


def relative_error(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max().clamp(min=1e-12)).item()


def assert_close(actual, expected, what):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    error = relative_error(actual, expected)
    assert error < TOLERANCE, f"{what}: relative error {error:.2e}"


def build_unet(ref):
    unet = Unet3D(**ref["config"])
    unet.load_state_dict(ref["state_dict"], strict=True)
    return unet.eval()


@pytest.mark.parametrize("name", ["unet_a", "unet_b"])
def test_unet_output_and_every_activation(name):
    ref = load_fixture(name)
    unet = build_unet(ref)
    captured = {}
    modules = dict(unet.named_modules())
    for module_name in ref["activations"]:
        modules[module_name].register_forward_hook(
            lambda module, args, output, module_name=module_name: captured.__setitem__(module_name, output)
        )
    with torch.no_grad():
        out = unet(ref["x"], ref["t"], cond=ref["cond"])
    assert_close(out, ref["out"], "out")
    assert set(captured) == set(ref["activations"])
    for module_name, expected in ref["activations"].items():
        assert_close(captured[module_name], expected, module_name)


@pytest.mark.parametrize("name", ["unet_a", "unet_b"])
def test_unet_focus_on_present(name):
    ref = load_fixture(name)
    unet = build_unet(ref)
    with torch.no_grad():
        focus = unet(ref["x"], ref["t"], cond=ref["cond"], focus_present_mask=ref["focus_mask"])
        all_focus = unet(ref["x"], ref["t"], cond=ref["cond"], focus_present_mask=torch.ones(2, dtype=torch.bool))
    assert_close(focus, ref["out_focus"], "out_focus")
    assert_close(all_focus, ref["out_focus_all"], "out_focus_all")


def test_unet_null_condition_and_guidance():
    ref = load_fixture("unet_b")
    unet = build_unet(ref)
    with torch.no_grad():
        null = unet(ref["x"], ref["t"], cond=ref["cond"], null_cond_prob=1.0)
        guided = unet.forward_with_cond_scale(ref["x"], ref["t"], cond=ref["cond"], cond_scale=3.0)
    assert_close(null, ref["out_null"], "out_null")
    assert_close(guided, ref["out_cfg"], "out_cfg")


# the options the original lacks, named at their defaults: they must not change a number
NEW_OPTIONS_AT_DEFAULTS = dict(
    objective="pred_noise", beta_schedule="cosine", min_snr_loss_weight=False, sampling_timesteps=None,
    ddim_sampling_eta=0.0, sampler="ancestral",
)


@pytest.mark.parametrize("new_options", [{}, NEW_OPTIONS_AT_DEFAULTS], ids=["original-arguments", "new-options-named"])
@pytest.mark.parametrize("name", ["diffusion_a", "diffusion_b"])
def test_diffusion_buffers_losses_and_posterior(name, new_options):
    ref = load_fixture(name)
    diffusion = GaussianDiffusion(Unet3D(**ref["unet_config"]), **ref["diffusion_config"], **new_options)
    diffusion.load_state_dict(ref["state_dict"], strict=True)
    diffusion.eval()

    fresh = GaussianDiffusion(Unet3D(**ref["unet_config"]), **ref["diffusion_config"])
    for buffer_name, expected in ref["state_dict"].items():
        if not buffer_name.startswith("denoise_fn."):
            assert_close(getattr(fresh, buffer_name), expected, buffer_name)

    cond_scale = 2.0 if ref["cond"] is not None else 1.0
    with torch.no_grad():
        q_sample = diffusion.q_sample(ref["x_start"], ref["t"], noise=ref["noise"])
        loss = diffusion.p_losses(ref["x_start"], ref["t"], cond=ref["cond"], noise=ref["noise"])
        mean, variance, log_variance = diffusion.p_mean_variance(
            ref["q_sample"], ref["t"], clip_denoised=True, cond=ref["cond"], cond_scale=cond_scale
        )
    assert_close(q_sample, ref["q_sample"], "q_sample")
    assert_close(loss, ref["loss"], "loss")
    assert_close(mean, ref["p_mean"], "p_mean")
    assert_close(variance, ref["p_var"], "p_var")
    assert_close(log_variance, ref["p_logvar"], "p_logvar")


def test_original_trainer_checkpoint_loads():
    ref = load_fixture("original_trainer_checkpoint")
    config = load_fixture("diffusion_a")
    diffusion = GaussianDiffusion(Unet3D(**config["unet_config"]), **config["diffusion_config"])
    diffusion.load_state_dict(ref["model"], strict=True)
    ema = GaussianDiffusion(Unet3D(**config["unet_config"]), **config["diffusion_config"])
    ema.load_state_dict(ref["ema"], strict=True)
    weight = "denoise_fn.init_conv.weight"
    assert not torch.equal(diffusion.state_dict()[weight], ema.state_dict()[weight])


def parse_state_dict_keys():
    """{header: {name: shape}} from state_dict_keys.txt."""
    sections, current = {}, None
    for line in (FIXTURES / "state_dict_keys.txt").read_text().splitlines():
        if line.startswith("# "):
            current = sections.setdefault(line[2:], {})
        elif line.strip():
            name, shape, *_ = line.split("\t")
            current[name] = tuple(int(n) for n in re.findall(r"\d+", shape))
    return sections


def build_from_header(header):
    """Evaluate a header such as `Unet3D(dim=64, dim_mults=(1, 2, 4, 8)): N parameters`."""
    call = header.split(":")[0]
    with torch.device("meta"):
        return eval(call, {"Unet3D": Unet3D, "GaussianDiffusion": GaussianDiffusion})


@pytest.mark.parametrize("header", [h for h in parse_state_dict_keys() if h.startswith("Unet3D")])
def test_parameter_names_and_shapes_match_the_original(header):
    expected = parse_state_dict_keys()[header]
    unet = build_from_header(header)
    ours = {name: tuple(tensor.shape) for name, tensor in unet.state_dict().items()}
    assert ours == expected
    expected_count = int(re.search(r"(\d+) parameters", header).group(1))
    assert sum(p.numel() for p in unet.parameters()) == expected_count


def test_diffusion_buffer_names_match_the_original():
    (header,) = [h for h in parse_state_dict_keys() if h.startswith("GaussianDiffusion")]
    expected = parse_state_dict_keys()[header]
    with torch.device("meta"):
        diffusion = GaussianDiffusion(Unet3D(dim=8, dim_mults=(1, 2)), image_size=16, num_frames=5, timesteps=10)
    ours = {n: tuple(t.shape) for n, t in diffusion.state_dict().items() if not n.startswith("denoise_fn.")}
    assert ours == expected
