"""Trainer checkpoints: safe loads, atomic saves, milestones and random states.

A checkpoint `model-{milestone}.pt` is a plain dict. The original's keys come first and
keep their meaning, so either library reads the other's files:

    step       int, optimisation steps done (the original stored the index of the step
               it had just taken, so its checkpoints resume one step early)
    model      GaussianDiffusion state dict
    ema        the EMA copy's state dict
    scaler     the grad scaler's state dict ({} without fp16)

and ours adds `format_version`, `optimizer`, `rng` (one entry per process), `data`
(where each data stream stands), `losses` and `config` (the model's description, see
`hub.describe_model`). Every value is a tensor, number, string or container of them, so
`torch.load(..., weights_only=True)` reads it without unpickling code.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .diffusion import GaussianDiffusion
from .files import atomic_path
from .hub import build_model
from .pretrained import check_weights, weights_mismatch

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHECKPOINT_PATTERN = re.compile(r"model-(\d+)\.pt")

# ---------------------------------------------------------------- files


def save_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """`torch.save` to `path` atomically (the previous file stays whole until the end)."""
    with atomic_path(path) as temporary:
        torch.save(checkpoint, temporary)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint on the CPU without unpickling code (`weights_only=True`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is not a readable checkpoint: the file is empty (0 bytes)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refusal = _refusal_reason(error)
    except PermissionError:
        raise
    except (RuntimeError, EOFError, KeyError, OSError) as error:
        raise ValueError(f"{path} is not a readable checkpoint, perhaps cut short or damaged ({error})") from error
    else:
        refusal = None
    if refusal is not None:
        # raised outside the `except` so that no chained error shows torch's advice to
        # load with `weights_only=False`, which would run the file's code
        if not zipfile.is_zipfile(path):
            raise ValueError(f"{path} is not a readable checkpoint: it is not an archive written by torch.save")
        raise ValueError(
            f"{path} is not a readable checkpoint: it holds objects other than tensors, numbers, strings and containers "
            f"of them ({refusal}), which are not loaded, since unpickling them could run code"
        )
    if not isinstance(checkpoint, dict) or not {"step", "model", "ema"} <= checkpoint.keys():
        raise ValueError(f"{path} is not a Trainer checkpoint (a dict with 'step', 'model' and 'ema')")
    return checkpoint


def _refusal_reason(error: pickle.UnpicklingError) -> str:
    """What the weights-only unpickler refused (e.g. "Unsupported global: GLOBAL print ..."),
    without torch's advice around it."""
    paragraphs = re.split(r"\n\s*\n", str(error).replace("WeightsUnpickler error:", "\n\n"))
    advice = ("weights_only", "Check the documentation", "Please file an issue")
    reasons = [text.strip() for text in paragraphs if text.strip() and not any(word in text for word in advice)]
    return reasons[0].split(". Please use")[0].rstrip(".") if reasons else "a pickled object"


# ---------------------------------------------------------------- milestones


def checkpoint_path(folder: str | os.PathLike, milestone: int) -> Path:
    return Path(folder) / f"model-{milestone}.pt"


def list_milestones(folder: str | os.PathLike) -> list[int]:
    """The milestones with a checkpoint in `folder`, ascending."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = (CHECKPOINT_PATTERN.fullmatch(path.name) for path in folder.iterdir())
    return sorted(int(match.group(1)) for match in found if match)


def checkpoint_step(path: str | os.PathLike) -> int:
    """The `step` a checkpoint was saved at, read without loading its tensors."""
    try:  # memory-mapped: the tensors stay on disk
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError, OSError, ValueError):
        # an archive of the old format, which cannot be mapped, or a damaged file, which
        # load_checkpoint reads or names with its one clear message
        checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict) or "step" not in checkpoint:
        raise ValueError(f"{path} is not a Trainer checkpoint (a dict with 'step', 'model' and 'ema')")
    return int(checkpoint["step"])


def latest_milestone(folder: str | os.PathLike) -> int:
    """The milestone in `folder` saved at the latest step (the highest number among equal
    steps). Unreadable checkpoints are passed over with a warning."""
    best = None
    for milestone in list_milestones(folder):
        try:
            step = checkpoint_step(checkpoint_path(folder, milestone))
        except (ValueError, OSError) as error:
            logger.warning("passing over %s: %s", checkpoint_path(folder, milestone), error)
            continue
        if best is None or step >= best[0]:
            best = (step, milestone)
    if best is None:
        raise FileNotFoundError(f"no checkpoint (model-N.pt) in {folder} to load the latest milestone from")
    return best[1]


def resolve_milestone(folder: str | os.PathLike, milestone: int) -> int:
    """`milestone`, or the one of the latest step in `folder` when it is -1."""
    return latest_milestone(folder) if milestone == -1 else milestone


# ---------------------------------------------------------------- models


def model_from_checkpoint(checkpoint: dict[str, Any], weights: str = "ema") -> GaussianDiffusion:
    """The GaussianDiffusion a loaded Trainer checkpoint describes, with its `weights`
    ('ema': the averaged copy the Trainer samples from, or 'model')."""
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    if not checkpoint.get("config"):
        raise ValueError(
            "this checkpoint does not describe its model (it was written by the original library or for a "
            "custom denoiser): build the model in Python and use Trainer.load"
        )
    diffusion = build_model(checkpoint["config"])
    if not isinstance(diffusion, GaussianDiffusion):
        raise ValueError(f"the checkpoint holds a {type(diffusion).__name__}, not a GaussianDiffusion")
    check_weights(checkpoint[weights], f"the checkpoint's {weights!r} weights")
    try:
        diffusion.load_state_dict(checkpoint[weights])
    except RuntimeError as error:
        reason = weights_mismatch(diffusion, checkpoint[weights])
        raise ValueError(f"the checkpoint's {weights!r} weights do not fit its own description: {reason}") from error
    return diffusion


def load_model(source: str | os.PathLike, *, weights: str = "ema") -> GaussianDiffusion:
    """A trained GaussianDiffusion from `source`: a Trainer checkpoint `model-N.pt`, a
    results folder (its checkpoint of the latest step), or a `save_pretrained` folder.

    Args:
        source: the file or folder.
        weights: of a Trainer checkpoint, 'ema' (the averaged weights) or 'model'.
    """
    path = Path(source)
    if path.is_dir():
        if list_milestones(path):
            path = checkpoint_path(path, latest_milestone(path))
        else:
            return GaussianDiffusion.from_pretrained(path)
    elif not path.exists():
        raise FileNotFoundError(
            f"no checkpoint at {path}: expected a model-N.pt file, a results folder or a save_pretrained folder"
        )
    return model_from_checkpoint(load_checkpoint(path), weights)


# ---------------------------------------------------------------- random states


def capture_rng_state() -> dict[str, Any]:
    """This process's random states: torch (CPU and every CUDA device), Python, NumPy."""
    version, python_state, gauss_next = random.getstate()
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [version, list(python_state), gauss_next],
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the random states captured by `capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, python_state, gauss_next = state["python"]
    random.setstate((version, tuple(python_state), gauss_next))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
