"""Training and sampling speed and peak training memory: the original computation
("baseline", `original_unet.py`) against the package ("optimised"), side by side.

    python benchmarks/speed.py --config medium --device cpu
    python benchmarks/speed.py --quick          # a smoke run on a tiny model, seconds

For every configuration, device and precision it first checks that both paths compute the
same (max |difference| / max |baseline| under 1e-4 in fp32, TF32 off on CUDA, on the
inputs timed below), then times, interleaved (baseline, optimised, baseline, ... after
one warm-up each; the median of `--repeats`), so that both see the same machine load:

- train step: forward and backward of `GaussianDiffusion.p_losses`, batch 2, the U-net
  unconditional (its defaults); clips/s is batch / step time (`paper`: batch 8, the
  U-net conditional, `cond_dim=64`); beside it the median minor page faults of a timed
  step (`time_interleaved` says why they matter on CPU);
- guided sampling step: `p_sample` with `cond_scale=3` on the same U-net with
  `cond_dim=16`, at batch 1 and 4 (`paper`: 64, at batch 4); seconds per sampled video
  is the largest batch's step time x the number of steps (`--steps`, the schedule's
  1000 by default) / batch;
- per step, counted once outside the timings (`counting.py`): aten operations and the
  copies among them, CUDA kernels launched, and achieved TFLOP/s;
- peak training memory (MiB), each case in a fresh process (`peak_memory.py` states the
  method), also for the optimised path with gradient checkpointing.

The table goes to stdout, everything to `--json` (written atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

try:
    import resource  # POSIX
except ImportError:
    resource = None

from cases import (
    CONFIGS,
    GUIDANCE_SCALE,
    PATHS,
    build_pair,
    guided_step,
    make_inputs,
    max_relative_error,
    train_step,
)
from counting import count_flops, count_work

# after `cases`, which puts this checkout first on the path
from video_diffusion_pytorch.files import atomic_write_text

PARITY_TOLERANCE = 1e-4
HERE = Path(__file__).resolve().parent

# ---------------------------------------------------------------- timing


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _minor_faults() -> int:
    """Minor page faults of this process so far (0 where the OS does not count them)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def time_interleaved(
    steps: dict[str, Callable[[], None]], *, repeats: int, device: torch.device, before: Callable[[], None]
) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """Seconds and minor page faults per call of each step, alternating between them
    `repeats` times after one untimed warm-up call each; `before` runs untimed ahead of
    every call.

    On CPU the page faults explain much of the spread between runs: glibc's malloc hands
    every allocation past 32 MiB a fresh `mmap`, and returns freed heap memory to the
    system past a threshold, so the same step can fault in hundreds of MiB one call and
    none the next (at about 1.5 us a page, 0.2 s at the `medium` size)."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    faults: dict[str, list[int]] = {name: [] for name in steps}
    for round_index in range(repeats + 1):
        for name, step in steps.items():
            before()
            _synchronize(device)
            faults_before, start = _minor_faults(), time.perf_counter()
            step()
            _synchronize(device)
            if round_index > 0:
                times[name].append(time.perf_counter() - start)
                faults[name].append(_minor_faults() - faults_before)
    return times, faults


def measure_speed(config_name: str, device: torch.device, dtype: str, *, repeats: int, steps: int) -> dict:
    """Median seconds of the train step and the guided steps, per path, and what the train
    step and the largest guided step ask of the machine (`counting.py`)."""
    config = CONFIGS[config_name]
    result: dict[str, dict] = {path: {} for path in PATHS}

    pair = build_pair(config, conditional=config.train_conditional, device=device)
    for model in pair.values():
        model.train()
    inputs = make_inputs(config, config.train_batch, conditional=config.train_conditional, device=device)

    def drop_grads() -> None:
        for model in pair.values():
            model.zero_grad(set_to_none=True)

    steps_of = {path: train_step(pair[path], inputs, dtype) for path in PATHS}
    times, faults = time_interleaved(steps_of, repeats=repeats, device=device, before=drop_grads)
    for path in PATHS:
        result[path]["train_step_s"] = statistics.median(times[path])
        result[path]["train_page_faults"] = statistics.median(faults[path])
        result[path]["clips_per_s"] = config.train_batch / result[path]["train_step_s"]
        result[path].update(_work("train", steps_of[path], device, result[path]["train_step_s"], drop_grads))
    del pair, steps_of

    pair = build_pair(config, conditional=True, device=device)
    for batch in config.guided_batches:
        inputs = make_inputs(config, batch, conditional=True, device=device)
        steps_of = {path: guided_step(pair[path], inputs, dtype) for path in PATHS}
        times, _ = time_interleaved(steps_of, repeats=repeats, device=device, before=lambda: None)
        for path in PATHS:
            result[path][f"guided_step_b{batch}_s"] = statistics.median(times[path])
    batch = max(config.guided_batches)
    for path in PATHS:
        result[path]["s_per_video"] = result[path][f"guided_step_b{batch}_s"] * steps / batch
        seconds = result[path][f"guided_step_b{batch}_s"]
        result[path].update(_work("guided", steps_of[path], device, seconds, lambda: None))
    return result


def _work(task: str, step: Callable[[], None], device: torch.device, seconds: float, before: Callable[[], None]) -> dict:
    """`{task}_ops`, `{task}_copies`, `{task}_kernels` (CUDA) and `{task}_tflops` (achieved
    TFLOP/s at the measured median time) of one step."""
    before()
    work = count_work(step, device)
    before()
    work["tflops"] = count_flops(step) / seconds / 1e12
    before()
    return {f"{task}_{key}": value for key, value in work.items()}


# ---------------------------------------------------------------- memory


def measure_memory(config_name: str, device: torch.device, dtype: str, threads: int | None) -> dict:
    """Peak training memory (MiB) per case, each in a fresh process."""
    cases = {"baseline": ["--path", "baseline"], "optimised": ["--path", "optimised"],
             "optimised_checkpointing": ["--path", "optimised", "--checkpointing"]}  # fmt: skip
    result = {}
    for name, extra in cases.items():
        command = [
            sys.executable, str(HERE / "peak_memory.py"), "--config", config_name,
            "--dtype", dtype, "--device", str(device), *extra,
            *(["--threads", str(threads)] if threads else []),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
        result[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------- report

# (header, key, scale, ratio direction): "baseline / optimised" for times and work,
# "optimised / baseline" for rates; None: no ratio
COLUMNS = (
    ("train step ms", "train_step_s", 1000, "b/o"), ("train page faults", "train_page_faults", 1, None),
    ("clips/s", "clips_per_s", 1, "o/b"),
    *((f"guided b{b} ms", f"guided_step_b{b}_s", 1000, "b/o") for b in (1, 4)),
    ("s/video", "s_per_video", 1, "b/o"),
    ("train aten ops", "train_aten_ops", 1, "b/o"), ("train copies", "train_copies", 1, "b/o"),
    ("train kernels", "train_kernels", 1, "b/o"), ("train TFLOP/s", "train_tflops", 1, None),
    ("guided aten ops", "guided_aten_ops", 1, "b/o"), ("guided kernels", "guided_kernels", 1, "b/o"),
    ("guided TFLOP/s", "guided_tflops", 1, None),
)  # fmt: skip


def rows_of(config: str, device: str, dtype: str, speed: dict, memory: dict | None) -> list[dict]:
    """One row per path, one of ratios (baseline / optimised for times and counts,
    optimised / baseline for rates and memory)."""
    rows = []
    for path in PATHS:
        row = dict(config=config, device=device, dtype=dtype, path=path, **speed[path])
        if memory:
            row["peak_mib"] = memory[path]
            if path == "optimised":
                row["peak_mib_checkpointing"] = memory["optimised_checkpointing"]
        rows.append(row)
    ratio = dict(config=config, device=device, dtype=dtype, path="speed-up / memory ratio")
    for _, key, _, direction in COLUMNS:
        if direction and key in speed["baseline"]:
            base, ours = speed["baseline"][key], speed["optimised"][key]
            ratio[key] = base / ours if direction == "b/o" else ours / base
    if memory:
        base = memory["baseline"]
        for kind in ("first_step", "steady"):
            if base[kind]:
                ratio[f"peak_ratio_{kind}"] = memory["optimised"][kind] / base[kind]
                ratio[f"peak_ratio_checkpointing_{kind}"] = memory["optimised_checkpointing"][kind] / base[kind]
    rows.append(ratio)
    return rows


def format_table(rows: list[dict]) -> str:
    columns = [c for c in COLUMNS if any(c[1] in row for row in rows)]
    header = ["config", "device", "dtype", "path", *(name for name, *_ in columns),
              "peak MiB (steady / first step)", "with checkpointing"]  # fmt: skip
    lines = [header]
    for row in rows:
        is_ratio = row["path"].startswith("speed-up")
        cells = [row["config"], row["device"], row["dtype"], row["path"]]
        for _, key, scale, _ in columns:
            if key not in row:
                cells.append("")
            else:
                cells.append(f"{row[key]:.2f}x" if is_ratio else f"{row[key] * scale:.3g}")
        cells += _memory_cells(row, is_ratio)
        lines.append(cells)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    rendered = [" | ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in lines]
    rendered.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(rendered)


def _memory_cells(row: dict, is_ratio: bool) -> list[str]:
    def pair(steady, first, fmt) -> str:
        steady_text = "n/a" if steady is None else fmt(steady)
        return f"{steady_text} / {fmt(first)}"

    if is_ratio:
        if "peak_ratio_first_step" not in row:
            return ["", ""]
        ratio = "{:.2f}x".format
        return [
            pair(row.get("peak_ratio_steady"), row["peak_ratio_first_step"], ratio),
            pair(row.get("peak_ratio_checkpointing_steady"), row["peak_ratio_checkpointing_first_step"], ratio),
        ]
    mib = "{:.0f}".format
    cells = []
    for key in ("peak_mib", "peak_mib_checkpointing"):
        value = row.get(key)
        cells.append(pair(value["steady"], value["first_step"], mib) if value else "")
    return cells


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=2))


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="small,medium",
                        help=f"comma-separated, from {', '.join(CONFIGS)} (default: small,medium)")
    parser.add_argument("--device", default="all", help="cpu, cuda or all (cuda when present)")
    parser.add_argument("--dtype", default="fp32,bf16", help="fp32, bf16 or both (default)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per path and task")
    parser.add_argument("--steps", type=int, default=1000, help="sampling steps per video")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--json", type=Path, default=Path("results/speed.json"))
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: the tiny configuration, fp32, CPU, one repeat")  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.config, args.device, args.dtype, args.repeats = "tiny", "cpu", "fp32", 1
    args.configs = args.config.split(",")
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}; choose from {sorted(CONFIGS)}")
    args.dtypes = args.dtype.split(",")
    if not set(args.dtypes) <= {"fp32", "bf16"}:
        parser.error(f"--dtype takes fp32, bf16 or both, got {args.dtype!r}")
    if args.device == "all":
        args.devices = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    elif args.device in ("cpu", "cuda"):
        if args.device == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda, but CUDA is not available")
        args.devices = [args.device]
    else:
        parser.error(f"--device takes cpu, cuda or all, got {args.device!r}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    parity = {}
    for config in args.configs:
        for device_name in args.devices:
            device = torch.device(device_name)
            # float32 in full on CUDA for the check (`cases.exact_float32`), TF32 for the timings
            error = max_relative_error(CONFIGS[config], device)
            parity[f"{config}/{device_name}"] = error
            if error > PARITY_TOLERANCE:
                raise SystemExit(f"{config} on {device_name}: the paths differ by {error:.2e} > {PARITY_TOLERANCE}")
            for dtype in args.dtypes:
                speed = measure_speed(config, device, dtype, repeats=args.repeats, steps=args.steps)
                memory = None if args.no_memory else measure_memory(config, device, dtype, args.threads)
                rows += rows_of(config, device_name, dtype, speed, memory)
                print(format_table(rows[-len(PATHS) - 1:]), end="\n\n", flush=True)

    payload = {
        "meta": {
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor()
            or platform.machine(), "cpu_count": os.cpu_count(),
            "cuda": torch.cuda.get_device_name() if "cuda" in args.devices else None,
            "configs": {c: CONFIGS[c].describe() for c in args.configs},
            "repeats": args.repeats, "sampling_steps": args.steps, "guidance_scale": GUIDANCE_SCALE,
            "parity_max_relative_error": parity,
            "memory_method": "see benchmarks/peak_memory.py",
        },
        "rows": rows,
    }  # fmt: skip
    print(format_table(rows))
    write_json(args.json, payload)
    print(f"\nwritten to {args.json}")
    return payload


if __name__ == "__main__":
    main()
