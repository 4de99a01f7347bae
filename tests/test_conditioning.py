"""Generation conditioned on known frames (Ho et al. 2022, §3.1): replacement and
reconstruction guidance, extension, prediction, temporal interpolation, the block plan,
text and guidance on every sampler, input checks, and the U-net's independent frames."""

import pytest
import torch
from torch import nn

from video_diffusion_pytorch import GaussianDiffusion, Unet3D
from video_diffusion_pytorch.conditioning import plan_windows

TINY = dict(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8)
SAMPLERS = [dict(), dict(sampler="ddim", sampling_timesteps=3), dict(sampler="ddim", sampling_timesteps=3, ddim_sampling_eta=1.0)]
FIRST_TWO = torch.tensor([True, True, False, False]).view(1, 1, 4, 1, 1)


def make_diffusion(cond_dim=None, use_bert_text_cond=False, **kwargs):
    torch.manual_seed(0)
    unet = Unet3D(**TINY, cond_dim=cond_dim, use_bert_text_cond=use_bert_text_cond)
    return GaussianDiffusion(unet, image_size=8, num_frames=4, timesteps=kwargs.pop("timesteps", 6), **kwargs)


def videos(batch=2, frames=4, seed=0):
    return torch.rand(batch, 3, frames, 8, 8, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------ sample(known=...)


@pytest.mark.parametrize("settings", SAMPLERS, ids=lambda s: s.get("sampler", "ancestral") + str(s.get("ddim_sampling_eta", "")))
@pytest.mark.parametrize("method", ["reconstruction", "replacement"])
def test_known_frames_survive_and_the_rest_is_generated(settings, method):
    diffusion = make_diffusion(**settings)
    known = videos()
    out = diffusion.sample(known=known, known_mask=FIRST_TWO, method=method, progress=False)
    assert out.shape == known.shape
    torch.testing.assert_close(out[:, :, :2], known[:, :, :2], rtol=0, atol=0)
    assert (out[:, :, 2:] - known[:, :, 2:]).abs().mean() > 0.05  # generated, not copied
    assert out.min() >= 0 and out.max() <= 1


def test_a_full_mask_keeps_single_values_and_the_batch_comes_from_known():
    diffusion = make_diffusion()
    known = videos(batch=3)
    mask = torch.rand(3, 3, 4, 8, 8, generator=torch.Generator().manual_seed(1)) < 0.3
    out = diffusion.sample(known=known, known_mask=mask, batch_size=16, progress=False)
    assert out.shape == (3, 3, 4, 8, 8)
    assert torch.equal(out[mask], known[mask])
    assert not torch.equal(out[~mask], known[~mask])


class TemporalMean(nn.Module):
    """A stand-in x_0 predictor that ties frames together: every frame's prediction is the
    mean over frames of x_t, so known frames speak to unknown ones through one path."""

    channels, has_cond = 3, False

    def forward_with_cond_scale(self, x, t, cond=None, cond_scale=1.0):
        return x.mean(dim=2, keepdim=True).expand_as(x)


def test_reconstruction_guidance_pulls_the_unknown_frames_towards_the_known_ones():
    """Eq. 7 moves the prediction of x^b along -grad ||x^a - x^^a||²; with the temporal
    mean model, that makes x^^a (the mean) closer to the known frames than replacement does."""
    mismatch = {}
    for method, w_r in [("replacement", 0.0), ("reconstruction", 0.0), ("reconstruction", 1.0)]:
        diffusion = GaussianDiffusion(TemporalMean(), image_size=8, num_frames=4, timesteps=20, objective="pred_x0")
        known = torch.full((4, 3, 4, 8, 8), 0.9)
        out = diffusion.sample(known=known, known_mask=FIRST_TWO, method=method, w_r=w_r,
                               generator=torch.Generator().manual_seed(0), progress=False)  # fmt: skip
        mismatch[method, w_r] = (out[:, :, 2:] - 0.9).abs().mean().item()
    assert mismatch["reconstruction", 0.0] == pytest.approx(mismatch["replacement", 0.0])  # w_r = 0: replacement
    assert mismatch["reconstruction", 1.0] < 0.5 * mismatch["replacement", 0.0]


def test_guidance_changes_only_the_unknown_prediction_and_lowers_the_error():
    from video_diffusion_pytorch.conditioning import frame_condition

    torch.manual_seed(0)
    mixing = torch.randn(4, 4)  # a linear x_0 predictor that mixes frames

    def predict(z):
        return torch.einsum("gf,bcfhw->bcghw", mixing, z)

    known = torch.rand(1, 3, 4, 8, 8)
    condition = frame_condition(known, FIRST_TWO, video_shape=(3, 4, 8, 8), method="reconstruction", w_r=1.0,
                                device=torch.device("cpu"))  # fmt: skip
    z = torch.randn(1, 3, 4, 8, 8)
    plain, guided = predict(z), condition.guide(z, predict, torch.tensor(0.5))
    torch.testing.assert_close(guided[:, :, :2], plain[:, :, :2])
    delta = guided - plain  # -(w_r alpha / 2) grad, on the unknown frames only

    def error(z):
        return ((predict(z) - condition.known)[:, :, :2] ** 2).sum()

    # the guidance step is a descent direction of the reconstruction error in z^b
    assert error(z + 1e-3 * delta) < error(z)


# ------------------------------------------------------------ longer videos


def test_plan_windows_for_extension_and_interpolation():
    # extension: 3 known frames to 10, blocks of 4 with 2 of context; the last block reaches back
    assert plan_windows([True] * 3 + [False] * 7, 4, 2) == [(1, 3, 5), (3, 5, 7), (5, 7, 9), (6, 9, 10)]
    # interpolation by 3: each gap is filled in a block that holds both of its ends
    known = [i % 3 == 0 for i in range(10)]
    assert plan_windows(known, 4, 2) == [(0, 1, 3), (3, 4, 6), (6, 7, 9)]
    assert plan_windows(known, 6, 2) == [(0, 1, 3), (1, 4, 6), (4, 7, 9)]
    # a video shorter than a block is one block
    assert plan_windows([True, False, False], 4, 2) == [(0, 1, 3)]
    assert plan_windows([True, True], 4, 2) == []


@pytest.mark.parametrize("settings", SAMPLERS, ids=lambda s: s.get("sampler", "ancestral") + str(s.get("ddim_sampling_eta", "")))
def test_extend_returns_the_length_asked_for_and_keeps_the_input(settings):
    diffusion = make_diffusion(**settings)
    given = videos(frames=3)
    out = diffusion.extend(given, num_frames=7, progress=False)
    assert out.shape == (2, 3, 7, 8, 8)
    torch.testing.assert_close(out[:, :, :3], given, rtol=0, atol=0)
    assert out.min() >= 0 and out.max() <= 1
    assert (out[:, :, 3:] - out[:, :, 2:3]).abs().mean() > 0.01
    torch.testing.assert_close(diffusion.extend(given, num_frames=3, progress=False), given)


def test_predict_defaults_to_the_models_frame_count():
    diffusion = make_diffusion(sampler="ddim", sampling_timesteps=2)
    first = videos(frames=1)
    out = diffusion.predict(first, method="replacement", progress=False)
    assert out.shape == (2, 3, 4, 8, 8)
    torch.testing.assert_close(out[:, :, :1], first, rtol=0, atol=0)
    assert diffusion.predict(first, num_frames=6, progress=False).shape == (2, 3, 6, 8, 8)


def test_interpolate_frames_puts_the_input_at_every_factor_th_frame():
    diffusion = make_diffusion(sampler="ddim", sampling_timesteps=2)
    given = videos(frames=3)
    out = diffusion.interpolate_frames(given, factor=3, progress=False)
    assert out.shape == (2, 3, 7, 8, 8)
    torch.testing.assert_close(out[:, :, ::3], given, rtol=0, atol=0)


# ------------------------------------------------------------ text conditioning and guidance


@pytest.mark.parametrize("settings", SAMPLERS, ids=lambda s: s.get("sampler", "ancestral") + str(s.get("ddim_sampling_eta", "")))
def test_text_conditioning_and_guidance_reach_every_conditioned_generation(settings, tiny_bert):
    diffusion = make_diffusion(use_bert_text_cond=True, timesteps=4, **settings)
    given = videos(frames=2)
    texts = ["a whale breaching", "fireworks with blue sparkles"]

    def run(texts, **kwargs):
        return diffusion.extend(given, num_frames=5, cond=texts, cond_scale=2.0,
                                generator=torch.Generator().manual_seed(0), progress=False, **kwargs)  # fmt: skip

    out = run(texts)
    assert out.shape == (2, 3, 5, 8, 8)
    torch.testing.assert_close(out[:, :, :2], given, rtol=0, atol=0)
    assert not torch.allclose(out, run(texts[::-1]))  # the text matters
    known = torch.cat((given, given), dim=2)
    sampled = diffusion.sample(cond=texts, cond_scale=2.0, known=known, known_mask=FIRST_TWO, progress=False)
    torch.testing.assert_close(sampled[:, :, :2], given, rtol=0, atol=0)


# ------------------------------------------------------------ bad inputs


@pytest.fixture(scope="module")
def diffusion():
    return make_diffusion(cond_dim=5)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(known=videos(frames=3), known_mask=FIRST_TWO), ValueError, r"expected known videos of shape \(b, 3, 4, 8, 8\), got \(2, 3, 3, 8, 8\)"),
        (dict(known=videos(), known_mask=torch.ones(2, 3, 4, 8, dtype=torch.bool)), ValueError, r"known_mask must have shape \(2, 3, 4, 8, 8\).*got \(2, 3, 4, 8\)"),
        (dict(known=videos(), known_mask=torch.ones(2, 1, 3, 1, 1, dtype=torch.bool)), ValueError, r"\(2, 1, 4, 1, 1\); got \(2, 1, 3, 1, 1\)"),
        (dict(known=videos(), known_mask=FIRST_TWO.float()), TypeError, "known_mask must be a bool tensor, got torch.float32"),
        (dict(known=videos()), ValueError, "pass known and known_mask together"),
        (dict(known=videos() * 2, known_mask=FIRST_TWO), ValueError, r"known videos must be in \[0, 1\]"),
        (dict(known=videos(), known_mask=FIRST_TWO, method="inpaint"), ValueError, "method must be one of"),
        (dict(known=videos(), known_mask=FIRST_TWO, w_r=-1.0), ValueError, "w_r must be at least 0, got -1.0"),
        (dict(known=videos().tolist(), known_mask=FIRST_TWO), TypeError, "known must be a tensor"),
    ],
)
def test_bad_known_frames(diffusion, kwargs, error, message):
    with pytest.raises(error, match=message):
        diffusion.sample(cond=torch.randn(2, 5), progress=False, **kwargs)


def test_cond_and_known_of_different_batch_sizes(diffusion):
    with pytest.raises(ValueError, match="cond has 3 rows but the videos have batch size 2"):
        diffusion.sample(cond=torch.randn(3, 5), known=videos(), known_mask=FIRST_TWO, progress=False)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda d: d.extend(videos(frames=5), num_frames=4), "num_frames must be at least the 5 frames given, got 4"),
        (lambda d: d.extend(videos(frames=2), num_frames=6, context_frames=4), r"context_frames must be in \[1, num_frames=4\), got 4"),
        (lambda d: d.extend(torch.rand(2, 1, 2, 8, 8), num_frames=6), r"expected videos of shape \('b', 3, 'f', 8, 8\).*got \(2, 1, 2, 8, 8\)"),
        (lambda d: d.predict(torch.rand(2, 3, 2, 16, 16)), r"got \(2, 3, 2, 16, 16\)"),
        (lambda d: d.interpolate_frames(videos(frames=1), factor=2), "at least 2 frames"),
        (lambda d: d.interpolate_frames(videos(frames=2), factor=4), r"factor must be an integer in \[2, 3\] for a 4-frame model, got 4"),
        (lambda d: d.interpolate_frames(videos(frames=2), factor=1), "got 1"),
    ],
)
def test_bad_extension_and_interpolation_arguments(diffusion, call, message):
    with pytest.raises(ValueError, match=message):
        call(diffusion)


# ------------------------------------------------------------ the U-net's independent frames


def test_independent_frames_do_not_influence_other_frames_through_the_unet():
    """Joint image-video training: frames marked independent are images, so no output frame
    depends on an independent input frame other than itself, and an independent frame's
    output depends on no other input frame (a gradient test through the whole U-net)."""
    torch.manual_seed(0)
    unet = Unet3D(**TINY).eval()
    independent = torch.tensor([False, False, False, True, True])  # a 3-frame clip and 2 images
    x = torch.randn(1, 3, 5, 8, 8, requires_grad=True)
    out = unet(x, torch.tensor([3]), independent_frames=independent)
    influence = torch.zeros(5, 5)  # influence[i, j]: |d out frame i / d input frame j|
    for i in range(5):
        (grad,) = torch.autograd.grad(out[:, :, i].sum(), x, retain_graph=True)
        influence[i] = grad.abs().sum(dim=(0, 1, 3, 4))
    for i in range(5):
        for j in range(5):
            if i != j and (independent[i] or independent[j]):
                assert influence[i, j] == 0, f"frame {j} influences frame {i}"
    clip_influence = influence[:3, :3]
    assert (clip_influence > 1e-6).all()  # the clip's frames do see one another


def test_text_sampling_first_leaves_bert_usable_for_training(tiny_bert_path, tmp_path, monkeypatch):
    """BERT loads on first use; when that is inside `sample` (inference mode), its weights
    must still be ordinary tensors, so that autograd through BERT works afterwards."""
    import shutil

    from video_diffusion_pytorch.text import get_bert, tokenize

    fresh = tmp_path / "bert"  # a path no other test has loaded, so it loads here
    shutil.copytree(tiny_bert_path, fresh)
    monkeypatch.setenv("VIDEO_DIFFUSION_BERT_MODEL", str(fresh))
    diffusion = make_diffusion(use_bert_text_cond=True, timesteps=2)
    diffusion.sample(cond=["a whale"], progress=False)
    assert not any(p.is_inference() for p in get_bert().parameters())
    get_bert()(input_ids=tokenize(["a whale"])).last_hidden_state.sum().backward()
