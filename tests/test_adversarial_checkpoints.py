"""Tampered checkpoints and model folders: one clear error each, and no code ever runs.

A checkpoint is read with `weights_only=True`, so a pickled payload is refused, and no
message suggests loading it with `weights_only=False`.
"""

import copy
import json
import math
import os
import shutil

import pytest
import torch

from tiny_training import make_diffusion, make_trainer, single_thread  # noqa: F401
from video_diffusion_pytorch import GaussianDiffusion, Unet3D
from video_diffusion_pytorch.checkpoint import load_checkpoint, save_checkpoint


class Payload:
    """Unpickling this creates a folder: proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def refused(path, message):
    with pytest.raises(ValueError, match=message) as error:
        load_checkpoint(path)
    assert "weights_only=False" not in str(error.value) and "weights_only` set to `False" not in str(error.value)
    text = "".join(str(cause) for cause in (error.value.__cause__, error.value.__context__) if cause)
    assert "weights_only` set to `False" not in text  # not even in the chained error
    return error.value


# ---------------------------------------------------------------- checkpoint files


def test_an_empty_checkpoint_is_named_empty(tmp_path):
    (tmp_path / "model-1.pt").write_bytes(b"")
    refused(tmp_path / "model-1.pt", r"model-1\.pt is not a readable checkpoint: the file is empty \(0 bytes\)")


def test_a_pickled_payload_is_refused_and_never_runs(tmp_path):
    torch.save({"step": 1, "model": Payload(tmp_path / "ran"), "ema": {}}, tmp_path / "model-1.pt")
    refused(tmp_path / "model-1.pt", r"not a readable checkpoint: it holds objects other than tensors.*\(.*unsupported GLOBAL posix\.mkdir.*could run code")
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_a_truncated_checkpoint_is_one_error(tmp_path, keep):
    save_checkpoint({"step": 1, "model": {"w": torch.zeros(1000)}, "ema": {}}, tmp_path / "model-1.pt")
    data = (tmp_path / "model-1.pt").read_bytes()
    (tmp_path / "model-1.pt").write_bytes(data[: int(len(data) * keep)])
    refused(tmp_path / "model-1.pt", r"model-1\.pt is not a readable checkpoint, perhaps cut short or damaged")


@pytest.mark.parametrize(
    "content, message",
    [
        ([1, 2, 3], r"is not a Trainer checkpoint \(a dict with 'step', 'model' and 'ema'\)"),
        ({"model": {}, "ema": {}}, "is not a Trainer checkpoint"),
        (torch.zeros(3), "is not a Trainer checkpoint"),
    ],
    ids=["list", "missing-step", "tensor"],
)
def test_a_checkpoint_of_the_wrong_structure_is_one_error(tmp_path, content, message):
    torch.save(content, tmp_path / "model-1.pt")
    refused(tmp_path / "model-1.pt", message)


def test_a_text_file_named_like_a_checkpoint_is_one_error(tmp_path):
    (tmp_path / "model-1.pt").write_text("not a checkpoint at all")
    refused(tmp_path / "model-1.pt", r"model-1\.pt is not a readable checkpoint: it is not an archive written by torch\.save")


def test_a_missing_milestone_is_one_error(tmp_path):
    trainer = make_trainer(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint \(model-N\.pt\) in .* to load the latest milestone"):
        trainer.load()
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*model-7\.pt"):
        trainer.load(7)


def test_a_checkpoint_of_another_width_does_not_fit_the_trainer(tmp_path):
    make_trainer(tmp_path, train_num_steps=1, save_and_sample_every=1).train()
    wider = Unet3D(dim=16, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8)
    other = make_trainer(tmp_path, GaussianDiffusion(wider, image_size=8, num_frames=3, timesteps=10))
    with pytest.raises(ValueError, match=r"model-1\.pt does not fit this model: \d+ tensors differ in shape, "
                                         r"e\.g\. denoise_fn\.init_conv\.weight is \(8, 3, 1, 7, 7\) in the file "
                                         r"but \(16, 3, 1, 7, 7\) in the model$"):  # fmt: skip
        other.load()


# ---------------------------------------------------------------- model folders (save_pretrained)


@pytest.fixture
def saved(tmp_path):
    folder = tmp_path / "model"
    make_diffusion().save_pretrained(folder)
    return folder


def edit_config(folder, change):
    description = json.loads((folder / "config.json").read_text())
    change(description)
    (folder / "config.json").write_text(json.dumps(description))


def test_a_folder_of_a_newer_format_refuses_to_load(saved):
    edit_config(saved, lambda d: d.update(format_version=2, library_version="9.0.0"))
    with pytest.raises(ValueError, match=r"config\.json has format_version 2, written by video-diffusion-pytorch 9\.0\.0; "
                                         r"this version \(.*\) reads format 1 and older: upgrade the package"):  # fmt: skip
        GaussianDiffusion.from_pretrained(saved)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["config"].update(timesteps=10.5), r"cannot build GaussianDiffusion from its config: timesteps must be an integer, at least 1, got 10\.5 \(float\)"),
        (lambda d: d["config"].update(num_frames=-3), r"cannot build GaussianDiffusion from its config: num_frames must be at least 1, got -3"),
        (lambda d: d["denoise_fn"]["config"].update(attn_heads=0), r"cannot build Unet3D from its config: attn_heads must be at least 1, got 0"),
        (lambda d: d.update(config=[1, 2]), r"'config' must be an object of constructor arguments, got a list"),
        (lambda d: d.update(format_version="1"), r"has format_version '1'"),
    ],
    ids=["float-timesteps", "negative-frames", "zero-heads", "config-list", "format-string"],
)
def test_a_tampered_config_is_one_error_naming_the_file(saved, change, message):
    edit_config(saved, change)
    with pytest.raises(ValueError, match=r"config\.json.*" + message):
        GaussianDiffusion.from_pretrained(saved)


def test_a_config_that_is_a_json_list_is_one_error(saved):
    (saved / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config\.json must hold a JSON object \(a model description\), got a list"):
        GaussianDiffusion.from_pretrained(saved)


def test_a_config_that_is_not_json_is_one_error(saved):
    (saved / "config.json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        GaussianDiffusion.from_pretrained(saved)


@pytest.mark.parametrize("damage", ["garbage", "empty", "half"])
def test_damaged_weights_are_one_error(saved, damage):
    weights = saved / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"garbage": b"garbage" * 9, "empty": b"", "half": data[: len(data) // 2]}[damage])
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable safetensors file, perhaps cut short or damaged"):
        GaussianDiffusion.from_pretrained(saved)


def test_weights_of_another_width_are_one_error(saved, tmp_path):
    wider = GaussianDiffusion(Unet3D(dim=16, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8), image_size=8,
                              num_frames=3, timesteps=10)  # fmt: skip
    wider.save_pretrained(tmp_path / "wider")
    shutil.copy(tmp_path / "wider" / "model.safetensors", saved / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors does not fit the model that config\.json describes: "
                                         r"\d+ tensors differ in shape, e\.g\. denoise_fn\.init_conv\.weight is "
                                         r"\(16, 3, 1, 7, 7\) in the file but \(8, 3, 1, 7, 7\) in the model"):  # fmt: skip
        GaussianDiffusion.from_pretrained(saved)


# ---------------------------------------------------------------- tampered weights


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    make_trainer(folder, train_num_steps=1, save_and_sample_every=1).train()
    return torch.load(folder / "model-1.pt", weights_only=True)


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda c: c.update(ema=[1, 2]), r"the checkpoint's 'ema' weights must be a mapping of parameter names to tensors, got a list"),
        (lambda c: c["ema"].pop("betas"), r"'ema' weights do not fit its own description: 1 tensors missing from the file, e\.g\. betas$"),
        (lambda c: c["ema"].update(betas=torch.zeros(99)), r"1 tensors differ in shape, e\.g\. betas is \(99,\) in the file but \(10,\) in the model$"),
        (lambda c: c["ema"]["denoise_fn.init_conv.weight"].fill_(math.nan), r"'ema' weights hold NaN or infinite values in 1 tensors, e\.g\. denoise_fn\.init_conv\.weight"),
    ],
    ids=["ema-list", "missing-tensor", "other-shape", "nan-weights"],
)
def test_tampered_weights_in_a_checkpoint_are_one_error(trained, tmp_path, tamper, message):
    from video_diffusion_pytorch.checkpoint import load_model

    checkpoint = copy.deepcopy(trained)
    tamper(checkpoint)
    torch.save(checkpoint, tmp_path / "model-1.pt")
    with pytest.raises(ValueError, match=message):
        load_model(tmp_path / "model-1.pt")


def test_resuming_from_nan_weights_is_one_error(trained, tmp_path):
    checkpoint = copy.deepcopy(trained)
    checkpoint["model"]["denoise_fn.final_conv.1.bias"].fill_(math.inf)
    torch.save(checkpoint, tmp_path / "model-1.pt")
    with pytest.raises(ValueError, match=r"the 'model' weights of .*model-1\.pt hold NaN or infinite values in 1 tensors"):
        make_trainer(tmp_path).load()


def test_nan_weights_in_a_model_folder_are_one_error(saved):
    import safetensors.torch

    state = safetensors.torch.load_file(saved / "model.safetensors")
    state["denoise_fn.init_conv.bias"] = torch.full_like(state["denoise_fn.init_conv.bias"], math.nan)
    safetensors.torch.save_file(state, saved / "model.safetensors")
    with pytest.raises(ValueError, match=r"the weights in .*model\.safetensors hold NaN or infinite values in 1 tensors"):
        GaussianDiffusion.from_pretrained(saved)
