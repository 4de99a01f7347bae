"""Tampered checkpoints and model folders: one clear error each, and no code ever runs.

A checkpoint is read with `weights_only=True`, so a pickled payload is refused, and no
message suggests loading it with `weights_only=False`.
"""

import json
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
