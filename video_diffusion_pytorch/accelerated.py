"""The Trainer's `accelerate.Accelerator`, with the run's mixed precision.

Precision comes from the Trainer's `mixed_precision`, else its `amp` (float16 on CUDA,
bfloat16 elsewhere), else accelerate's own configuration: `accelerate launch
--mixed_precision`, `accelerate config` (which `accelerate launch` reads) and the
`ACCELERATE_MIXED_PRECISION` environment variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import broadcast_object_list, parse_choice_from_env, set_seed

from .helpers import default, exists


def build_accelerator(amp: bool, mixed_precision: str | None, log_with: Any, logging_dir: Path) -> Accelerator:
    """An Accelerator with the run's precision (see the module's note), its trackers and
    where file-based trackers write."""
    if exists(mixed_precision):
        precision = mixed_precision
    elif amp:
        precision = "fp16" if PartialState().device.type == "cuda" else "bf16"
    else:
        precision = parse_choice_from_env("ACCELERATE_MIXED_PRECISION", "no")
    # accelerate keeps one precision per process; a later Trainer of another precision in
    # the same (single) process starts the state afresh instead of failing
    current = AcceleratorState._shared_state.get("_mixed_precision")
    if exists(current) and current != precision:
        if PartialState().num_processes > 1:
            raise ValueError(f"this process already trains in {current!r} precision; cannot switch to {precision!r}")
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=precision, log_with=log_with, project_dir=logging_dir)


def autocast_dtype(accelerator: Accelerator) -> torch.dtype:
    """The dtype of the accelerator's mixed precision; without one, the dtype `amp` would
    use on its device (float16 on CUDA, bfloat16 elsewhere)."""
    if accelerator.mixed_precision == "fp16":
        return torch.float16
    if accelerator.mixed_precision == "bf16" or accelerator.device.type != "cuda":
        return torch.bfloat16
    return torch.float16


def seed_processes(accelerator: Accelerator, seed: int | None) -> int:
    """Seed every process's random generators from `seed` (offset by the process index),
    or, without one, give each process noise of its own; returns the data seed, the same
    in every process (`seed`, or drawn on the main process)."""
    if exists(seed):
        set_seed(seed, device_specific=True)
    elif accelerator.num_processes > 1:
        # fresh processes share torch's default seed; each needs its own noise
        torch.manual_seed(torch.initial_seed() + accelerator.process_index)
    data_seed = default(seed, lambda: int(torch.randint(2**62, ()).item()))
    return broadcast_object_list([data_seed])[0]
