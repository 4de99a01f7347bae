"""The `video-diffusion` command: train, resume and sample from the written checkpoint,
the demo's code path, and clear errors (exit status 2, no traceback) for bad input."""

import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from tiny_training import FRAMES, SIZE, make_clips, make_diffusion, single_thread  # noqa: F401
from video_diffusion_pytorch import RECTIFIED_FLOW
from video_diffusion_pytorch.cli import main
from video_diffusion_pytorch.data import video_tensor_to_gif
from video_diffusion_pytorch.hub import build_model
from video_diffusion_pytorch.unet import Unet3D

ORIGINAL_CHECKPOINT = Path(__file__).parent / "fixtures" / "original_trainer_checkpoint.pt"

TINY_MODEL = [
    "--image-size", str(SIZE), "--frames", str(FRAMES), "--dim", "8", "--dim-mults", "1", "2",
    "--attn-heads", "2", "--attn-dim-head", "8", "--timesteps", "5",
]  # fmt: skip
FAST = ["--batch-size", "2", "--grad-accum", "1", "--save-every", "2", "--sample-rows", "1", "--no-progress", "--seed", "0"]


@pytest.fixture
def clip_folder(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    for index, clip in enumerate(make_clips(4)):
        video_tensor_to_gif(clip, folder / f"clip{index}.gif")
    return folder


def train(folder, results, *extra):
    return main(["train", str(folder), *TINY_MODEL, *FAST, "--results-folder", str(results), *extra])


def test_train_resume_and_sample(clip_folder, tmp_path, capsys):
    results = tmp_path / "results"
    assert train(clip_folder, results, "--steps", "4") == 0  # milestone 1 at step 2, milestone 2 at the end
    assert sorted(p.name for p in results.iterdir()) == ["1.gif", "2.gif", "loss.png", "model-1.pt", "model-2.pt", "run.json"]

    assert train(clip_folder, results, "--steps", "3") == 2  # nothing is overwritten by accident
    assert "already holds checkpoints" in capsys.readouterr().err
    assert train(clip_folder, results, "--steps", "5", "--resume") == 0
    # the resumed run's milestone is numbered on: no checkpoint is replaced by another step's
    assert torch.load(results / "model-2.pt", weights_only=True)["step"] == 4
    assert torch.load(results / "model-3.pt", weights_only=True)["step"] == 5

    out = tmp_path / "out" / "samples.gif"
    assert main(["sample", str(results / "model-3.pt"), "--num", "2", "--out", str(out), "--no-progress"]) == 0
    gif = Image.open(out)
    assert gif.size == (SIZE + 4, 2 * (SIZE + 4)) and gif.n_frames == FRAMES  # 2 rows of 1

    checkpoint = torch.load(results / "model-3.pt", weights_only=True)
    pretrained = tmp_path / "pretrained"
    model = build_model(checkpoint["config"])
    model.load_state_dict(checkpoint["ema"])
    model.save_pretrained(pretrained)
    mp4 = tmp_path / "samples.mp4"
    assert main(["sample", str(pretrained), "--num", "1", "--out", str(mp4), "--no-progress"]) == 0
    assert mp4.stat().st_size > 0


def test_text_conditioned_train_and_sample(clip_folder, tmp_path, tiny_bert, capsys):
    for index, caption in enumerate(["red square moving left", "circle moving right"] * 2):
        (clip_folder / f"clip{index}.txt").write_text(caption)
    results = tmp_path / "results"
    assert train(clip_folder, results, "--steps", "1", "--cond-drop-prob", "0.5") == 0
    assert (results / "1.txt").read_text().splitlines() == ["red square moving left"]
    checkpoint = results / "model-1.pt"

    assert main(["sample", str(checkpoint), "--out", str(tmp_path / "a.gif"), "--no-progress"]) == 2
    assert "text-conditioned: pass --text" in capsys.readouterr().err
    command = ["sample", str(checkpoint), "--text", "a whale", "circle", "--num", "1", "--cond-scale", "2"]
    assert main([*command, "--out", str(tmp_path / "b.gif"), "--no-progress"]) == 0
    assert "a whale" in capsys.readouterr().out
    assert Image.open(tmp_path / "b.gif").size == (SIZE + 4, 2 * (SIZE + 4))


def test_objective_and_fast_sampling_options(clip_folder, tmp_path, monkeypatch):
    results = tmp_path / "results"
    options = ["--objective", "pred_v", "--beta-schedule", "sigmoid", "--min-snr", "--sampling-steps", "2"]
    assert train(clip_folder, results, "--steps", "1", *options) == 0
    config = torch.load(results / "model-1.pt", weights_only=True)["config"]["config"]
    assert (config["objective"], config["beta_schedule"], config["min_snr_loss_weight"]) == ("pred_v", "sigmoid", True)
    assert config["sampling_timesteps"] == 2

    passes = []  # network passes per sampled video, counted at the U-net
    denoise = Unet3D._denoise
    monkeypatch.setattr(Unet3D, "_denoise", lambda self, x, *args, **kwargs: passes.append(len(x)) or denoise(self, x, *args, **kwargs))
    sample = ["sample", str(results / "model-1.pt"), "--num", "1", "--no-progress"]
    assert main([*sample, "--out", str(tmp_path / "a.gif")]) == 0
    assert passes == [1, 1]  # the model's own setting: 2 DDIM steps
    passes.clear()
    assert main([*sample, "--sampling-steps", "4", "--eta", "1", "--out", str(tmp_path / "b.gif")]) == 0
    assert passes == [1] * 4


def test_rectified_flow_option_trains_the_librarys_recipe(clip_folder, tmp_path, capsys):
    results = tmp_path / "results"
    assert train(clip_folder, results, "--steps", "1", "--rectified-flow", "--sampling-steps", "2") == 0
    config = torch.load(results / "model-1.pt", weights_only=True)["config"]["config"]
    assert {key: config[key] for key in RECTIFIED_FLOW} == RECTIFIED_FLOW
    assert main(["sample", str(results / "model-1.pt"), "--num", "1", "--no-progress", "--out", str(tmp_path / "a.gif")]) == 0
    capsys.readouterr()
    assert train(clip_folder, tmp_path / "other", "--steps", "1", "--rectified-flow", "--loss-type", "l1") == 2
    assert "--rectified-flow means --beta-schedule rectified_flow" in capsys.readouterr().err
    assert not (tmp_path / "other" / "model-1.pt").exists()


def test_demo_code_path(tmp_path, capsys):
    command = ["demo", "--steps", "2", "--image-size", "8", "--num-frames", "3", "--timesteps", "3", "--dim", "8"]
    assert main([*command, "--results-folder", str(tmp_path), "--no-progress"]) == 0
    assert {"samples.gif", "frames.png", "loss.png", "model-1.pt", "1.gif"} <= {p.name for p in tmp_path.iterdir()}
    assert Image.open(tmp_path / "samples.gif").size == (3 * 12 * 8, 3 * 12 * 8)  # 3 x 3 tiles of 8 + 4 px, 8x
    assert Image.open(tmp_path / "frames.png").size == (3 * 12 * 8, 9 * 12 * 8)  # 9 samples, 3 frames each
    assert str(tmp_path) in capsys.readouterr().out


def test_original_checkpoint_cannot_be_sampled_without_a_description(tmp_path, capsys):
    assert main(["sample", str(ORIGINAL_CHECKPOINT), "--out", str(tmp_path / "x.gif")]) == 2
    assert "does not describe its model" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command, message",
    [
        (["train", "{tmp}/missing"], "does not exist"),
        (["train", "{tmp}/empty"], "no usable clip|no supported|supported"),
        (["train", "{tmp}/clips", "--resume", "--results-folder", "{tmp}/none"], "no checkpoint"),
        (["train", "{tmp}/clips", "--image-size", "10"], "multiple of"),
        (["sample", "{tmp}/missing.pt"], "no checkpoint at"),
        (["sample", "{tmp}/garbage.pt"], "not a readable checkpoint"),
        (["sample", "{tmp}/unconditional", "--text", "a whale"], "not text-conditioned"),
        (["sample", "{tmp}/unconditional", "--cond-scale", "3"], "unconditional"),
        (["sample", "{tmp}/unconditional", "--out", "{tmp}/x.png"], "--out must end in"),
        (["sample", "{tmp}/clips"], "no config.json"),
        (["sample", "{tmp}/unconditional", "--eta", "0.5"], "needs --sampling-steps"),
        (["sample", "{tmp}/unconditional", "--sampling-steps", "11"], r"sampling_timesteps must be in \[1, timesteps=10\]"),
    ],
)
def test_bad_input_exits_with_status_2(tmp_path, clip_folder, capsys, command, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    make_diffusion().save_pretrained(tmp_path / "unconditional")
    argv = [part.replace("{tmp}", str(tmp_path)) for part in command]
    assert main(argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("video-diffusion") and re.search(message, err), err


def test_usage_errors_and_help(capsys):
    assert main([]) == 2
    assert main(["train"]) == 2
    assert main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
