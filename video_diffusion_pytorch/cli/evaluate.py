"""`video-diffusion evaluate REAL SAMPLES`: FVD, per-frame FID and motion coherence of
generated videos against real ones. SAMPLES is a folder of clips, or a trained model
(a results folder, a `model-N.pt` or a `save_pretrained` folder) to sample from."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoint import list_milestones
from ..data import VideoDataset
from ..helpers import num_to_groups
from ..metrics import METRICS, VideoMetrics
from .common import HelpFormatter, UsageError, add_generation_options, generator, load_for_generation, resolve_device


def _is_model(path: Path) -> bool:
    """A checkpoint file, a results folder holding checkpoints, or a `save_pretrained` folder."""
    return path.is_file() or (path.is_dir() and (bool(list_milestones(path)) or (path / "config.json").is_file()))


def read_videos(folder: str | Path, *, image_size: int, num_frames: int, channels: int, limit: int | None) -> Tensor:
    """Up to `limit` clips below `folder` as `(n, channels, num_frames, image_size, image_size)`
    in [0, 1] (the first `num_frames` frames of longer clips are not guaranteed: a window is
    drawn with torch's RNG, seeded by the command)."""
    dataset = VideoDataset(folder, image_size, channels=channels, num_frames=num_frames)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    items = [dataset[index] for index in range(count)]
    return torch.stack([item[0] if isinstance(item, tuple) else item for item in items])


def _samples(args: argparse.Namespace) -> tuple[Tensor, dict]:
    """`--num` videos of the model at SAMPLES, in batches of `--batch-size`, and the size
    real clips are read at to match them."""
    diffusion, prompts = load_for_generation(args, args.samples)
    if prompts:
        raise UsageError("evaluate samples unconditionally: leave out --text (or evaluate a folder of samples)")
    noise = generator(args, diffusion)
    batches = [diffusion.sample(batch_size=size, generator=noise, progress=not args.no_progress).cpu()
               for size in num_to_groups(args.num, args.batch_size)]  # fmt: skip
    print(f"sampled {args.num} videos from {args.samples} ({diffusion.sampler}, {diffusion.sampling_timesteps} steps)")
    return torch.cat(batches), dict(image_size=diffusion.image_size, num_frames=diffusion.num_frames, channels=diffusion.channels)


def run_evaluate(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)  # which window of each long clip is read
    samples = Path(args.samples)
    shape = dict(image_size=args.image_size, num_frames=args.frames, channels=args.channels)
    if _is_model(samples):
        fake, shape = _samples(args)
    elif samples.is_dir():
        fake = read_videos(samples, **shape, limit=None)
    else:
        raise UsageError(f"SAMPLES must be a folder of clips or a trained model, got {args.samples}")
    real = read_videos(args.real, **shape, limit=args.max_real)
    metrics = VideoMetrics(
        real, args.metrics, i3d_weights=args.i3d_weights, inception_weights=args.inception_weights,
        batch_size=args.batch_size, device=device,
    )  # fmt: skip
    scores = metrics(fake)
    print(f"{len(real)} real and {len(fake)} generated videos of {shape['num_frames']} frames, {shape['image_size']} px")
    for name, value in scores.items():
        print(f"{name}: {value:.4f}" if name != "coherence" else f"coherence: {value:.1%} of the videos")
    return 0


def add_evaluate_command(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("evaluate", help="FVD, per-frame FID and motion coherence against real videos", formatter_class=HelpFormatter)
    evaluate.set_defaults(run=run_evaluate, upscale=1)
    evaluate.add_argument("real", help="a folder of real clips")
    evaluate.add_argument("samples", help="a folder of generated clips, or a trained model to sample --num videos from")
    evaluate.add_argument("--metrics", nargs="+", choices=METRICS, default=["fvd", "fid"], help="what to compute")
    evaluate.add_argument("--max-real", type=int, help="read at most this many real clips (default: all)")
    evaluate.add_argument("--image-size", type=int, default=64, help="frame size both sets are read at (a model's own when sampling)")
    evaluate.add_argument("--frames", type=int, default=16, help="frames per clip (a model's own when sampling)")
    evaluate.add_argument("--channels", type=int, choices=(1, 3), default=3, help="channels (a model's own when sampling)")
    evaluate.add_argument("--batch-size", type=int, default=8, help="videos per batch, in sampling and in the networks")
    evaluate.add_argument("--i3d-weights", help="I3D's rgb_imagenet.pt (default: downloaded on first use)")
    evaluate.add_argument("--inception-weights", help="the FID Inception weights (default: downloaded on first use)")
    add_generation_options(evaluate, num=64)
