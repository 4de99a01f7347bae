"""`video-diffusion sample`, `extend` and `interpolate`: videos from a trained model,
from noise or conditioned on the frames of a clip (Ho et al. 2022, §3.1)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from einops import repeat
from torch import Tensor

from ..data import frame_transform, read_clip
from ..diffusion import GaussianDiffusion
from .common import (
    DEFAULT_RESULTS, HelpFormatter, UsageError, add_generation_options, add_output_options, check_out, generator,
    load_for_generation, write_videos,
)  # fmt: skip


def _read_clip(path: str, diffusion: GaussianDiffusion, num: int) -> Tensor:
    """The clip at `path` as the model takes it, repeated: `(num, c, f, size, size)` in [0, 1]."""
    if not Path(path).exists():
        raise UsageError(f"no clip at {path}")
    clip = read_clip(path, diffusion.channels, transform=frame_transform(diffusion.image_size))  # (c, f, h, w)
    return repeat(clip, "c f h w -> n c f h w", n=num)


def _report(what: str, written: str, prompts: list[str] | None) -> None:
    print(f"wrote {what}: {written}")
    if prompts:
        print("prompts, video by video:", *prompts, sep="\n  ")


def run_sample(args: argparse.Namespace) -> int:
    check_out(Path(args.out), args.fps)
    diffusion, prompts = load_for_generation(args, args.checkpoint)
    known = known_mask = None
    batch = len(prompts) if prompts else args.num
    if args.first_frames:
        clip = _read_clip(args.first_frames, diffusion, batch)
        given = min(clip.shape[2], diffusion.num_frames - 1)  # at least one frame is generated
        known = torch.zeros(*clip.shape[:2], diffusion.num_frames, *clip.shape[3:])
        known[:, :, :given] = clip[:, :, :given]
        known_mask = (torch.arange(diffusion.num_frames) < given).view(1, 1, -1, 1, 1)  # (1, 1, f, 1, 1) whole frames
        print(f"the first {given} frames of every video are those of {args.first_frames}")
    videos = diffusion.sample(
        cond=prompts, cond_scale=args.cond_scale, batch_size=batch, known=known, known_mask=known_mask,
        generator=generator(args, diffusion), progress=not args.no_progress,
    )  # fmt: skip
    _report("samples", write_videos(videos, args), prompts)
    return 0


def run_extend(args: argparse.Namespace) -> int:
    check_out(Path(args.out), args.fps)
    diffusion, prompts = load_for_generation(args, args.model)
    clip = _read_clip(args.clip, diffusion, len(prompts) if prompts else args.num)
    if args.num_frames <= clip.shape[2]:
        raise UsageError(f"--frames must exceed the clip's {clip.shape[2]} frames, got {args.num_frames}")
    videos = diffusion.extend(
        clip, args.num_frames, context_frames=args.context_frames, cond=prompts, cond_scale=args.cond_scale,
        generator=generator(args, diffusion), progress=not args.no_progress,
    )  # fmt: skip
    _report(f"{args.clip} extended to {args.num_frames} frames", write_videos(videos, args), prompts)
    return 0


def run_interpolate(args: argparse.Namespace) -> int:
    check_out(Path(args.out), args.fps)
    diffusion, prompts = load_for_generation(args, args.model)
    clip = _read_clip(args.clip, diffusion, len(prompts) if prompts else args.num)
    videos = diffusion.interpolate_frames(
        clip, args.factor, cond=prompts, cond_scale=args.cond_scale, generator=generator(args, diffusion),
        progress=not args.no_progress,
    )  # fmt: skip
    _report(f"{args.clip} at {args.factor}x the frame rate", write_videos(videos, args), prompts)
    return 0


def _model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_RESULTS, help="a results folder (its latest checkpoint), a model-N.pt or a save_pretrained folder")


def add_generation_commands(commands: argparse._SubParsersAction) -> None:
    sample = commands.add_parser("sample", help="sample videos from a trained model", formatter_class=HelpFormatter)
    sample.set_defaults(run=run_sample)
    sample.add_argument("checkpoint", help="a results folder (its latest checkpoint), a model-N.pt written by the Trainer, or a save_pretrained folder")
    sample.add_argument("--first-frames", metavar="CLIP", help="a clip whose frames begin every video (video prediction)")
    add_generation_options(sample, num=4)
    add_output_options(sample, out="samples.gif")

    extend = commands.add_parser("extend", help="continue a clip to more frames", formatter_class=HelpFormatter)
    extend.set_defaults(run=run_extend)
    extend.add_argument("clip", help="the clip to continue (resized to the model's frames)")
    extend.add_argument("--frames", "--num-frames", dest="num_frames", type=int, required=True, help="frames of the result")
    extend.add_argument("--context-frames", type=int, help="frames each new block is conditioned on (None: half the model's frames)")
    _model_argument(extend)
    add_generation_options(extend, num=1)
    add_output_options(extend, out="extended.gif")

    interpolate = commands.add_parser("interpolate", help="raise a clip's frame rate", formatter_class=HelpFormatter)
    interpolate.set_defaults(run=run_interpolate)
    interpolate.add_argument("clip", help="the clip to interpolate (resized to the model's frames)")
    interpolate.add_argument("--factor", type=int, required=True, help="the frame-rate multiplier")
    _model_argument(interpolate)
    add_generation_options(interpolate, num=1)
    add_output_options(interpolate, out="interpolated.gif")
