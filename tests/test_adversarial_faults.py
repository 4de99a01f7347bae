"""Faults: kills during saves, full disks, read-only folders and a loss that turns NaN.

Nothing a user saved is lost or half-written, temporary files left by a kill are removed
at the next start, and each fault ends in one OSError or ValueError naming the file.
Real full and read-only disks are small tmpfs mounts (where this process may mount one,
as root on Linux); the same faults are also simulated, so they are tested everywhere.
"""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tiny_training import FRAMES, SIZE, TINY, make_clips, make_diffusion, make_trainer, single_thread  # noqa: F401
from video_diffusion_pytorch import Unet3D
from video_diffusion_pytorch import files
from video_diffusion_pytorch.checkpoint import load_checkpoint, save_checkpoint
from video_diffusion_pytorch.cli import main
from video_diffusion_pytorch.data import video_tensor_to_gif
from video_diffusion_pytorch.files import atomic_write_text, remove_temporary_files
from video_diffusion_pytorch.trainer import NonFiniteLossError

ROOT = Path(__file__).resolve().parents[1]
LEFTOVER = ".model-1.pt.0123456789abcdef0123456789abcdef.tmp"


def temporaries(folder):
    return sorted(path.name for path in Path(folder).iterdir() if path.name.endswith(".tmp"))


@pytest.fixture
def small_disk(tmp_path):
    """A 1.5 MB tmpfs folder; the test is skipped where this process cannot mount one."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root on Linux")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def fill(folder):
    """Take all the free space of `folder`'s file system but a few bytes."""
    with open(folder / "ballast", "wb", buffering=0) as file:
        try:
            while True:
                file.write(b"\0" * 4096)
        except OSError:
            pass


# ---------------------------------------------------------------- kills during saves

WRITER = """
import sys, torch
from video_diffusion_pytorch.checkpoint import save_checkpoint
step = 0
while True:
    step += 1
    save_checkpoint({"step": step, "model": {"w": torch.full((3_000_000,), float(step))}, "ema": {}}, sys.argv[1])
"""


def kill_while_writing(code, target, folder):
    """Run `code` in a child writing `target` over and over; SIGKILL it while a temporary file exists."""
    for _ in range(5):
        child = subprocess.Popen([sys.executable, "-c", code, str(target)], env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + 60
        while not temporaries(folder) and time.monotonic() < deadline:
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
        child.wait()
        if temporaries(folder):
            return
    pytest.fail("no kill landed during a write")


def test_a_kill_during_a_checkpoint_save_loses_nothing_and_the_next_start_cleans_up(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    save_checkpoint({"step": 0, "model": {"w": torch.zeros(3_000_000)}, "ema": {}}, results / "model-1.pt")
    kill_while_writing(WRITER, results / "model-1.pt", results)

    checkpoint = load_checkpoint(results / "model-1.pt")  # whole: the last version written, or the first
    assert torch.equal(checkpoint["model"]["w"], torch.full((3_000_000,), float(checkpoint["step"])))
    assert len(temporaries(results)) == 1
    make_trainer(results)  # the next run starts here
    assert temporaries(results) == [] and (results / "model-1.pt").exists()


def test_a_kill_during_save_pretrained_keeps_a_loadable_folder(tmp_path):
    folder = tmp_path / "model"
    Unet3D(dim=32, dim_mults=(1, 2, 4)).save_pretrained(folder)
    code = """
import sys, torch
from video_diffusion_pytorch import Unet3D
model = Unet3D(dim=32, dim_mults=(1, 2, 4))
while True:
    model.save_pretrained(sys.argv[1])
"""
    kill_while_writing(code, folder, folder)
    assert Unet3D.from_pretrained(folder).config["dim"] == 32
    Unet3D(dim=32, dim_mults=(1, 2, 4)).save_pretrained(folder)
    assert temporaries(folder) == [] and sorted(path.name for path in folder.iterdir()) == ["config.json", "model.safetensors"]


def test_only_temporary_files_of_atomic_writes_are_removed(tmp_path):
    keep = ["model-1.pt", ".hidden.txt", "notes.tmp", ".x.1234.tmp", ".x.0123456789ABCDEF0123456789ABCDEF.tmp"]
    for name in [*keep, LEFTOVER, ".1.gif.ffffffffffffffffffffffffffffffff.tmp"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / ".dir.0123456789abcdef0123456789abcdef.tmp").mkdir()
    removed = remove_temporary_files(tmp_path)
    assert sorted(path.name for path in removed) == [".1.gif.ffffffffffffffffffffffffffffffff.tmp", LEFTOVER]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([*keep, ".dir.0123456789abcdef0123456789abcdef.tmp"])
    assert remove_temporary_files(tmp_path / "missing") == []


def test_the_trainer_resumes_after_a_kill_left_a_temporary_file(tmp_path):
    results = tmp_path / "results"
    make_trainer(results, train_num_steps=2, save_and_sample_every=2).train()
    (results / LEFTOVER).write_bytes(b"half a checkpoint")
    trainer = make_trainer(results, train_num_steps=3, save_and_sample_every=2)
    assert temporaries(results) == []
    trainer.load()
    trainer.train()
    assert trainer.step == 3 and load_checkpoint(results / "model-2.pt")["step"] == 3  # the last step, the next milestone
    assert load_checkpoint(results / "model-1.pt")["step"] == 2  # never replaced by another step's


# ---------------------------------------------------------------- full disks


def test_a_full_disk_ends_training_with_one_line_and_keeps_the_last_checkpoint(small_disk, tmp_path, capsys):
    clips = tmp_path / "clips"
    clips.mkdir()
    for index, clip in enumerate(make_clips(4)):
        video_tensor_to_gif(clip, clips / f"clip{index}.gif")
    tiny = ["--image-size", str(SIZE), "--frames", str(FRAMES), "--dim", "8", "--dim-mults", "1", "2",
            "--attn-heads", "2", "--attn-dim-head", "8", "--timesteps", "5"]  # fmt: skip
    fast = ["--batch-size", "2", "--grad-accum", "1", "--save-every", "1", "--sample-rows", "1", "--no-progress"]
    results = small_disk / "results"
    status = main(["train", str(clips), *tiny, *fast, "--steps", "20", "--results-folder", str(results)])

    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"No space left on device: cannot write {results}/model-" in err
    assert temporaries(results) == []
    milestones = sorted(results.glob("model-*.pt"))
    assert len(milestones) >= 1 and load_checkpoint(milestones[-1])["step"] >= 1


def test_a_full_disk_keeps_the_saved_model_folder(small_disk):
    folder = small_disk / "model"
    make_diffusion().save_pretrained(folder)
    before = {name: (folder / name).read_bytes() for name in ("config.json", "model.safetensors")}
    fill(small_disk)
    with pytest.raises(OSError, match=f"No space left on device: cannot write {folder}/model.safetensors") as error:
        make_diffusion(seed=1).save_pretrained(folder)
    assert error.value.errno == errno.ENOSPC
    assert {name: (folder / name).read_bytes() for name in before} == before and temporaries(folder) == []


def test_a_full_disk_while_writing_a_gif_is_one_clear_error(small_disk):
    fill(small_disk)
    with pytest.raises(OSError, match=r"No space left on device: cannot write .*big\.gif"):
        video_tensor_to_gif(torch.rand(3, 8, 64, 64), small_disk / "big.gif")
    assert sorted(path.name for path in small_disk.iterdir()) == ["ballast"]


def test_a_simulated_full_disk_is_reported_with_its_errno(tmp_path, monkeypatch):
    atomic_write_text(tmp_path / "notes.txt", "kept")

    def full_disk_write(self, text, encoding=None):
        Path.write_bytes(self, text[:2].encode())
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk_write)
    with pytest.raises(OSError, match=r"No space left on device: cannot write .*notes\.txt; notes\.txt is left as it was"):
        atomic_write_text(tmp_path / "notes.txt", "replaced")
    monkeypatch.undo()
    assert (tmp_path / "notes.txt").read_text() == "kept" and temporaries(tmp_path) == []


def test_a_writer_that_fails_without_an_errno_on_a_full_disk_is_reported_as_full(tmp_path, monkeypatch):
    save_checkpoint({"step": 1, "model": {}, "ema": {}}, tmp_path / "model-1.pt")

    def failing_save(obj, path):
        Path(path).write_bytes(b"PK\x03\x04")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 832 vs 726")

    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda folder: SimpleNamespace(free=0))  # as on a full disk
    with pytest.raises(OSError, match=r"No space left on device: cannot write .*model-1\.pt") as error:
        save_checkpoint({"step": 2, "model": {}, "ema": {}}, tmp_path / "model-1.pt")
    assert error.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "model-1.pt")["step"] == 1 and temporaries(tmp_path) == []


def test_other_write_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(AttributeError, match="Can't pickle local object"):
        save_checkpoint({"step": 1, "model": {}, "ema": {}, "bad": lambda: None}, tmp_path / "model-1.pt")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- read-only folders


def test_a_read_only_disk_is_one_clear_error(small_disk):
    save_checkpoint({"step": 1, "model": {}, "ema": {}}, small_disk / "model-1.pt")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    for write in (
        lambda: save_checkpoint({"step": 2, "model": {}, "ema": {}}, small_disk / "model-1.pt"),
        lambda: video_tensor_to_gif(make_clips(1)[0], small_disk / "a.gif"),
        lambda: make_diffusion().save_pretrained(small_disk),
    ):
        with pytest.raises(OSError, match=f"cannot write {small_disk}/.*: the folder {small_disk} is read-only") as error:
            write()
        assert error.value.errno == errno.EACCES
    assert load_checkpoint(small_disk / "model-1.pt")["step"] == 1


def test_a_simulated_read_only_folder_is_one_clear_error(tmp_path, monkeypatch):
    def refused(self, text, encoding=None):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_text", refused)
    with pytest.raises(OSError, match=r"cannot write .*notes\.txt: the folder .* is read-only or not writable"):
        atomic_write_text(tmp_path / "notes.txt", "text")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- a loss that turns NaN


def test_a_nan_loss_stops_training_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path / "results", train_num_steps=6, save_and_sample_every=2)

    def poison(log):  # after step index 2 (milestone 1 written), the weights turn NaN
        if len(trainer.losses) == 3:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match=r"the training loss is nan at step 3: .*intact"):
        trainer.train(log_fn=poison)
    assert trainer.step == 3
    assert sorted(path.name for path in (tmp_path / "results").glob("model-*.pt")) == ["model-1.pt"]
    checkpoint = load_checkpoint(tmp_path / "results" / "model-1.pt")
    assert all(torch.isfinite(value).all() for value in checkpoint["model"].values() if value.is_floating_point())


def test_a_diverging_run_from_the_command_line_is_one_line(tmp_path, capsys, monkeypatch):
    clips = tmp_path / "clips"
    clips.mkdir()
    for index, clip in enumerate(make_clips(2)):
        video_tensor_to_gif(clip, clips / f"clip{index}.gif")
    monkeypatch.setattr(torch.nn.functional, "l1_loss", lambda *args, **kwargs: torch.tensor(float("inf"), requires_grad=True))
    status = main(["train", str(clips), "--image-size", str(SIZE), "--frames", str(FRAMES), "--dim", "8",
                   "--dim-mults", "1", "2", "--attn-heads", "2", "--attn-dim-head", "8", "--timesteps", "5",
                   "--batch-size", "2", "--grad-accum", "1", "--steps", "2", "--no-progress",
                   "--results-folder", str(tmp_path / "results")])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "the training loss is inf at step 0" in err
    assert not list((tmp_path / "results").glob("model-*.pt"))
