"""The command line of a training run and of its results: resume with the run's settings,
one run per folder, defaults that fit the machine and show in --help, one option name
across commands, and sampling, frame conditioning and export from a results folder."""

import json
import re
import socket
import subprocess
import sys

import pytest
import torch
from PIL import Image

from tiny_training import FRAMES, SIZE, TINY_MODEL_OPTIONS, make_clips, single_thread, write_clip_folder  # noqa: F401
from video_diffusion_pytorch import GaussianDiffusion
from video_diffusion_pytorch.cli import build_parser, main
from video_diffusion_pytorch.cli import train as train_command
from video_diffusion_pytorch.data import gif_to_tensor
from video_diffusion_pytorch.run_lock import LOCK_NAME

TINY_MODEL = TINY_MODEL_OPTIONS


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return write_clip_folder(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module")
def results(clip_folder, tmp_path_factory):
    """A tiny trained run: model-1.pt at step 1, model-2.pt at step 2."""
    folder = tmp_path_factory.mktemp("results")
    command = ["train", str(clip_folder), *TINY_MODEL, "--steps", "2", "--save-every", "1", "--sample-rows", "1"]
    assert main([*command, "--results-folder", str(folder), "--no-progress", "--seed", "0"]) == 0
    return folder


def gif_frames(path):
    return gif_to_tensor(path)  # (c, f, h, w)


# ---------------------------------------------------------------- train and resume


def test_resume_takes_the_runs_settings_and_reports_explicit_ones(clip_folder, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "run"
    first = ["train", str(clip_folder), *TINY_MODEL, "--results-folder", str(folder), "--no-progress"]
    assert main([*first, "--steps", "1", "--batch-size", "3", "--grad-accum", "1", "--lr", "3e-4", "--sample-rows", "1"]) == 0
    loads = []
    load = train_command.load_checkpoint
    monkeypatch.setattr(train_command, "load_checkpoint", lambda path: loads.append(path) or load(path))
    capsys.readouterr()

    resume = ["train", str(clip_folder), "--results-folder", str(folder), "--no-progress", "--resume"]
    assert main([*resume, "--steps", "2", "--lr", "1e-3"]) == 0
    out = capsys.readouterr().out
    assert "train_lr: 0.0003 -> 0.001" in out and "train_num_steps: 1 -> 2" in out
    assert "train_batch_size" not in out  # taken from the run, not the CLI default
    assert len(loads) == 1  # the checkpoint is read once
    run = torch.load(folder / "model-2.pt", weights_only=True)["run"]
    assert (run["train_batch_size"], run["gradient_accumulate_every"], run["train_lr"]) == (3, 1, 1e-3)
    assert run["num_sample_rows"] == 1
    assert json.loads((folder / "run.json").read_text())["latest"] == {"milestone": 2, "step": 2}


def test_a_second_run_on_a_locked_folder_is_one_line(clip_folder, tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (folder / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid}))
        assert main(["train", str(clip_folder), *TINY_MODEL, "--results-folder", str(folder), "--no-progress"]) == 2
    finally:
        sleeper.kill()
        sleeper.wait()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"in use by another training run (process {sleeper.pid})" in err


def test_a_run_that_cannot_fit_is_refused_before_any_work(clip_folder, tmp_path, capsys, monkeypatch):
    from video_diffusion_pytorch import memory

    monkeypatch.setattr(memory, "available_memory", lambda device: 2**20)  # 1 MiB free
    monkeypatch.setattr(train_command, "available_memory", memory.available_memory)
    command = ["train", str(clip_folder), *TINY_MODEL, "--results-folder", str(tmp_path / "run"), "--no-progress"]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(r"needs about [\d.]+ GiB \(estimated\), but 0\.0 GiB of cpu memory", err)
    assert "--batch-size" in err and not (tmp_path / "run").exists()
    assert main([*command, "--no-memory-check", "--steps", "1"]) == 0


def test_the_memory_estimate_grows_with_the_batch():
    from tiny_training import make_diffusion
    from video_diffusion_pytorch.memory import training_step_memory

    diffusion = make_diffusion()
    two, four, eight = (training_step_memory(diffusion, batch) for batch in (2, 4, 8))
    weights = sum(p.numel() * 4 for p in diffusion.parameters())
    assert two > 5 * weights  # weights, gradients, Adam's moments, the EMA copy, and activations
    assert eight - four == pytest.approx(2 * (four - two), rel=0.01)  # activations grow linearly with the batch
    assert torch.isfinite(diffusion(make_clips(2)))  # the model itself is left as it was: it still trains


def test_tracking_from_the_command_line(clip_folder, tmp_path):
    command = ["train", str(clip_folder), *TINY_MODEL, "--steps", "1", "--log-with", "tensorboard", "--no-progress"]
    assert main([*command, "--results-folder", str(tmp_path / "run")]) == 0
    assert list((tmp_path / "run" / "logs" / "video-diffusion").glob("events.out.tfevents.*"))
    assert torch.load(tmp_path / "run" / "model-1.pt", weights_only=True)["run"]["log_with"] == ["tensorboard"]


# ---------------------------------------------------------------- options


def test_defaults_fit_the_machine(monkeypatch):
    args = build_parser().parse_args(["train", "clips"])
    assert (args.image_size, args.dim, args.train_batch_size, args.gradient_accumulate_every) == (16, 16, 4, 1)
    assert args.short_clips == "skip" and args.train_lr == 1e-4 and args.timesteps == 1000  # the library's
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = build_parser().parse_args(["train", "clips"])
    assert (args.image_size, args.dim, args.train_batch_size, args.gradient_accumulate_every) == (64, 64, 32, 2)
    assert args.dim_mults == [1, 2, 4, 8] and args.num_frames == 16


@pytest.mark.parametrize("command", ["train", "demo", "sample", "extend", "interpolate", "export"])
def test_help_shows_every_default(command, capsys):
    assert main([command, "--help"]) == 0
    # the help's entries: an option's line and the indented lines of its description
    entries = re.split(r"\n(?=  -)|\n(?=\S)", capsys.readouterr().out.split("options:", 1)[1])
    options = build_parser()._subparsers._group_actions[0].choices[command]._actions
    for action in options:
        if action.option_strings and action.dest != "help":
            (entry,) = [e for e in entries if re.match(rf"\s*{action.option_strings[0]}[\s,]", e)]
            assert "(default:" in entry, entry


@pytest.mark.parametrize("command", [["train", "x"], ["demo"], ["extend", "x.gif"]])
def test_frames_is_one_name_everywhere(command):
    for flag in ("--frames", "--num-frames"):
        assert build_parser().parse_args([*command, flag, "7"]).num_frames == 7


# ---------------------------------------------------------------- sampling and frame conditioning


def test_sample_a_results_folder_into_separate_upscaled_files(results, tmp_path):
    out = tmp_path / "s.gif"
    assert main(["sample", str(results), "--num", "2", "--separate", "--upscale", "2", "--out", str(out), "--no-progress"]) == 0
    for index in range(2):
        gif = Image.open(tmp_path / f"s-{index}.gif")
        assert gif.size == (2 * SIZE, 2 * SIZE) and gif.n_frames == FRAMES
    assert not out.exists()


def test_sample_with_first_frames(results, clip_folder, tmp_path, capsys):
    clip = clip_folder / "clip0.gif"
    out = tmp_path / "p.gif"
    assert main(["sample", str(results), "--first-frames", str(clip), "--num", "1", "--separate", "--out", str(out), "--no-progress"]) == 0
    assert "the first 2 frames" in capsys.readouterr().out  # a 3-frame model generates at least one
    video = gif_frames(tmp_path / "p-0.gif")
    torch.testing.assert_close(video[:, :2], gif_frames(clip)[:, :2], atol=2 / 255, rtol=0)


def test_extend_and_interpolate_a_clip(results, clip_folder, tmp_path):
    clip = clip_folder / "clip1.gif"
    out = tmp_path / "e.gif"
    assert main(["extend", str(clip), "--model", str(results), "--frames", "5", "--out", str(out), "--separate", "--no-progress"]) == 0
    extended = gif_frames(tmp_path / "e-0.gif")
    assert extended.shape[1] == 5
    torch.testing.assert_close(extended[:, :3], gif_frames(clip), atol=2 / 255, rtol=0)

    out = tmp_path / "i.gif"
    assert main(["interpolate", str(clip), "--model", str(results), "--factor", "2", "--out", str(out), "--separate", "--no-progress"]) == 0
    interpolated = gif_frames(tmp_path / "i-0.gif")
    assert interpolated.shape[1] == 5  # (3 - 1) * 2 + 1
    torch.testing.assert_close(interpolated[:, ::2], gif_frames(clip), atol=2 / 255, rtol=0)


def test_extend_needs_more_frames_than_the_clip(results, clip_folder, tmp_path, capsys):
    command = ["extend", str(clip_folder / "clip1.gif"), "--model", str(results), "--frames", "3", "--no-progress"]
    assert main([*command, "--out", str(tmp_path / "e.gif")]) == 2
    assert re.search("--frames must exceed the clip's 3 frames", capsys.readouterr().err)


# ---------------------------------------------------------------- export


def test_export_writes_a_pretrained_folder(results, tmp_path):
    assert main(["export", str(results / "model-1.pt"), str(tmp_path / "model")]) == 0
    model = GaussianDiffusion.from_pretrained(tmp_path / "model")
    ema = torch.load(results / "model-1.pt", weights_only=True)["ema"]
    assert all(torch.equal(value, ema[name]) for name, value in model.state_dict().items())


def test_export_pushes_to_the_hub(results, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: calls.append(("create", repo_id, kwargs)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kwargs: calls.append(("upload", kwargs)) or "commit-url")
    assert main(["export", str(results), str(tmp_path / "model"), "--push-to-hub", "me/tiny", "--private"]) == 0
    assert calls[0] == ("create", "me/tiny", {"private": True, "exist_ok": True})
    assert calls[1][1]["repo_id"] == "me/tiny" and calls[1][1]["folder_path"] == tmp_path / "model"
    assert {p.name for p in (tmp_path / "model").iterdir()} == {"config.json", "model.safetensors"}
    assert "pushed to me/tiny: commit-url" in capsys.readouterr().out
