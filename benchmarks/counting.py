"""What one step asks of the machine, counted once outside the timed calls: the aten
operations it dispatches and the copies among them (CPU and GPU), the kernels it
launches on a GPU (`torch.profiler`), and its floating-point operations
(`torch.utils.flop_counter.FlopCounterMode`: matrix products, convolutions and attention,
the work that dominates; elementwise operations are not counted).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

# the aten operations that copy data: layout changes (`copy_`, also inside `contiguous`,
# `clone` and `reshape` of strided views) and dtype or device casts (`_to_copy`)
COPY_OPS = ("aten::copy_", "aten::_to_copy")


def count_work(step: Callable[[], None], device: torch.device) -> dict[str, int]:
    """Aten operations (every dispatch, nested ones included), copies and, on CUDA,
    kernels launched by one call of `step`."""
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if device.type == "cuda" else [])]
    with profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    events = prof.events()
    aten = [e.name for e in events if e.name.startswith("aten::")]
    counts = {"aten_ops": len(aten), "copies": sum(name in COPY_OPS for name in aten)}
    if device.type == "cuda":
        counts["kernels"] = sum(e.device_type == torch.autograd.DeviceType.CUDA for e in events)
    return counts


def count_flops(step: Callable[[], None]) -> int:
    """Floating-point operations of one call of `step` (a multiply-add is two)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()
