"""The Trainer on accelerate: mixed precision from its settings and accelerate's
configuration, the optimizer, data loaders and gradient accumulation prepared by it, the
trackers (TensorBoard read back from its event file), the validation loss and compiling."""

import os

import pytest
import torch
from accelerate.optimizer import AcceleratedOptimizer

from tiny_training import make_clips, make_diffusion, make_trainer, single_thread  # noqa: F401
from video_diffusion_pytorch import Unet3D
from video_diffusion_pytorch.results import validation_loss


def record_autocast(diffusion):
    """Record whether each training call of the denoiser runs under CPU autocast."""
    calls, forward = [], diffusion.denoise_fn.forward

    def recording(x, time, **kwargs):
        if torch.is_grad_enabled():
            calls.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
        return forward(x, time, **kwargs)

    diffusion.denoise_fn.forward = recording
    return calls


# ---------------------------------------------------------------- mixed precision


def test_mixed_precision_from_accelerates_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    diffusion = make_diffusion()
    calls = record_autocast(diffusion)
    trainer = make_trainer(tmp_path / "a", diffusion, train_num_steps=1)
    trainer.train()
    assert trainer.accelerator.mixed_precision == "bf16" and calls and all(c == torch.bfloat16 for c in calls)

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    diffusion = make_diffusion()
    calls = record_autocast(diffusion)
    make_trainer(tmp_path / "b", diffusion, train_num_steps=1).train()  # a later Trainer in full precision
    assert calls and not any(calls)


def test_mixed_precision_argument_and_checks(tmp_path):
    trainer = make_trainer(tmp_path / "a", mixed_precision="bf16", train_num_steps=1)
    assert trainer.accelerator.mixed_precision == "bf16" and trainer.autocast_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        make_trainer(tmp_path / "b", mixed_precision="fp8")
    with pytest.raises(ValueError, match="amp=True asks for mixed precision"):
        make_trainer(tmp_path / "c", amp=True, mixed_precision="no")


# ---------------------------------------------------------------- optimizer, loaders, accumulation


def test_accelerate_prepares_the_optimizer_and_accumulates(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, train_num_steps=2, gradient_accumulate_every=3)
    assert isinstance(trainer.opt, AcceleratedOptimizer)
    steps, backwards = [], []
    inner = trainer.opt.optimizer
    step = inner.step
    monkeypatch.setattr(inner, "step", lambda *a, **k: steps.append(1) or step(*a, **k))
    backward = trainer.accelerator.backward
    monkeypatch.setattr(trainer.accelerator, "backward", lambda loss, **k: backwards.append(loss) or backward(loss, **k))
    trainer.train()
    assert len(steps) == 2 and len(backwards) == 6  # one Adam step per three batches
    assert trainer.data.position == 2 * 3 * 2  # steps x accumulation x batch


def test_batches_come_from_accelerates_loader_on_the_device(tmp_path):
    from accelerate.data_loader import DataLoaderShard

    trainer = make_trainer(tmp_path, train_num_steps=1)
    loader = trainer.data._loader(trainer.accelerator, trainer.data.train_ds, 2, trainer.data.seed, 0, 0)
    assert isinstance(loader, DataLoaderShard)
    batches = trainer.data.batches(trainer.accelerator, 2)
    videos, cond, independent = next(batches)
    batches.close()
    assert videos.shape == (2, 3, 3, 8, 8) and videos.device == trainer.device and cond is None and independent is None
    assert not trainer.accelerator.gradient_state.in_dataloader  # the endless loader was let go


# ---------------------------------------------------------------- tracking and validation


def test_tensorboard_receives_every_step_and_the_milestones(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = []
    trainer = make_trainer(
        tmp_path / "results", data=make_clips(5), train_num_steps=3, save_and_sample_every=2, validation_clips=1,
        log_with="tensorboard", logging_dir=tmp_path / "logs",
    )  # fmt: skip
    trainer.train(log_fn=logs.append)

    (run,) = (tmp_path / "logs" / "video-diffusion").glob("events.out.tfevents.*")
    events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0}).Reload()
    for name in ("loss", "lr", "grad_norm", "steps_per_s"):
        assert [event.step for event in events.Scalars(name)] == [1, 2, 3], name
    assert [event.value for event in events.Scalars("loss")] == pytest.approx(trainer.losses)
    assert all(event.value == pytest.approx(1e-4) for event in events.Scalars("lr"))
    assert all(event.value > 0 for event in events.Scalars("grad_norm") + events.Scalars("steps_per_s"))
    assert [event.step for event in events.Scalars("validation_loss")] == [3]  # the one milestone
    validation = [log["validation_loss"] for log in logs if "validation_loss" in log]
    assert [event.value for event in events.Scalars("validation_loss")] == pytest.approx(validation)
    assert [event.step for event in events.Images("samples")] == [3]
    assert events.Images("samples")[0].width == 3 * (8 + 4)  # the 3 frames of the 1 x 1 grid side by side


def test_validation_loss_is_fixed_and_held_out(tmp_path):
    logs = []
    trainer = make_trainer(tmp_path, data=make_clips(5), validation_clips=2, train_num_steps=3, save_and_sample_every=1)
    assert len(trainer.data.train_ds) == 3 and len(trainer.data.validation_ds) == 2
    trainer.train(log_fn=logs.append)
    assert [sorted(log) for log in logs] == [["loss"], ["loss", "sample", "validation_loss"], ["loss", "sample", "validation_loss"]]
    held_out = trainer.data.validation_batch()
    torch.testing.assert_close(held_out.videos, make_clips(5)[3:])  # the last clips, as they are
    again = validation_loss(trainer.ema_model, held_out.videos, seed=trainer.sample_seed)
    assert again == pytest.approx(logs[-1]["validation_loss"], rel=1e-6)
    assert validation_loss(trainer.ema_model, held_out.videos, seed=1) != pytest.approx(again, rel=1e-6)


def test_a_small_dataset_holds_nothing_out_by_default(tmp_path):
    assert make_trainer(tmp_path, data=make_clips(9)).data.validation_ds is None
    with pytest.raises(ValueError, match=r"validation_clips must be an integer in \[0, 5\)"):
        make_trainer(tmp_path / "b", validation_clips=5)


# ---------------------------------------------------------------- compiling


def test_compile_reaches_both_unets_with_a_persistent_cache(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(Unet3D, "compile", lambda self, **kwargs: calls.append((id(self), kwargs)))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    trainer = make_trainer(tmp_path / "a", compile="max-autotune")
    unets = {id(trainer.model.denoise_fn), id(trainer.ema_model.denoise_fn)}
    assert {unet for unet, _ in calls} == unets and all(kwargs == {"mode": "max-autotune"} for _, kwargs in calls)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache" / "video-diffusion-pytorch" / "inductor")
    calls.clear()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    make_trainer(tmp_path / "b", compile=True)
    assert [kwargs for _, kwargs in calls] == [{}, {}] and os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
    with pytest.raises(TypeError, match="compile must be False, True or a torch.compile mode"):
        make_trainer(tmp_path / "c", compile=3)


@pytest.mark.skipif(not os.environ.get("VIDEO_DIFFUSION_SLOW_TESTS"), reason="slow: set VIDEO_DIFFUSION_SLOW_TESTS=1")
def test_compiled_training_fills_the_inductor_cache(tmp_path, monkeypatch):
    """A real compile (about ten minutes on a busy 2-core CPU) trains and caches its kernels."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    trainer = make_trainer(tmp_path / "results", train_num_steps=2, gradient_accumulate_every=1, compile=True)
    trainer.train()
    assert all(torch.isfinite(torch.tensor(trainer.losses)))
    assert any((tmp_path / "inductor").rglob("*.py"))  # generated kernels, reused by the next run
