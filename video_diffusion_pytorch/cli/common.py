"""What the commands share: the usage error, defaults taken from the library's signatures,
the options several commands take (one name each), model loading and video output."""

from __future__ import annotations

import argparse
import inspect
import math
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ..checkpoint import load_model
from ..data import write_video
from ..denoiser import DenoiserSpec
from ..diffusion import GaussianDiffusion
from ..results import video_grid
from ..samplers import FAST_SAMPLER, SAMPLERS, SPACINGS
from ..video_io import GIF_EXTENSION, VIDEO_EXTENSIONS, check_fps, import_av

PROG = "video-diffusion"
DEFAULT_RESULTS = "./results"


class UsageError(ValueError):
    """A command line that cannot be carried out; reported without a traceback."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows every option's default."""


def signature_defaults(function: Callable) -> dict[str, Any]:
    """The default of each parameter of `function` that has one: the CLI takes the
    library's defaults from its signatures instead of repeating them."""
    parameters = inspect.signature(function).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


# ---------------------------------------------------------------- shared options


def add_output_options(parser: argparse.ArgumentParser, out: str) -> None:
    """--out, --fps, --separate, --upscale: how generated videos are written."""
    group = parser.add_argument_group("output")
    group.add_argument("--out", default=out, help=".gif, or .mp4 .webm .avi .mov with the [video] extra")
    group.add_argument("--fps", type=int, default=8, help="frames per second of the written video")
    group.add_argument("--separate", action="store_true", help="one file per video (OUT-0.gif, OUT-1.gif, ...) instead of a grid")
    group.add_argument("--upscale", type=int, default=1, help="enlarge the output by this factor (nearest neighbour)")


def add_generation_options(parser: argparse.ArgumentParser, num: int) -> None:
    """Conditioning, sampler, randomness and device options of every generating command."""
    group = parser.add_argument_group("generation")
    group.add_argument("--text", nargs="+", default=[], help="prompts, for a text-conditioned model")
    group.add_argument("--num", type=int, default=num, help="videos (per prompt, for a text model)")
    group.add_argument("--cond-scale", type=float, default=1.0, help="classifier-free guidance scale")
    group.add_argument("--sampling-steps", type=int, help=f"network evaluations per video (default: the model's setting); fewer than "
                       f"the model's steps sample with {FAST_SAMPLER} unless --sampler or --eta says otherwise")  # fmt: skip
    group.add_argument("--sampler", choices=tuple(SAMPLERS), help="the sampler (default: the model's setting, see --sampling-steps)")
    group.add_argument("--spacing", choices=SPACINGS, help="which diffusion steps are visited (default: the sampler's)")
    group.add_argument("--eta", type=float, help="DDIM's noise scale, 0 (deterministic) to 1: samples with DDIM")
    group.add_argument("--weights", choices=("ema", "model"), default="ema", help="which weights of a Trainer checkpoint")
    group.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    group.add_argument("--device", help="default: cuda when available, else cpu")
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")


# ---------------------------------------------------------------- models and videos


def check_out(out: Path, fps: float) -> None:
    """Fail before any work when the output's format or frame rate cannot be written."""
    check_fps(fps)
    if out.suffix.lower() not in (GIF_EXTENSION, *VIDEO_EXTENSIONS):
        raise UsageError(f"--out must end in one of {(GIF_EXTENSION, *VIDEO_EXTENSIONS)}, got {str(out)!r}")
    if out.suffix.lower() != GIF_EXTENSION:
        import_av()  # fails now, with the install command, rather than after sampling


def resolve_device(name: str | None) -> torch.device:
    """--device as a torch device, checked before any work: by default the GPU when there
    is one, else the CPU; a name torch does not know, or a GPU this machine lacks, is a
    UsageError."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device: expected cpu, cuda, cuda:N or mps") from None
    available = {"cuda": torch.cuda.device_count(), "mps": int(torch.backends.mps.is_available())}
    if device.type in available and (device.index or 0) >= available[device.type]:
        found = f"{available[device.type]} {device.type} device(s)" if available[device.type] else f"no {device.type} device"
        raise UsageError(f"--device {name}: this machine has {found}; use --device cpu")
    return device


def load_for_generation(args: argparse.Namespace, source: str | Path) -> tuple[GaussianDiffusion, list[str] | None]:
    """The model of `source` on its device with the sampler options applied, and the
    prompts (each repeated `--num` times) after checking the conditions fit it."""
    if args.num < 1:
        raise UsageError(f"--num must be at least 1, got {args.num}")
    if args.upscale < 1:
        raise UsageError(f"--upscale must be at least 1, got {args.upscale}")
    diffusion = load_model(source, weights=args.weights)
    if args.eta is not None and args.sampling_steps is None:
        raise UsageError("--eta is DDIM's noise scale: it needs --sampling-steps")
    if any(option is not None for option in (args.sampling_steps, args.sampler, args.spacing)):
        diffusion.configure_sampling(args.sampling_steps, args.eta, sampler=args.sampler, sampling_spacing=args.spacing)
    spec = DenoiserSpec.of(diffusion.denoise_fn)
    if spec.conditional and not spec.text:
        raise UsageError("this model is conditioned on vectors (cond_dim): sample it from Python with cond=...")
    spec.check_condition("text" if args.text else "none", cond_scale=args.cond_scale, source="cli")
    device = resolve_device(args.device)
    prompts = [text for text in args.text for _ in range(args.num)] if args.text else None
    return diffusion.to(device).eval(), prompts


def generator(args: argparse.Namespace, diffusion: GaussianDiffusion) -> torch.Generator:
    return torch.Generator(next(diffusion.parameters()).device).manual_seed(args.seed)


def write_videos(videos: Tensor, args: argparse.Namespace) -> str:
    """Write videos `(n, c, f, h, w)` as one grid, or one file each with `--separate`,
    enlarged `--upscale` times; returns what was written, for the report."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    videos = videos.cpu()
    if args.upscale > 1:
        # (n, c, f, h, w) -> (n, c, f, h * k, w * k), nearest neighbour so pixels stay crisp
        frames = F.interpolate(rearrange(videos, "n c f h w -> (n f) c h w"), scale_factor=args.upscale)
        videos = rearrange(frames, "(n f) c h w -> n c f h w", n=videos.shape[0])
    if args.separate:
        paths = [out.with_name(f"{out.stem}-{index}{out.suffix}") for index in range(videos.shape[0])]
        for video, path in zip(videos, paths):
            write_video(video, path, fps=args.fps)
        return f"{len(paths)} videos to {paths[0]} ... {paths[-1]}" if len(paths) > 1 else f"1 video to {paths[0]}"
    rows = math.ceil(math.sqrt(videos.shape[0]))
    write_video(video_grid(videos, rows), out, fps=args.fps)
    return f"{videos.shape[0]} videos, in a grid of {rows} rows, to {out}"
