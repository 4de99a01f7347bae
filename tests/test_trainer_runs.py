"""Training runs that survive restarts: settings saved and restored, milestones never
overwritten, one run per results folder, and a NaN loss stopping the run before it writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny_training import FRAMES, SIZE, make_clips, make_diffusion, make_trainer, single_thread  # noqa: F401
from video_diffusion_pytorch import checkpoint as checkpoint_module
from video_diffusion_pytorch.checkpoint import latest_milestone, list_milestones
from video_diffusion_pytorch.run_lock import LOCK_NAME, RunLockedError
from video_diffusion_pytorch.trainer import NonFiniteLossError


def saved_step(folder, milestone):
    return torch.load(folder / f"model-{milestone}.pt", weights_only=True)["step"]


# ---------------------------------------------------------------- run settings


def test_settings_are_saved_in_each_checkpoint_and_run_json(tmp_path):
    make_trainer(tmp_path, train_num_steps=2, train_lr=3e-4, ema_decay=0.9, cond_drop_prob=0.0).train()
    run = torch.load(tmp_path / "model-1.pt", weights_only=True)["run"]
    assert run["train_lr"] == 3e-4 and run["ema_decay"] == 0.9 and run["train_batch_size"] == 2
    assert run["gradient_accumulate_every"] == 2 and run["seed"] == 0 and run["short_clips"] == "pad"
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["run"] == run
    assert record["latest"] == {"milestone": 1, "step": 2}


def test_load_restores_the_settings_and_explicit_ones_win(tmp_path, caplog):
    make_trainer(tmp_path, train_num_steps=2, train_batch_size=3, train_lr=3e-4, update_ema_every=4).train()
    # settings left at their defaults (update_ema_every) are taken from the checkpoint,
    # but one given explicitly (the learning rate here) wins and is reported
    resumed = make_trainer(tmp_path, train_num_steps=4, train_batch_size=32, train_lr=1e-3, update_ema_every=10)
    resumed.explicit_settings -= {"train_batch_size"}  # as if left at its default
    with caplog.at_level("INFO", logger="video_diffusion_pytorch.run_state"):
        report = resumed.load(-1)
    assert resumed.train_batch_size == 3 and resumed.update_ema_every == 4
    assert resumed.train_lr == 1e-3 and resumed.opt.param_groups[0]["lr"] == 1e-3
    assert "train_lr: 0.0003 -> 0.001" in report and "train_lr: 0.0003 -> 0.001" in caplog.text
    resumed.train()
    assert resumed.data.position == 2 * 2 * 3 + 2 * 2 * 3  # both runs drew batches of 3
    assert torch.load(tmp_path / "model-2.pt", weights_only=True)["run"]["train_lr"] == 1e-3


def test_restore_keeps_only_the_named_settings(tmp_path):
    make_trainer(tmp_path, train_num_steps=1, gradient_accumulate_every=1, num_sample_rows=2).train()
    resumed = make_trainer(tmp_path, train_num_steps=3, gradient_accumulate_every=3)
    checkpoint = checkpoint_module.load_checkpoint(tmp_path / "model-1.pt")
    report = resumed.restore(checkpoint, keep={"train_num_steps"})
    assert resumed.gradient_accumulate_every == 1 and resumed.num_sample_rows == 2 and resumed.train_num_steps == 3
    assert report == ["train_num_steps: 1 -> 3"]


# ---------------------------------------------------------------- milestones


def test_no_checkpoint_is_overwritten_when_save_every_changes(tmp_path):
    make_trainer(tmp_path, train_num_steps=6, save_and_sample_every=1, gradient_accumulate_every=1).train()
    assert list_milestones(tmp_path) == [1, 2, 3, 4, 5]  # steps 2 to 6 (the original skips step 0)
    before = {m: (tmp_path / f"model-{m}.pt").read_bytes() for m in list_milestones(tmp_path)}

    resumed = make_trainer(tmp_path, train_num_steps=9, save_and_sample_every=3, gradient_accumulate_every=1)
    resumed.load(-1)
    assert resumed.step == 6
    resumed.train()
    assert list_milestones(tmp_path) == [1, 2, 3, 4, 5, 6, 7]
    assert all((tmp_path / f"model-{m}.pt").read_bytes() == data for m, data in before.items())
    assert [saved_step(tmp_path, m) for m in (6, 7)] == [7, 9]  # step index 6 (6 % 3 == 0) and the last
    assert (tmp_path / "7.gif").exists() and latest_milestone(tmp_path) == 7


def test_latest_is_the_latest_step_not_the_highest_number(tmp_path):
    trainer = make_trainer(tmp_path, train_num_steps=1)
    trainer.train()  # model-1.pt at step 1
    trainer.step = 9
    trainer.save(0)  # an explicit, lower number holding a later step
    assert latest_milestone(tmp_path) == 0
    resumed = make_trainer(tmp_path, train_num_steps=10)
    resumed.load(-1)
    assert resumed.step == 9


def test_an_unreadable_latest_checkpoint_is_passed_over(tmp_path, caplog):
    make_trainer(tmp_path, train_num_steps=1).train()
    (tmp_path / "model-2.pt").write_bytes(b"cut short")
    assert latest_milestone(tmp_path) == 1
    assert "passing over" in caplog.text and "model-2.pt" in caplog.text


# ---------------------------------------------------------------- one run per folder


def test_a_second_trainer_on_the_folder_stops_at_once(tmp_path):
    first = make_trainer(tmp_path, train_num_steps=1)
    owner = json.loads((tmp_path / LOCK_NAME).read_text())
    assert owner["pid"] == os.getpid()
    with pytest.raises(RunLockedError, match="another Trainer in this process"):
        make_trainer(tmp_path, train_num_steps=1)
    first.train()  # the lock is given back when training ends
    assert not (tmp_path / LOCK_NAME).exists()
    make_trainer(tmp_path, train_num_steps=1)


def test_a_lock_of_a_live_process_is_kept_and_a_stale_one_taken_over(tmp_path):
    import socket

    tmp_path.mkdir(exist_ok=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid}))
        with pytest.raises(RunLockedError, match=f"in use by another training run \\(process {sleeper.pid}\\)"):
            make_trainer(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    make_trainer(tmp_path).train()  # the owner is dead: its lock is stale
    assert list_milestones(tmp_path) == [1]


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    with pytest.raises(RunLockedError, match="process 1 on elsewhere.*delete"):
        make_trainer(tmp_path)


# ---------------------------------------------------------------- faults


class PoisonedClips(torch.utils.data.Dataset):
    """Clips that turn to NaN once `poisoned` is set."""

    def __init__(self):
        self.videos, self.poisoned = make_clips(4), False

    def __len__(self):
        return len(self.videos)

    def __getitem__(self, index):
        return self.videos[index] * float("nan") if self.poisoned else self.videos[index]


def test_a_nan_loss_stops_the_run_before_anything_is_written(tmp_path):
    data = PoisonedClips()
    trainer = make_trainer(tmp_path, data=data, train_num_steps=3, save_and_sample_every=1, gradient_accumulate_every=1)
    trainer.train()
    good = (tmp_path / "model-2.pt").read_bytes()
    data.poisoned = True
    trainer.train_num_steps = 6
    with pytest.raises(ValueError, match=r"batch at stream position 6: videos holds \d+ NaN"):
        trainer.train()  # bad values are caught in the data, on the CPU
    data.poisoned = False
    assert trainer.data.position == 6  # the refused batch was not counted
    weight = next(trainer.model.parameters())
    with torch.no_grad():
        weight.fill_(float("nan"))  # and a loss that turns NaN for another reason stops the run at its step
    with pytest.raises(NonFiniteLossError, match=r"the training loss is nan at step 3: .*intact; the last is model-2.pt"):
        trainer.train()
    assert list_milestones(tmp_path) == [1, 2]
    assert (tmp_path / "model-2.pt").read_bytes() == good
    assert trainer.step == 3 and len(trainer.losses) == 3
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, train_num_steps=2, save_and_sample_every=1, gradient_accumulate_every=1)
    trainer.train()
    files = sorted(os.listdir(tmp_path))

    def full_disk(obj, path):
        Path(path).write_bytes(b"")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    trainer.train_num_steps = 3
    with pytest.raises(OSError, match=r"No space left on device: cannot write .*model-2.pt; model-2.pt is left as it was") as error:
        trainer.train()
    assert "\n" not in str(error.value)
    assert sorted(os.listdir(tmp_path)) == files  # no zero-byte temporary file, no lock


def test_a_trainer_that_fails_to_start_leaves_its_folder_free(tmp_path):
    with pytest.raises(ValueError, match="empty") as failure:
        make_trainer(tmp_path, data=torch.empty(0, 3, FRAMES, SIZE, SIZE))
    assert failure.traceback  # the half-built Trainer is still referenced, as in a debugger
    make_trainer(tmp_path)  # the same folder, in the same process, at once


def test_a_resumed_run_samples_as_many_conditions_as_its_restored_grid(tmp_path):
    data = torch.utils.data.TensorDataset(make_clips(3), torch.randn(3, 4))
    options = dict(train_batch_size=3, gradient_accumulate_every=1, save_and_sample_every=1)
    make_trainer(tmp_path, make_diffusion(cond_dim=4), data, train_num_steps=1, num_sample_rows=5, **options).train()
    resumed = make_trainer(tmp_path, make_diffusion(cond_dim=4), data, train_num_steps=2, num_sample_rows=4, **options)
    resumed.load(-1)
    assert resumed.num_sample_rows == 5  # restored from the run, not given explicitly
    resumed.train()  # its milestone samples 25 videos, one condition each
    assert (tmp_path / "2.gif").is_file()
