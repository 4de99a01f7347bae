import pytest
import torch

from video_diffusion_pytorch import Unet3D

TINY = dict(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8)


def videos(batch=2, channels=3, frames=4, size=8):
    return torch.randn(batch, channels, frames, size, size, generator=torch.Generator().manual_seed(0))


def steps(batch=2):
    return torch.tensor([3, 7][:batch])


def test_output_shape_follows_out_dim_and_frames():
    torch.manual_seed(0)
    unet = Unet3D(**TINY, channels=1, out_dim=2)
    for frames in (1, 3, 6):
        assert unet(videos(channels=1, frames=frames), steps()).shape == (2, 2, frames, 8, 8)


def test_init_dim_different_from_dim_works():
    # the original crashed here: the final block must take 2 * init_dim channels
    torch.manual_seed(0)
    unet = Unet3D(**TINY, init_dim=12)
    out = unet(videos(), steps())
    assert out.shape == (2, 3, 4, 8, 8)
    assert unet.final_conv[0].block1.proj.in_channels == 24


def test_guidance_at_scale_one_equals_plain_forward():
    torch.manual_seed(0)
    unet = Unet3D(**TINY, cond_dim=5).eval()
    cond = torch.randn(2, 5)
    plain = unet(videos(), steps(), cond=cond)
    guided = unet.forward_with_cond_scale(videos(), steps(), cond=cond, cond_scale=1.0)
    torch.testing.assert_close(guided, plain)


def test_guidance_is_the_classifier_free_combination():
    torch.manual_seed(0)
    unet = Unet3D(**TINY, cond_dim=5).eval()
    cond = torch.randn(2, 5)
    conditional = unet(videos(), steps(), cond=cond)
    null = unet(videos(), steps(), cond=cond, null_cond_prob=1.0)
    guided = unet.forward_with_cond_scale(videos(), steps(), cond=cond, cond_scale=4.0)
    torch.testing.assert_close(guided, null + (conditional - null) * 4.0)


def test_null_condition_ignores_the_condition():
    torch.manual_seed(0)
    unet = Unet3D(**TINY, cond_dim=5).eval()
    first = unet(videos(), steps(), cond=torch.randn(2, 5), null_cond_prob=1.0)
    second = unet(videos(), steps(), cond=torch.randn(2, 5), null_cond_prob=1.0)
    torch.testing.assert_close(first, second)


def test_all_focus_shortcut_equals_the_masked_path():
    torch.manual_seed(0)
    unet = Unet3D(**TINY).eval()
    x = videos(batch=3)
    t = torch.tensor([1, 2, 3])
    everyone = unet(x, t, focus_present_mask=torch.ones(3, dtype=torch.bool))
    # with one sample unfocused, the masked path runs for the focused ones
    mixed = unet(x, t, focus_present_mask=torch.tensor([True, True, False]))
    torch.testing.assert_close(mixed[:2], everyone[:2], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(mixed[2], everyone[2])


def test_focus_on_present_makes_temporal_attention_framewise():
    torch.manual_seed(0)
    temporal_attention = Unet3D(**TINY).downs[0][3]  # Residual(PreNorm(TemporalAttention))
    x = torch.randn(2, 8, 4, 4, 4)
    changed = x.clone()
    changed[:, :, 0] = torch.randn(2, 8, 4, 4)
    pos_bias = torch.randn(2, 4, 4)
    focus = torch.tensor([True, False])
    before = temporal_attention(x, pos_bias=pos_bias, focus_present_mask=focus)
    after = temporal_attention(changed, pos_bias=pos_bias, focus_present_mask=focus)
    torch.testing.assert_close(before[0, :, 1:], after[0, :, 1:])  # focused: frames independent
    assert not torch.allclose(before[1, :, 1:], after[1, :, 1:])  # unfocused: frame 0 is seen


def test_prob_focus_present_draws_a_mask():
    torch.manual_seed(0)
    unet = Unet3D(**TINY).eval()
    x, t = videos(), steps()
    unfocused = unet(x, t)
    assert torch.allclose(unet(x, t, prob_focus_present=0.0), unfocused)
    torch.testing.assert_close(
        unet(x, t, prob_focus_present=1.0), unet(x, t, focus_present_mask=torch.ones(2, dtype=torch.bool))
    )


def test_independent_frames_do_not_see_each_other_or_the_clip():
    torch.manual_seed(0)
    unet = Unet3D(**TINY)
    x = videos(batch=1, frames=5).requires_grad_()
    independent = torch.tensor([False, False, False, True, True])  # a 3-frame clip and 2 images
    out = unet(x, torch.tensor([4]), independent_frames=independent)

    def frames_influencing(frame):
        (grad,) = torch.autograd.grad(out[:, :, frame].sum(), x, retain_graph=True)
        return {f for f in range(5) if grad[:, :, f].abs().sum() > 0}

    assert frames_influencing(3) == {3}
    assert frames_influencing(4) == {4}
    for clip_frame in range(3):
        assert frames_influencing(clip_frame) == {0, 1, 2}


def test_independent_frames_leave_a_plain_clip_unchanged():
    torch.manual_seed(0)
    unet = Unet3D(**TINY).eval()
    x, t = videos(), steps()
    none_independent = torch.zeros(2, 4, dtype=torch.bool)
    torch.testing.assert_close(unet(x, t, independent_frames=none_independent), unet(x, t))


def test_without_sparse_linear_attention():
    torch.manual_seed(0)
    unet = Unet3D(**TINY, use_sparse_linear_attn=False)
    assert isinstance(unet.downs[0][2], torch.nn.Identity)
    assert unet(videos(), steps()).shape == (2, 3, 4, 8, 8)


def test_scalar_time_is_broadcast():
    torch.manual_seed(0)
    unet = Unet3D(**TINY).eval()
    torch.testing.assert_close(unet(videos(), 5), unet(videos(), torch.tensor([5, 5])))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(init_kernel_size=4), "init_kernel_size must be odd"),
        (dict(block_type="convnext"), "block_type must be 'resnet'"),
        (dict(dim_mults=()), "at least one level"),
    ],
)
def test_bad_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Unet3D(**{**TINY, **kwargs})
