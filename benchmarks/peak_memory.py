"""Peak memory of one training step, measured in this (fresh) process.

Run by `speed.py` once per case, so that no case inherits another's allocations:

    python benchmarks/peak_memory.py --config medium --path optimised [--checkpointing] [--dtype bf16]

Prints one JSON object (MiB), the peak resident memory of a training step above the
memory resident before it (the kernel's high-water mark `VmHWM`, reset through
`/proc/self/clear_refs` just before the step; Linux):
- `first_step`: the first step, one-time allocations of the math libraries included;
- `steady`: a later step: after the first, gradients are dropped and freed heap memory
  is returned to the system (`malloc_trim`), so this is what a training loop holds at
  its peak, step after step.
Elsewhere `first_step` falls back to `ru_maxrss` after minus before the first step
(inherited from the parent process on Linux, hence not used there) and `steady` is null.
On CUDA both are `torch.cuda.max_memory_allocated` above the memory allocated before the
step (the first and a later step).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import resource
from pathlib import Path

import torch

from cases import CONFIGS, PATHS, build_pair, make_inputs, train_step

MIB = 2**20


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


CLEAR_REFS = Path("/proc/self/clear_refs")


def _cpu_peak(step) -> float:
    """Peak resident MiB of `step()` above the resident set before it."""
    CLEAR_REFS.write_text("5")  # reset VmHWM to the current resident set
    before = _status_mib("VmRSS")
    step()
    return _status_mib("VmHWM") - before


def _cuda_peak(step, model, device) -> float:
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / MIB


def measure(config_name: str, path: str, *, checkpointing: bool, dtype: str, device: str) -> dict:
    device = torch.device(device)
    config = CONFIGS[config_name]
    conditional = config.train_conditional
    model = build_pair(config, conditional=conditional, device=device)[path].train()
    model.denoise_fn.gradient_checkpointing = checkpointing
    step = train_step(model, make_inputs(config, config.train_batch, conditional=conditional, device=device), dtype)
    if device.type == "cuda":
        return {"first_step": _cuda_peak(step, model, device), "steady": _cuda_peak(step, model, device)}
    if not CLEAR_REFS.exists():
        before = _maxrss_mib()
        step()
        return {"first_step": _maxrss_mib() - before, "steady": None}
    first = _cpu_peak(step)
    model.zero_grad(set_to_none=True)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return {"first_step": first, "steady": _cpu_peak(step)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), required=True)
    parser.add_argument("--path", choices=PATHS, required=True)
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing (optimised path)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.checkpointing and args.path != "optimised":
        parser.error("--checkpointing needs --path optimised (the original has no checkpointing)")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args.config, args.path, checkpointing=args.checkpointing, dtype=args.dtype, device=args.device)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
