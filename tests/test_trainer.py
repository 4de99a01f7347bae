"""Trainer: the original's loop (EMA, milestones, samples, logs), conditioning and joint
image-video training, on tiny models and in-memory data."""

import re

import pytest
import torch
from PIL import Image

from tiny_training import FRAMES, SIZE, TINY, CaptionedClips, make_clips, make_diffusion, make_trainer, single_thread  # noqa: F401
from video_diffusion_pytorch import GaussianDiffusion, Unet3D
from video_diffusion_pytorch.ema import EMA

def record_denoiser_calls(diffusion):
    """Wrap the denoiser's forward to record the frames and keywords of training calls."""
    calls, forward = [], diffusion.denoise_fn.forward

    def recording(x, time, **kwargs):
        if torch.is_grad_enabled():
            calls.append(dict(frames=x.shape[2], autocast=torch.is_autocast_enabled("cpu"), **kwargs))
        return forward(x, time, **kwargs)

    diffusion.denoise_fn.forward = recording
    return calls


# ---------------------------------------------------------------- loop, milestones, logs


def test_milestones_samples_and_logs(tmp_path):
    logs = []
    trainer = make_trainer(tmp_path / "results", train_num_steps=4, save_and_sample_every=2, num_sample_rows=2)
    trainer.train(log_fn=logs.append)

    results = tmp_path / "results"
    # step 0 is no milestone; step 2 is milestone 1 (as the original); the last step (3) is milestone 2
    assert sorted(p.name for p in results.iterdir()) == ["1.gif", "2.gif", "loss.png", "model-1.pt", "model-2.pt", "run.json"]
    assert [sorted(log) for log in logs] == [["loss"], ["loss"], ["loss", "sample"], ["loss", "sample"]]
    assert logs[2]["sample"] == str(results / "1.gif")
    assert all(isinstance(log["loss"], float) for log in logs)
    assert trainer.losses == [log["loss"] for log in logs]
    assert torch.load(results / "model-1.pt", weights_only=True)["step"] == 3
    assert torch.load(results / "model-2.pt", weights_only=True)["step"] == 4

    gif = Image.open(results / "2.gif")
    assert gif.size == (2 * (SIZE + 4), 2 * (SIZE + 4))  # 2 x 2 tiles, each padded by 2 px
    assert gif.n_frames == FRAMES
    assert Image.open(results / "loss.png").format == "PNG"


def test_training_lowers_the_loss(tmp_path):
    torch.manual_seed(0)
    diffusion = GaussianDiffusion(Unet3D(**TINY), image_size=SIZE, num_frames=FRAMES, timesteps=10)
    trainer = make_trainer(
        tmp_path / "results", diffusion, data=make_clips(2), train_num_steps=40, train_batch_size=4,
        gradient_accumulate_every=1, train_lr=3e-3,
    )  # fmt: skip
    trainer.train()
    assert sum(trainer.losses[-10:]) < 0.85 * sum(trainer.losses[:10])


def test_a_finished_run_trains_no_further(tmp_path):
    trainer = make_trainer(tmp_path / "results", train_num_steps=1, gradient_accumulate_every=1)
    trainer.train()
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    logs = []
    trainer.train(log_fn=logs.append)
    assert logs == [] and trainer.step == 1
    assert all(torch.equal(weights[k], v) for k, v in trainer.model.state_dict().items())


# ---------------------------------------------------------------- EMA


def test_ema_update_is_the_formula():
    torch.manual_seed(0)
    average, model = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    expected = [a.detach() * 0.9 + 0.1 * w.detach() for a, w in zip(average.parameters(), model.parameters())]
    EMA(0.9).update_model_average(average, model)
    for a, e in zip(average.parameters(), expected):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-7)


def test_trainer_ema_resets_then_averages(tmp_path):
    decay, snapshots = 0.8, []
    trainer = make_trainer(
        tmp_path / "results", train_num_steps=6, gradient_accumulate_every=1, ema_decay=decay,
        step_start_ema=2, update_ema_every=2, train_lr=1e-2,
    )  # fmt: skip
    trainer.train(log_fn=lambda log: snapshots.append([p.detach().clone() for p in trainer.model.parameters()]))

    expected = None
    for step, weights in enumerate(snapshots):
        if step % 2:  # updates only every update_ema_every steps
            continue
        if step < 2:  # before step_start_ema the average is reset to the weights
            expected = weights
        else:
            expected = [e * decay + (1 - decay) * w for e, w in zip(expected, weights)]
    for actual, wanted in zip(trainer.ema_model.parameters(), expected):
        torch.testing.assert_close(actual, wanted, rtol=1e-6, atol=1e-7)
    assert not all(torch.equal(a, w) for a, w in zip(trainer.ema_model.parameters(), snapshots[-1]))


# ---------------------------------------------------------------- options


def test_amp_on_cpu_is_bfloat16_autocast(tmp_path):
    diffusion = make_diffusion()
    calls = record_denoiser_calls(diffusion)
    trainer = make_trainer(tmp_path / "results", diffusion, amp=True, train_num_steps=1)
    trainer.train()
    assert calls and all(call["autocast"] for call in calls)
    assert trainer.autocast_dtype == torch.bfloat16 and not trainer.scaler.is_enabled()
    assert torch.isfinite(torch.tensor(trainer.losses)).all()


def test_max_grad_norm_clips(tmp_path, monkeypatch):
    norms = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, max_norm: norms.append(max_norm) or clip(params, max_norm))
    make_trainer(tmp_path / "results", max_grad_norm=0.5, train_num_steps=2).train()
    assert norms == [0.5, 0.5]


def test_focus_present_reaches_the_unet(tmp_path):
    diffusion = make_diffusion()
    calls = record_denoiser_calls(diffusion)
    make_trainer(tmp_path / "results", diffusion, train_num_steps=1, gradient_accumulate_every=1).train(
        focus_present_mask=torch.tensor([True, False])
    )
    assert calls[0]["focus_present_mask"].tolist() == [True, False]


# ---------------------------------------------------------------- conditioning


def test_text_conditioned_training(tmp_path, tiny_bert, monkeypatch):
    from video_diffusion_pytorch import training_data

    embedded = []
    embed_texts = training_data.embed_texts
    monkeypatch.setattr(training_data, "embed_texts", lambda texts, **kw: embedded.append(list(texts)) or embed_texts(texts, **kw))
    diffusion = make_diffusion(use_bert_text_cond=True)
    calls = record_denoiser_calls(diffusion)
    data = CaptionedClips(["red square moving left", "circle moving right", "red square moving left"])
    trainer = make_trainer(tmp_path / "results", diffusion, data, cond_drop_prob=0.25, num_sample_rows=2, train_num_steps=2)
    trainer.train()

    assert embedded == [["red square moving left", "circle moving right"]]  # each distinct caption once
    assert all(call["cond"].shape == (2, 768) and call["null_cond_prob"] == 0.25 for call in calls)
    prompts = (tmp_path / "results" / "1.txt").read_text().splitlines()
    assert prompts == ["red square moving left", "circle moving right"] * 2


def test_vector_conditioned_training(tmp_path):
    videos, conds = make_clips(3), torch.randn(3, 4)
    data = torch.utils.data.TensorDataset(videos, conds)
    diffusion = make_diffusion(cond_dim=4)
    calls = record_denoiser_calls(diffusion)
    make_trainer(tmp_path / "results", diffusion, data, train_num_steps=1, gradient_accumulate_every=1).train()
    assert calls[0]["cond"].shape == (2, 4)
    assert any(torch.equal(calls[0]["cond"][0], c) for c in conds)


@pytest.mark.parametrize(
    "unet_kwargs, data, message",
    [
        ({}, CaptionedClips(["a whale"]), "not text-conditioned"),
        (dict(use_bert_text_cond=True), None, "has no captions"),
        (dict(cond_dim=4), None, "carry no condition"),
        (dict(cond_dim=4), torch.utils.data.TensorDataset(make_clips(2), torch.randn(2, 5)), "size 5.*cond_dim=4"),
    ],
)
def test_condition_mismatch_is_an_error(tmp_path, unet_kwargs, data, message):
    with pytest.raises(ValueError, match=message):
        make_trainer(tmp_path / "results", make_diffusion(**unet_kwargs), data)


@pytest.mark.parametrize(
    "data, kwargs, error, message",
    [
        (make_clips(2)[:, :, :2], {}, ValueError, re.escape("(3, 3, 8, 8), but the dataset yields (3, 2, 8, 8)")),
        (torch.empty(0, 3, 3, 8, 8), {}, ValueError, "empty"),
        (42, {}, TypeError, "folder path or a dataset"),
        (None, dict(cond_drop_prob=0.5), ValueError, "needs a conditional model"),
        (None, dict(train_batch_size=0), ValueError, "train_batch_size must be a positive integer"),
        (None, dict(num_images_per_clip=2), ValueError, "needs both image_folder"),
        (None, dict(horizontal_flip=True), ValueError, "applies to a folder"),
    ],
)
def test_bad_arguments(tmp_path, data, kwargs, error, message):
    with pytest.raises(error, match=message):
        make_trainer(tmp_path / "results", data=data, **kwargs)


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises((FileNotFoundError, ValueError), match="missing"):
        make_trainer(tmp_path / "results", data=str(tmp_path / "missing"))


# ---------------------------------------------------------------- joint image-video training


def test_joint_image_video_training(tmp_path):
    diffusion = make_diffusion()
    calls = record_denoiser_calls(diffusion)
    images = torch.rand(7, 3, SIZE, SIZE)
    trainer = make_trainer(tmp_path / "results", diffusion, image_folder=images, num_images_per_clip=2, train_num_steps=2)
    trainer.train()
    assert all(call["frames"] == FRAMES + 2 for call in calls)
    assert calls[0]["independent_frames"].tolist() == [False] * FRAMES + [True] * 2
    assert trainer.data.image_position == 2 * 2 * 2 * 2  # steps x accumulation x batch x images per clip
    # the samples are videos of the model's own length
    assert Image.open(tmp_path / "results" / "1.gif").n_frames == FRAMES
