"""Bad command lines: one line on stderr and exit status 2, before any training or sampling
(nothing written), naming the option, what was expected and what came."""

import json
import re

import pytest
import torch

from tiny_training import TINY_MODEL_OPTIONS, make_diffusion, single_thread, write_clip_folder  # noqa: F401
from video_diffusion_pytorch.cli import main

TINY_MODEL = TINY_MODEL_OPTIONS
FAST = ["--batch-size", "2", "--grad-accum", "1", "--steps", "1", "--sample-rows", "1", "--no-progress"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_clip_folder(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    make_diffusion().save_pretrained(folder)
    return folder


def one_line_error(capsys, argv, message):
    """Run `argv`: exit status 2 and a single stderr line matching `message`."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(message, err), err
    return err


@pytest.mark.parametrize(
    "options, message",
    [
        (["--dim", "0"], r"train: error: dim must be at least 1, got 0"),
        (["--dim-mults", "1", "0"], r"dim_mults\[1\] must be at least 1, got 0"),
        (["--attn-heads", "0"], r"attn_heads must be at least 1, got 0"),
        (["--attn-dim-head", "-4"], r"attn_dim_head must be at least 1, got -4"),
        (["--timesteps", "0"], r"timesteps must be at least 1, got 0"),
        (["--image-size", "0"], r"image_size must be at least 1, got 0"),
        (["--prob-focus-present", "7"], r"prob_focus_present must be a finite number in \[0, 1\], got 7\.0"),
        (["--prob-focus-present", "nan"], r"prob_focus_present must be a finite number in \[0, 1\], got nan"),
        (["--cond-scale", "3"], r"cond_scale=3\.0 asks for classifier-free guidance, but the denoiser is unconditional"),
        (["--cond-scale", "nan"], r"cond_scale must be a finite number, got nan"),
    ],
)
def test_bad_training_options_stop_before_any_step(clips, tmp_path, capsys, options, message):
    results = tmp_path / "results"
    one_line_error(capsys, ["train", str(clips), *TINY_MODEL, *FAST, *options, "--results-folder", str(results)], message)
    assert not results.exists() or not list(results.glob("model-*.pt"))


def test_a_folder_of_only_damaged_clips_is_one_line(tmp_path, capsys):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.gif").write_bytes(b"GIF89a" + bytes(20))
    (tmp_path / "clips" / "b.gif").write_bytes(b"")
    assert main(["train", str(tmp_path / "clips"), *TINY_MODEL, *FAST, "--results-folder", str(tmp_path / "r")]) == 2
    first, *listing = capsys.readouterr().err.splitlines()  # the error, then one line per file left out
    assert re.fullmatch(r"video-diffusion train: error: no usable clips in .*; all 2 found were left out:", first)
    assert [line.split(": ")[0].strip().rsplit("/", 1)[-1] for line in listing[:2]] == ["a.gif", "b.gif"]


@pytest.mark.parametrize(
    "device, message",
    [
        ("banana", r"--device 'banana' is not a device: expected cpu, cuda, cuda:N or mps"),
        ("cuda:99", r"--device cuda:99: this machine has (no cuda device|\d+ cuda device\(s\)); use --device cpu"),
        ("mps:3", r"--device mps:3: this machine has (no mps device|1 mps device\(s\)); use --device cpu"),
    ],
)
def test_a_device_that_is_not_there_is_one_line(model, tmp_path, capsys, device, message):
    one_line_error(capsys, ["sample", str(model), "--device", device, "--out", str(tmp_path / "s.gif"), "--no-progress"], message)
    assert not (tmp_path / "s.gif").exists()


def test_cuda_without_a_gpu_is_one_line(model, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    one_line_error(capsys, ["sample", str(model), "--device", "cuda", "--out", str(tmp_path / "s.gif")], r"--device cuda: this machine has no cuda device")


@pytest.mark.parametrize(
    "options, message",
    [
        (["--fps", "0"], r"sample: error: fps must be positive, got 0"),
        (["--cond-scale", "nan"], r"cond_scale must be a finite number, got nan"),
        (["--cond-scale", "2"], r"cond_scale=2\.0 asks for classifier-free guidance"),
        (["--num", "0"], r"--num must be at least 1, got 0"),
        (["--sampling-steps", "0"], r"sampling_timesteps must be in \[1, timesteps=10\], got 0"),
    ],
)
def test_bad_sampling_options_write_nothing(model, tmp_path, capsys, options, message):
    one_line_error(capsys, ["sample", str(model), *options, "--out", str(tmp_path / "s.gif"), "--no-progress"], message)
    assert not (tmp_path / "s.gif").exists()


def test_a_model_folder_of_a_newer_format_is_one_line(model, tmp_path, capsys):
    folder = tmp_path / "newer"
    make_diffusion().save_pretrained(folder)
    description = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**description, "format_version": 5}))
    one_line_error(capsys, ["sample", str(folder), "--out", str(tmp_path / "s.gif")], r"format_version 5.*upgrade the package")


def test_an_empty_checkpoint_is_one_line_that_never_suggests_unsafe_loading(tmp_path, capsys):
    (tmp_path / "model-1.pt").write_bytes(b"")
    err = one_line_error(capsys, ["sample", str(tmp_path / "model-1.pt"), "--out", str(tmp_path / "s.gif")], r"the file is empty \(0 bytes\)")
    assert "weights_only" not in err


def test_a_prompt_longer_than_bert_takes_is_cut_and_sampled(tiny_bert, tmp_path, capsys):
    make_diffusion(use_bert_text_cond=True).save_pretrained(tmp_path / "text")
    argv = ["sample", str(tmp_path / "text"), "--text", "a whale " * 300, "--num", "1", "--out", str(tmp_path / "s.gif")]
    with pytest.warns(UserWarning, match=r"1 text\(s\) cut to BERT's 64 tokens"):
        assert main([*argv, "--no-progress"]) == 0
    assert (tmp_path / "s.gif").exists()


def test_a_bad_focus_probability_stops_before_the_results_folder_is_made(clips, tmp_path, capsys):
    results = tmp_path / "results"
    options = [*TINY_MODEL, *FAST, "--prob-focus-present", "7", "--results-folder", str(results)]
    one_line_error(capsys, ["train", str(clips), *options], r"prob_focus_present must be a finite number in \[0, 1\]")
    assert not results.exists()
