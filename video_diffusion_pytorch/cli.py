"""The `video-diffusion` command: `train`, `sample` and `demo`.

Argument parsing only; the work is done by the Trainer, the models and the demo module.
Bad input (a missing folder, an unreadable checkpoint, text for a model without text
conditioning, ...) ends with a one-line message and exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from .checkpoint import checkpoint_path, list_milestones, load_checkpoint, resolve_milestone
from .data import VideoDataset, write_video
from .diffusion import GaussianDiffusion
from .process import OBJECTIVES
from .schedules import BETA_SCHEDULES
from .hub import build_model
from .results import video_grid
from .unet import Unet3D
from .video_io import GIF_EXTENSION, VIDEO_EXTENSIONS, MissingVideoSupportError, import_av

PROG = "video-diffusion"


class UsageError(ValueError):
    """A command line that cannot be carried out; reported without a traceback."""


# ---------------------------------------------------------------- train


def _train(args: argparse.Namespace) -> int:
    from .trainer import Trainer

    folder = Path(args.folder)
    if not folder.is_dir():
        raise UsageError(f"the training folder {folder} does not exist or is not a folder")
    results = Path(args.results_folder)
    milestones = list_milestones(results)
    if milestones and not args.resume:
        raise UsageError(
            f"{results} already holds checkpoints (model-{milestones[-1]}.pt): pass --resume to continue "
            "training, or choose another --results-folder"
        )
    if args.resume and not milestones:
        raise UsageError(f"--resume: no checkpoint (model-N.pt) in {results}")

    if args.resume:  # the model comes from the checkpoint; model options are ignored
        checkpoint = load_checkpoint(checkpoint_path(results, resolve_milestone(results, -1)))
        diffusion = _model_from_checkpoint(checkpoint, "model")
    else:
        diffusion = None
        if args.image_size % 2 ** (len(args.dim_mults) - 1):
            raise UsageError(f"--image-size {args.image_size} must be a multiple of 2 ** (len(--dim-mults) - 1)")
    image_size = diffusion.image_size if diffusion else args.image_size
    frames = diffusion.num_frames if diffusion else args.frames
    channels = diffusion.channels if diffusion else args.channels
    dataset = VideoDataset(
        folder, image_size, channels, frames, horizontal_flip=args.horizontal_flip, short_clips=args.short_clips
    )
    if diffusion is None:
        unet = Unet3D(
            dim=args.dim, dim_mults=tuple(args.dim_mults), channels=channels, attn_heads=args.attn_heads,
            attn_dim_head=args.attn_dim_head, use_bert_text_cond=dataset.captions is not None,
        )  # fmt: skip
        diffusion = GaussianDiffusion(
            unet, image_size=image_size, num_frames=frames, channels=channels, timesteps=args.timesteps,
            loss_type=args.loss_type, text_use_bert_cls=args.text_use_bert_cls, bert_model=args.bert_model,
            objective=args.objective, beta_schedule=args.beta_schedule, min_snr_loss_weight=args.min_snr,
            sampling_timesteps=args.sampling_steps,
        )  # fmt: skip

    trainer = Trainer(
        diffusion, dataset, ema_decay=args.ema_decay, train_batch_size=args.batch_size, train_lr=args.lr,
        train_num_steps=args.steps, gradient_accumulate_every=args.grad_accum, amp=args.amp,
        step_start_ema=args.step_start_ema, update_ema_every=args.update_ema_every,
        save_and_sample_every=args.save_every, results_folder=results, num_sample_rows=args.sample_rows,
        max_grad_norm=args.max_grad_norm, cond_drop_prob=args.cond_drop_prob, sample_cond_scale=args.cond_scale,
        image_folder=args.image_folder, num_images_per_clip=args.images_per_clip, seed=args.seed,
        num_workers=args.num_workers, progress=not args.no_progress,
    )  # fmt: skip
    if args.resume:
        trainer.load(-1)
    trainer.train(prob_focus_present=args.prob_focus_present)
    if trainer.is_main:
        print(f"trained to step {trainer.step}; checkpoints, samples and loss.png are in {results}")
    return 0


# ---------------------------------------------------------------- sample


def _model_from_checkpoint(checkpoint: dict[str, Any], weights: str) -> GaussianDiffusion:
    if not checkpoint.get("config"):
        raise UsageError(
            "this checkpoint does not describe its model (it was written by the original library or for a "
            "custom denoiser): build the model in Python and use Trainer.load"
        )
    diffusion = build_model(checkpoint["config"])
    if not isinstance(diffusion, GaussianDiffusion):
        raise UsageError(f"the checkpoint holds a {type(diffusion).__name__}, not a GaussianDiffusion")
    diffusion.load_state_dict(checkpoint[weights])
    return diffusion


def _load_for_sampling(path: Path, weights: str) -> GaussianDiffusion:
    if path.is_dir():
        return GaussianDiffusion.from_pretrained(path)
    if not path.exists():
        raise UsageError(f"no checkpoint at {path}: expected a model-N.pt file or a save_pretrained folder")
    return _model_from_checkpoint(load_checkpoint(path), weights)


def _sample(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() not in (GIF_EXTENSION, *VIDEO_EXTENSIONS):
        raise UsageError(f"--out must end in one of {(GIF_EXTENSION, *VIDEO_EXTENSIONS)}, got {str(out)!r}")
    if out.suffix.lower() != GIF_EXTENSION:
        import_av()  # fails now, with the install command, rather than after sampling
    if args.num < 1:
        raise UsageError(f"--num must be at least 1, got {args.num}")

    diffusion = _load_for_sampling(Path(args.checkpoint), args.weights)
    if args.sampling_steps is not None:
        diffusion.configure_sampling(args.sampling_steps, args.eta, sampler="ddim")
    elif args.eta != 0:
        raise UsageError("--eta is DDIM's noise scale: it needs --sampling-steps")
    spec = diffusion.spec
    if spec.conditional and not spec.text:
        raise UsageError("this model is conditioned on vectors (cond_dim): sample it from Python with cond=...")
    spec.check_condition("text" if args.text else "none", cond_scale=args.cond_scale, source="cli")
    text_model = spec.text

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    diffusion = diffusion.to(device).eval()
    generator = torch.Generator(device).manual_seed(args.seed)
    prompts = [text for text in args.text for _ in range(args.num)] if text_model else None
    videos = diffusion.sample(
        cond=prompts, cond_scale=args.cond_scale, batch_size=args.num, generator=generator,
        progress=not args.no_progress,
    )  # fmt: skip
    rows = math.ceil(math.sqrt(videos.shape[0]))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_video(video_grid(videos.cpu(), rows), out, fps=args.fps)
    print(f"wrote {videos.shape[0]} videos, in a grid of {rows} rows, to {out}")
    if prompts:
        print("prompts, row by row:", *prompts, sep="\n  ")
    return 0


# ---------------------------------------------------------------- demo


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoSettings, run_demo

    names = ("steps", "image_size", "num_frames", "timesteps", "dim", "seed", "threads")
    overrides = {name: getattr(args, name) for name in names}
    settings = DemoSettings(**{name: value for name, value in overrides.items() if value is not None})
    if settings.image_size % 2:
        raise UsageError(f"--image-size must be even, got {settings.image_size}")
    outputs = run_demo(args.results_folder, settings, progress=not args.no_progress)
    print(
        f"demo results in {outputs.results_folder.resolve()}:\n"
        f"  {outputs.samples.name}  samples of the trained model (enlarged {settings.enlarge}x)\n"
        f"  {outputs.frames.name}  the same samples, one per row, frames left to right\n"
        f"  {outputs.loss_curve.name}  the training loss\n"
        f"  {outputs.checkpoint.name}  the checkpoint: video-diffusion sample {outputs.checkpoint}"
    )
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Video diffusion models (Ho et al. 2022): train, sample, demo.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train on a folder of clips", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.set_defaults(run=_train)
    train.add_argument("folder", help="clips (.gif; .mp4 .webm .avi .mov with the [video] extra; frame folders); "
                       "a caption file beside each clip (clip.txt) trains a text-conditioned model")  # fmt: skip
    model = train.add_argument_group("model (ignored with --resume: the checkpoint's model is used)")
    model.add_argument("--image-size", type=int, default=64)
    model.add_argument("--frames", type=int, default=16, help="frames per clip")
    model.add_argument("--channels", type=int, default=3, choices=(1, 3, 4))
    model.add_argument("--dim", type=int, default=64)
    model.add_argument("--dim-mults", type=int, nargs="+", default=[1, 2, 4, 8])
    model.add_argument("--attn-heads", type=int, default=8)
    model.add_argument("--attn-dim-head", type=int, default=32)
    model.add_argument("--timesteps", type=int, default=1000)
    model.add_argument("--loss-type", choices=("l1", "l2"), default="l1")
    model.add_argument("--bert-model", help="BERT name or folder for captions (default: $VIDEO_DIFFUSION_BERT_MODEL or bert-base-cased)")
    model.add_argument("--text-use-bert-cls", action="store_true", help="embed captions with BERT's CLS vector")
    model.add_argument("--objective", choices=OBJECTIVES, default="pred_noise", help="what the network predicts")
    model.add_argument("--beta-schedule", choices=tuple(BETA_SCHEDULES), default="cosine")
    model.add_argument("--min-snr", action="store_true", help="Min-SNR loss weighting (gamma 5)")
    model.add_argument("--sampling-steps", type=int, help="DDIM steps of the milestone samples (default: every step, ancestral)")
    training = train.add_argument_group("training")
    training.add_argument("--steps", type=int, default=100000)
    training.add_argument("--batch-size", type=int, default=32, help="per process")
    training.add_argument("--lr", type=float, default=1e-4)
    training.add_argument("--grad-accum", type=int, default=2, help="batches per optimisation step")
    training.add_argument("--amp", action="store_true", help="mixed precision (float16 on CUDA, bfloat16 on CPU)")
    training.add_argument("--max-grad-norm", type=float)
    training.add_argument("--ema-decay", type=float, default=0.995)
    training.add_argument("--step-start-ema", type=int, default=2000)
    training.add_argument("--update-ema-every", type=int, default=10)
    training.add_argument("--cond-drop-prob", type=float, default=0.0, help="caption dropout for classifier-free guidance")
    training.add_argument("--prob-focus-present", type=float, default=0.0)
    training.add_argument("--horizontal-flip", action="store_true")
    training.add_argument("--short-clips", choices=("skip", "pad", "loop"), default="skip")
    training.add_argument("--image-folder", help="images for joint image-video training")
    training.add_argument("--images-per-clip", type=int, default=0)
    training.add_argument("--num-workers", type=int, default=0)
    training.add_argument("--seed", type=int)
    output = train.add_argument_group("output")
    output.add_argument("--results-folder", default="./results")
    output.add_argument("--save-every", type=int, default=1000, help="steps between milestones")
    output.add_argument("--sample-rows", type=int, default=4, help="milestone grids are rows x rows samples")
    output.add_argument("--cond-scale", type=float, default=1.0, help="guidance scale of the milestone samples")
    output.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --results-folder")
    output.add_argument("--no-progress", action="store_true")

    sample = commands.add_parser("sample", help="sample videos from a checkpoint", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sample.set_defaults(run=_sample)
    sample.add_argument("checkpoint", help="a model-N.pt written by the Trainer, or a save_pretrained folder")
    sample.add_argument("--text", nargs="+", default=[], help="prompts, for a text-conditioned model")
    sample.add_argument("--num", type=int, default=4, help="videos (per prompt, for a text model)")
    sample.add_argument("--cond-scale", type=float, default=1.0, help="classifier-free guidance scale")
    sample.add_argument("--sampling-steps", type=int, help="sample with DDIM in this many steps (default: the model's setting)")
    sample.add_argument("--eta", type=float, default=0.0, help="DDIM noise scale, 0 (deterministic) to 1, with --sampling-steps")
    sample.add_argument("--out", default="samples.gif", help=".gif, or .mp4 .webm .avi .mov with the [video] extra")
    sample.add_argument("--fps", type=int, default=8)
    sample.add_argument("--weights", choices=("ema", "model"), default="ema", help="which weights of a Trainer checkpoint")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--device", help="default: cuda when available, else cpu")
    sample.add_argument("--no-progress", action="store_true")

    demo = commands.add_parser("demo", help="train a small model on synthetic moving shapes (a few minutes on a CPU)")
    demo.set_defaults(run=_demo)
    demo.add_argument("--results-folder", default="./demo-results")
    demo.add_argument("--steps", type=int)
    demo.add_argument("--image-size", type=int)
    demo.add_argument("--num-frames", type=int)
    demo.add_argument("--timesteps", type=int)
    demo.add_argument("--dim", type=int)
    demo.add_argument("--seed", type=int)
    demo.add_argument("--threads", type=int, help="intra-op CPU threads (default 1)")
    demo.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: `sys.argv[1:]`); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help, or a usage error argparse has already reported
        return int(exit.code or 0)
    try:
        return args.run(args)
    except (ValueError, OSError, MissingVideoSupportError) as error:
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
