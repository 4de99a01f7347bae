"""Checkpoints: the original's keys and files load, writes are atomic (a failed or killed
save leaves the previous milestone intact), loads never unpickle code, and a resumed run
repeats an uninterrupted one bit for bit."""

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_training import FlippedClips, make_diffusion, single_thread  # noqa: F401
from tiny_training import make_trainer as make_tiny_trainer
from video_diffusion_pytorch import GaussianDiffusion, Trainer, Unet3D
from video_diffusion_pytorch import checkpoint as checkpoint_module
from video_diffusion_pytorch.checkpoint import capture_rng_state, list_milestones, restore_rng_state
from video_diffusion_pytorch.synthetic import moving_shapes

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]


def make_trainer(folder, steps, model_seed=0, **kwargs):
    """A Trainer on randomly flipped clips, updating the EMA every step from step 2."""
    options = dict(step_start_ema=2, update_ema_every=1, train_num_steps=steps)
    options.update(kwargs)
    return make_tiny_trainer(folder, make_diffusion(model_seed), FlippedClips(), **options)


def assert_same_state(a, b):
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


# ---------------------------------------------------------------- resume


def test_resumed_run_repeats_the_uninterrupted_one(tmp_path):
    straight_logs = []
    straight = make_trainer(tmp_path / "straight", steps=6)
    straight.train(prob_focus_present=0.5, log_fn=straight_logs.append)

    first = make_trainer(tmp_path / "resumed", steps=3)
    first.train(prob_focus_present=0.5)  # the last step is saved as milestone 1
    assert list_milestones(tmp_path / "resumed") == [1]

    resumed_logs = []
    resumed = make_trainer(tmp_path / "resumed", steps=6, model_seed=123, seed=99)
    resumed.load(-1)
    assert resumed.step == 3
    resumed.train(prob_focus_present=0.5, log_fn=resumed_logs.append)

    assert [log["loss"] for log in resumed_logs] == [log["loss"] for log in straight_logs[3:]]
    assert resumed.losses == straight.losses
    assert_same_state(resumed.model, straight.model)
    assert_same_state(resumed.ema_model, straight.ema_model)


def test_checkpoint_contents_load_with_weights_only(tmp_path):
    trainer = make_trainer(tmp_path, steps=2)
    trainer.train()
    checkpoint = torch.load(tmp_path / "model-1.pt", weights_only=True)
    assert {"step", "model", "ema", "scaler", "format_version", "optimizer", "rng", "data", "losses", "config"} <= set(checkpoint)
    assert checkpoint["step"] == 2 and checkpoint["scaler"] == {}
    assert checkpoint["config"]["class"] == "GaussianDiffusion"
    assert checkpoint["config"]["denoise_fn"]["config"]["dim"] == 8
    assert len(checkpoint["rng"]) == 1 and checkpoint["optimizer"]["state"]


def test_rng_state_round_trip():
    state = capture_rng_state()
    first = (torch.rand(3), random.random(), np.random.rand())
    restore_rng_state(state)
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(again[0], first[0]) and again[1:] == first[1:]


# ---------------------------------------------------------------- the original's checkpoints


def test_loads_the_original_trainers_checkpoint(tmp_path):
    reference = torch.load(FIXTURES / "diffusion_a.pt", weights_only=True)
    original = torch.load(FIXTURES / "original_trainer_checkpoint.pt", weights_only=True)
    (tmp_path / "model-1.pt").write_bytes((FIXTURES / "original_trainer_checkpoint.pt").read_bytes())
    torch.manual_seed(0)
    diffusion = GaussianDiffusion(Unet3D(**reference["unet_config"]), **reference["diffusion_config"])
    clips = moving_shapes(2, num_frames=5, image_size=16)
    trainer = Trainer(
        diffusion, clips, train_batch_size=1, gradient_accumulate_every=1, train_num_steps=1001,
        results_folder=tmp_path, progress=False,
    )  # fmt: skip
    trainer.load(-1)

    assert trainer.step == 1000
    for key in ("model", "ema"):
        module = trainer.model if key == "model" else trainer.ema_model
        for name, value in original[key].items():
            assert torch.equal(module.state_dict()[name], value), (key, name)
    assert not torch.equal(trainer.model.denoise_fn.init_conv.weight, trainer.ema_model.denoise_fn.init_conv.weight)

    trainer.save(2)  # re-saved with our keys and the model's description
    checkpoint = torch.load(tmp_path / "model-2.pt", weights_only=True)
    assert checkpoint["step"] == 1000 and checkpoint["config"]["denoise_fn"]["config"]["dim"] == 8


# ---------------------------------------------------------------- atomic writes and bad files


def test_failed_save_keeps_the_previous_milestone(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, steps=2)
    trainer.train()
    before = (tmp_path / "model-1.pt").read_bytes()

    def failing_save(obj, path):
        Path(path).write_bytes(before[: len(before) // 3])  # half-written, then the disk fills up
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    trainer.train_num_steps, trainer.save_and_sample_every = 4, 1
    with pytest.raises(OSError, match="No space"):
        trainer.train()
    monkeypatch.undo()

    assert sorted(os.listdir(tmp_path)) == ["1.gif", "loss.png", "model-1.pt", "run.json"]  # no temporary file left
    assert (tmp_path / "model-1.pt").read_bytes() == before
    resumed = make_trainer(tmp_path, steps=4, save_and_sample_every=1)
    resumed.load(-1)
    assert resumed.step == 2
    resumed.train()
    assert list_milestones(tmp_path) == [1, 2, 3]


def test_killed_save_keeps_the_previous_milestone(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from pathlib import Path
        sys.path.insert(0, {str(REPO / "tests")!r})
        import torch
        torch.set_num_threads(1)
        from test_checkpoint import make_trainer
        from video_diffusion_pytorch import checkpoint

        trainer = make_trainer(Path({str(tmp_path)!r}), steps=2, save_and_sample_every=1)
        trainer.train()

        def killed_save(obj, path):
            Path(path).write_bytes(b"half a checkpoint")
            os.kill(os.getpid(), signal.SIGKILL)

        checkpoint.torch.save = killed_save
        trainer.train_num_steps = 3
        trainer.train()
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == -9, result.stderr

    assert list_milestones(tmp_path) == [1]
    assert not (tmp_path / "model-2.pt").exists()
    resumed = make_trainer(tmp_path, steps=3, save_and_sample_every=1)
    resumed.load(-1)  # the killed write's temporary file is ignored
    assert resumed.step == 2
    resumed.train()
    assert torch.load(tmp_path / "model-2.pt", weights_only=True)["step"] == 3


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a checkpoint", "not a readable checkpoint"),
        (b"", "not a readable checkpoint"),
        ("pickled code", "not a readable checkpoint"),
        ({"weights": torch.zeros(1)}, "not a Trainer checkpoint"),
    ],
)
def test_unreadable_checkpoints_are_errors(tmp_path, content, message):
    path = tmp_path / "model-1.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save({"step": 1, "model": {}, "ema": Payload()} if content == "pickled code" else content, path)
    trainer = make_trainer(tmp_path, steps=1)
    with pytest.raises(ValueError, match=message):
        trainer.load(1)


def test_missing_checkpoints_are_errors(tmp_path):
    trainer = make_trainer(tmp_path, steps=1)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        trainer.load(-1)
    with pytest.raises(FileNotFoundError, match="model-7.pt"):
        trainer.load(7)


def test_checkpoint_of_another_model_is_an_error(tmp_path):
    make_trainer(tmp_path, steps=1).train()
    torch.manual_seed(0)
    other = GaussianDiffusion(Unet3D(dim=16, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8), image_size=8, num_frames=3, timesteps=10)
    trainer = Trainer(other, FlippedClips(), results_folder=tmp_path, progress=False, train_batch_size=2)
    with pytest.raises(ValueError, match="does not fit this model"):
        trainer.load(-1)
