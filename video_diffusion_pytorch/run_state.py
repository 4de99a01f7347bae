"""What a Trainer checkpoint holds of its run, and how a Trainer continues from one.

The file format (keys, safe loading, atomic saving) is `checkpoint`'s; this module fills
it from a Trainer and restores a Trainer from it (passed in, as `trainer`): weights, EMA copy, step, Adam, gradient
scaler, each process's random state, the data positions, the loss history and the run
settings (see `run_settings`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .checkpoint import FORMAT_VERSION, restore_rng_state
from .hub import describe_model
from .pretrained import check_weights, weights_mismatch
from .run_settings import FIXED_SETTINGS, check_settings, jsonable_settings, merge_settings

logger = logging.getLogger(__name__)


def run_checkpoint(trainer: Any, rng: list[dict[str, Any]]) -> dict[str, Any]:
    """The checkpoint of `trainer` now, with `rng`, the random states of every process."""
    try:
        config = describe_model(trainer.model)
    except TypeError:  # a custom denoiser: the checkpoint still resumes training
        config = None
    return {
        "step": trainer.step,
        "model": trainer.model.state_dict(),
        "ema": trainer.ema_model.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "format_version": FORMAT_VERSION,
        "optimizer": trainer.opt.state_dict(),
        "rng": rng,
        "data": trainer.data.state_dict(),
        "losses": torch.tensor(trainer.losses, dtype=torch.float64),
        "config": config,
        "run": jsonable_settings(trainer.settings),
    }


def restore_run(trainer: Any, checkpoint: dict[str, Any], *, keep: set[str], strict: bool, source: Any) -> list[str]:
    """Continue `trainer` from `checkpoint` (see `Trainer.restore`); returns the report."""
    for key in ("model", "ema"):
        check_weights(checkpoint[key], f"the {key!r} weights of {source}")
    try:
        trainer.model.load_state_dict(checkpoint["model"], strict=strict)
        trainer.ema_model.load_state_dict(checkpoint["ema"], strict=strict)
    except RuntimeError as error:
        raise ValueError(f"{source} does not fit this model: {weights_mismatch(trainer.model, checkpoint['model'])}") from error
    trainer.step = int(checkpoint["step"])
    if checkpoint["scaler"] and trainer.scaler.is_enabled():
        trainer.scaler.load_state_dict(checkpoint["scaler"])
    if "format_version" not in checkpoint:
        logger.info("%s comes from the original library: Adam and the data order start afresh", source)
        return []
    trainer.opt.load_state_dict(checkpoint["optimizer"])
    trainer.data.load_state_dict(checkpoint["data"])
    trainer.losses = checkpoint["losses"].tolist()
    _restore_rng(trainer, checkpoint["rng"], source)
    report = _restore_settings(trainer, checkpoint.get("run") or {}, keep)
    for line in report:
        logger.info(line)
    return report


def _restore_rng(trainer: Any, states: list[dict[str, Any]], source: Any) -> None:
    processes, index = trainer.accelerator.num_processes, trainer.accelerator.process_index
    if len(states) == processes:
        restore_rng_state(states[index])
    else:
        logger.warning(
            "%s was written by %d processes, not %d: random streams continue from the current state",
            source, len(states), processes,
        )  # fmt: skip


def _restore_settings(trainer: Any, saved: dict[str, Any], keep: set[str]) -> list[str]:
    """Take the saved settings not in `keep`; report those kept, and those fixed when the
    Trainer was built, that differ."""
    merged, report = merge_settings(trainer.settings, saved, keep)
    for name, value in merged.items():
        if value == getattr(trainer, name):
            continue
        if name in FIXED_SETTINGS:
            report.append(f"{name}: {value!r} -> {getattr(trainer, name)!r} (fixed when the Trainer is built)")
        else:
            setattr(trainer, name, value)
    check_settings(trainer.settings)
    for group in trainer.opt.param_groups:  # Adam's saved state carries the old learning rate
        group["lr"] = trainer.train_lr
    return report
