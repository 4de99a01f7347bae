"""A training run's settings: checked in one place, saved with the run, restored on resume.

The settings are the `Trainer` arguments that say how to train (batch size, learning rate,
accumulation, EMA, milestones, precision, data options, seed, tracking), by their
argument names. Each checkpoint holds them under `"run"`, and `results_folder/run.json`
holds them with the latest milestone, for people and tools to read. On resume they are
restored, except the ones the caller sets explicitly: those win, and each difference is
reported in one line, `train_lr: 0.0001 -> 0.0003`.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

from .files import atomic_write_text

RUN_FILE = "run.json"
PRECISIONS = ("no", "fp16", "bf16")

# the Trainer arguments that are settings of the run (the others name the model, the data and the folder)
RUN_SETTINGS = (
    "train_batch_size", "train_lr", "train_num_steps", "gradient_accumulate_every", "amp", "mixed_precision",
    "ema_decay", "step_start_ema", "update_ema_every", "save_and_sample_every", "num_sample_rows", "max_grad_norm",
    "cond_drop_prob", "sample_cond_scale", "horizontal_flip", "short_clips", "num_images_per_clip",
    "validation_clips", "seed", "num_workers", "log_with", "compile",
)  # fmt: skip
# fixed once the Trainer is built: its accelerator (precision, trackers), its data and its compiled U-nets
FIXED_SETTINGS = frozenset(
    {"amp", "mixed_precision", "horizontal_flip", "short_clips", "num_images_per_clip", "validation_clips", "log_with", "compile"}
)
POSITIVE = ("train_batch_size", "gradient_accumulate_every", "update_ema_every", "save_and_sample_every", "num_sample_rows")
NON_NEGATIVE = ("train_num_steps", "num_images_per_clip", "num_workers", "step_start_ema")


def setting_defaults(init: Callable) -> dict[str, Any]:
    """The run settings' defaults in the signature of `init` (the Trainer's constructor)."""
    parameters = inspect.signature(init).parameters
    return {name: parameters[name].default for name in RUN_SETTINGS}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_settings(settings: dict[str, Any]) -> None:
    """Raise a ValueError (or TypeError) naming the first setting out of its range."""
    for name in POSITIVE:
        if not _is_int(settings[name]) or settings[name] < 1:
            raise ValueError(f"{name} must be a positive integer, got {settings[name]!r}")
    for name in NON_NEGATIVE:
        if not _is_int(settings[name]) or settings[name] < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {settings[name]!r}")
    for name, low, high in (("cond_drop_prob", 0, 1), ("ema_decay", 0, 1)):
        if not isinstance(settings[name], (int, float)) or not low <= settings[name] <= high:
            raise ValueError(f"{name} must be in [{low}, {high}], got {settings[name]!r}")
    for name in ("train_lr", "max_grad_norm"):
        value = settings[name]
        if value is not None and (not isinstance(value, (int, float)) or not value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if settings["mixed_precision"] not in (None, *PRECISIONS):
        raise ValueError(f"mixed_precision must be one of {PRECISIONS} or None, got {settings['mixed_precision']!r}")
    if settings["amp"] and settings["mixed_precision"] == "no":
        raise ValueError("amp=True asks for mixed precision, but mixed_precision='no'")
    compile_mode = settings["compile"]
    if not isinstance(compile_mode, (bool, str)):
        raise TypeError(f"compile must be False, True or a torch.compile mode string, got {compile_mode!r}")
    log_with = settings["log_with"]
    if log_with is not None and not isinstance(log_with, str) and not (
        isinstance(log_with, (list, tuple)) and all(isinstance(name, str) for name in log_with)
    ):
        raise TypeError(f"log_with must be a tracker name, a list of them or None, got {log_with!r}")


def jsonable_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings as JSON and `torch.load(weights_only=True)` read them (tuples as lists)."""
    return {name: list(value) if isinstance(value, tuple) else value for name, value in settings.items()}


def merge_settings(
    current: dict[str, Any], saved: dict[str, Any], keep: Iterable[str]
) -> tuple[dict[str, Any], list[str]]:
    """The settings a resumed run takes, and one report line per kept setting that differs.

    `saved` settings replace `current` ones except those named in `keep` (explicit
    choices), which win; settings unknown to this version are ignored.
    """
    keep = set(keep)
    merged, report = dict(current), []
    for name, value in saved.items():
        if name not in current or _same(current[name], value):
            continue
        if name in keep:
            report.append(f"{name}: {value!r} -> {current[name]!r}")
        else:
            merged[name] = value
    return merged, report


def _same(a: Any, b: Any) -> bool:
    return jsonable_settings({"v": a}) == jsonable_settings({"v": b})


def write_run_file(folder: str | os.PathLike, settings: dict[str, Any], *, step: int, milestone: int) -> Path:
    """Write `folder/run.json`: the settings and the latest milestone, atomically."""
    path = Path(folder) / RUN_FILE
    record = {"run": jsonable_settings(settings), "latest": {"milestone": milestone, "step": step}}
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path
