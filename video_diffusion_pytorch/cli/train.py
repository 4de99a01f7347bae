"""`video-diffusion train` and `video-diffusion demo`."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from ..checks import check_number
from ..checkpoint import checkpoint_path, latest_milestone, list_milestones, load_checkpoint, model_from_checkpoint
from ..data import SUPPORTED_EXTENSIONS, find_files, read_captions
from ..demo import DemoSettings, run_demo
from ..diffusion import GaussianDiffusion
from ..memory import available_memory, training_step_memory
from ..process import OBJECTIVES, RECTIFIED_FLOW, TIMESTEP_SAMPLINGS
from ..run_settings import PRECISIONS, RUN_SETTINGS, merge_settings
from ..schedules import BETA_SCHEDULES
from ..trainer import Trainer
from ..unet import Unet3D
from .common import DEFAULT_RESULTS, HelpFormatter, UsageError, signature_defaults

UNET = signature_defaults(Unet3D.__init__)
DIFFUSION = signature_defaults(GaussianDiffusion.__init__)
TRAINER = Trainer.default_settings()

# Where the command line differs from the library, and why (the one place that says so):
# - image_size, num_frames and dim have no library default; the GPU values are the
#   original README's model.
# - Without a GPU, the library's GPU-sized defaults (64 px, dim 64, batch 32 twice per
#   step) need about 23 GB and minutes per step; a CPU machine starts from a model and a
#   batch that train at about a step per second on two cores, and milestone samples in
#   50 DDIM steps instead of 1000.
# - short_clips is 'skip': padded or repeated frames teach the model motion that never
#   happened. The library keeps 'pad', the original Trainer's behaviour.
GPU_DEFAULTS = dict(image_size=64, num_frames=16, dim=64)
CPU_DEFAULTS = dict(
    image_size=16, num_frames=8, dim=16, dim_mults=(1, 2, 4), attn_heads=2, attn_dim_head=16, train_batch_size=4,
    gradient_accumulate_every=1, num_sample_rows=2, sampling_timesteps=50,
)  # fmt: skip
CLI_DEFAULTS = dict(short_clips="skip")


def machine_defaults() -> dict:
    """The defaults of `train` on this machine: the library's, then the CLI's own."""
    fitted = GPU_DEFAULTS if torch.cuda.is_available() else {**UNET, **GPU_DEFAULTS, **CPU_DEFAULTS}
    return {**UNET, **DIFFUSION, **TRAINER, **fitted, **CLI_DEFAULTS}


# ---------------------------------------------------------------- train


def _build_model(args: argparse.Namespace, folder: Path) -> GaussianDiffusion:
    if args.image_size % 2 ** (len(args.dim_mults) - 1):
        raise UsageError(f"--image-size {args.image_size} must be a multiple of 2 ** (len(--dim-mults) - 1)")
    captions = read_captions(find_files(folder, SUPPORTED_EXTENSIONS, frame_folders=True))
    unet = Unet3D(
        dim=args.dim, dim_mults=tuple(args.dim_mults), channels=args.channels, attn_heads=args.attn_heads,
        attn_dim_head=args.attn_dim_head, use_bert_text_cond=captions is not None,
    )  # fmt: skip
    return GaussianDiffusion(
        unet, image_size=args.image_size, num_frames=args.num_frames, channels=args.channels,
        timesteps=args.timesteps, text_use_bert_cls=args.text_use_bert_cls, bert_model=args.bert_model,
        min_snr_loss_weight=args.min_snr_loss_weight, sampling_timesteps=_sampling_steps(args), **_objective(args),
    )  # fmt: skip


def _objective(args: argparse.Namespace) -> dict:
    """--objective, --beta-schedule, --timestep-sampling and --loss-type, or with
    --rectified-flow the library's `RECTIFIED_FLOW`, which none of them may contradict."""
    given = {name: getattr(args, name) for name in RECTIFIED_FLOW}
    if not args.rectified_flow:
        return given
    clashes = [f"--{name.replace('_', '-')} {given[name]}" for name, value in RECTIFIED_FLOW.items()
               if name in args.explicit and given[name] != value]  # fmt: skip
    if clashes:
        recipe = " ".join(f"--{name.replace('_', '-')} {value}" for name, value in RECTIFIED_FLOW.items())
        raise UsageError(f"--rectified-flow means {recipe}, which contradicts {', '.join(clashes)}")
    return dict(RECTIFIED_FLOW)


def _sampling_steps(args: argparse.Namespace) -> int | None:
    """--sampling-steps; its CPU default applies to models of more diffusion steps only."""
    steps = args.sampling_timesteps
    if steps is None or "sampling_timesteps" in args.explicit or steps < args.timesteps:
        return steps
    return None


def run_train(args: argparse.Namespace) -> int:
    folder, results = Path(args.folder), Path(args.results_folder)
    if not folder.is_dir():
        raise UsageError(f"the training folder {folder} does not exist or is not a folder")
    milestones = list_milestones(results)
    if milestones and not args.resume:
        raise UsageError(
            f"{results} already holds checkpoints (model-{milestones[-1]}.pt): pass --resume to continue "
            "training, or choose another --results-folder"
        )
    if args.resume and not milestones:
        raise UsageError(f"--resume: no checkpoint (model-N.pt) in {results}")
    check_number("prob_focus_present", args.prob_focus_present, low=0, high=1)  # before any work, as every check here

    settings = {name: getattr(args, name) for name in RUN_SETTINGS}
    explicit = args.explicit & set(RUN_SETTINGS)
    if args.resume:  # the model and the settings come from the checkpoint; explicit flags win
        path = checkpoint_path(results, latest_milestone(results))
        checkpoint = load_checkpoint(path)
        diffusion = model_from_checkpoint(checkpoint, "model")
        settings, _ = merge_settings(settings, checkpoint.get("run") or {}, explicit)
        ignored = sorted(args.explicit & MODEL_OPTIONS)
        if ignored:
            print(f"resuming {path} with its model; model options ignored: {', '.join(ignored)}")
    else:
        diffusion = _build_model(args, folder)

    if not args.no_memory_check:
        _check_memory(diffusion, settings["train_batch_size"], settings["num_images_per_clip"])
    trainer = Trainer(
        diffusion, folder, results_folder=results, image_folder=args.image_folder, logging_dir=args.logging_dir,
        progress=not args.no_progress, **settings,
    )  # fmt: skip
    if args.resume:
        for line in trainer.restore(checkpoint, keep=explicit, source=path):
            print(line)
    trainer.train(prob_focus_present=args.prob_focus_present)
    if trainer.is_main:
        print(f"trained to step {trainer.step}; checkpoints, samples and loss.png are in {results}")
    return 0


def _check_memory(diffusion: GaussianDiffusion, batch_size: int, images_per_clip: int) -> None:
    """Refuse, before any work, a run whose training step cannot fit in this machine's memory."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    needed = training_step_memory(diffusion, batch_size, diffusion.num_frames + images_per_clip)
    free = available_memory(device)
    if needed > free:
        raise UsageError(
            f"a training step of this model needs about {needed / 2**30:.1f} GiB (estimated), but {free / 2**30:.1f} GiB "
            f"of {device.type} memory is free: lower --batch-size (raising --grad-accum keeps the batch), --image-size, "
            "--frames or --dim, or pass --no-memory-check"
        )


MODEL_OPTIONS = {
    "image_size", "num_frames", "channels", "dim", "dim_mults", "attn_heads", "attn_dim_head", "timesteps", "loss_type",
    "bert_model", "text_use_bert_cls", "objective", "beta_schedule", "min_snr_loss_weight", "sampling_timesteps",
    "timestep_sampling", "rectified_flow",
}  # fmt: skip


def _compile_mode(value: str) -> bool | str:
    return True if value.lower() == "default" else value


def add_train_command(commands: argparse._SubParsersAction) -> None:
    d = machine_defaults()
    train = commands.add_parser("train", help="train on a folder of clips", formatter_class=HelpFormatter)
    train.set_defaults(run=run_train)
    train.add_argument("folder", help="clips (.gif; .mp4 .webm .avi .mov with the [video] extra; frame folders); "
                       "a caption file beside each clip (clip.txt) trains a text-conditioned model")  # fmt: skip
    model = train.add_argument_group("model (ignored with --resume: the checkpoint's model is used)")
    model.add_argument("--image-size", type=int, default=d["image_size"], help="side of the square frames")
    model.add_argument("--frames", "--num-frames", dest="num_frames", type=int, metavar="N", default=d["num_frames"], help="frames per clip")
    model.add_argument("--channels", type=int, default=d["channels"], choices=(1, 3, 4), help="1 grey, 3 RGB, 4 RGBA")
    model.add_argument("--dim", type=int, default=d["dim"], help="the U-net's base width")
    model.add_argument("--dim-mults", type=int, nargs="+", default=list(d["dim_mults"]), help="width multipliers per level")
    model.add_argument("--attn-heads", type=int, default=d["attn_heads"], help="attention heads")
    model.add_argument("--attn-dim-head", type=int, default=d["attn_dim_head"], help="width of each attention head")
    model.add_argument("--timesteps", type=int, default=d["timesteps"], help="diffusion steps")
    model.add_argument("--loss-type", choices=("l1", "l2"), default=d["loss_type"], help="distance of the denoising loss")
    model.add_argument("--bert-model", default=d["bert_model"], help="BERT name or folder for captions (None: $VIDEO_DIFFUSION_BERT_MODEL or bert-base-cased)")
    model.add_argument("--text-use-bert-cls", action="store_true", help="embed captions with BERT's CLS vector")
    model.add_argument("--objective", choices=OBJECTIVES, default=d["objective"], help="what the network predicts")
    model.add_argument("--beta-schedule", choices=tuple(BETA_SCHEDULES), default=d["beta_schedule"], help="noise schedule")
    model.add_argument("--timestep-sampling", choices=TIMESTEP_SAMPLINGS, default=d["timestep_sampling"],
                       help="how training draws diffusion steps: uniform, or logit-normal (Esser et al. 2024)")  # fmt: skip
    model.add_argument("--rectified-flow", action="store_true",
                       help="train rectified flow (Esser et al. 2024): " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in RECTIFIED_FLOW.items()))  # fmt: skip
    model.add_argument("--min-snr", dest="min_snr_loss_weight", action="store_true", help="Min-SNR loss weighting (gamma 5)")
    model.add_argument("--sampling-steps", dest="sampling_timesteps", type=int, metavar="N", default=d["sampling_timesteps"],
                       help="network evaluations of the milestone samples, with the fast default sampler (None: every step, ancestral)")  # fmt: skip
    training = train.add_argument_group("training")
    training.add_argument("--steps", dest="train_num_steps", type=int, metavar="N", default=d["train_num_steps"], help="optimisation steps in total")
    training.add_argument("--batch-size", dest="train_batch_size", type=int, metavar="N", default=d["train_batch_size"], help="clips per batch, per process")
    training.add_argument("--lr", dest="train_lr", type=float, metavar="LR", default=d["train_lr"], help="Adam's learning rate")
    training.add_argument("--grad-accum", dest="gradient_accumulate_every", type=int, metavar="N", default=d["gradient_accumulate_every"], help="batches per optimisation step")
    training.add_argument("--amp", action="store_true", help="mixed precision: float16 on CUDA, bfloat16 elsewhere")
    training.add_argument("--mixed-precision", choices=PRECISIONS, default=d["mixed_precision"],
                          help="mixed precision through accelerate (None: --amp, else accelerate's config or $ACCELERATE_MIXED_PRECISION)")  # fmt: skip
    training.add_argument("--max-grad-norm", type=float, default=d["max_grad_norm"], help="clip the gradient norm to this value")
    training.add_argument("--ema-decay", type=float, default=d["ema_decay"], help="decay of the EMA weights")
    training.add_argument("--step-start-ema", type=int, default=d["step_start_ema"], help="the EMA copies the weights until this step")
    training.add_argument("--update-ema-every", type=int, default=d["update_ema_every"], help="steps between EMA updates")
    training.add_argument("--cond-drop-prob", type=float, default=d["cond_drop_prob"], help="caption dropout for classifier-free guidance")
    training.add_argument("--prob-focus-present", type=float, default=0.0, help="probability of training a clip as independent frames")
    training.add_argument("--horizontal-flip", action="store_true", help="mirror clips at random")
    training.add_argument("--short-clips", choices=("skip", "pad", "loop"), default=d["short_clips"], help="what clips shorter than --frames become")
    training.add_argument("--image-folder", help="images for joint image-video training")
    training.add_argument("--images-per-clip", dest="num_images_per_clip", type=int, metavar="N", default=d["num_images_per_clip"], help="images appended to each clip")
    training.add_argument("--validation-clips", type=int, default=d["validation_clips"], help="clips held out for the validation loss (None: a tenth, at most 8)")
    training.add_argument("--num-workers", type=int, default=d["num_workers"], help="data loader processes")
    training.add_argument("--seed", type=int, default=d["seed"], help="seed of the weights' noise, the data order and the samples")
    training.add_argument("--compile", nargs="?", const=True, default=d["compile"], type=_compile_mode, metavar="MODE",
                          help="torch.compile the U-net, in torch's default mode or MODE (e.g. max-autotune)")  # fmt: skip
    output = train.add_argument_group("output")
    output.add_argument("--results-folder", default=DEFAULT_RESULTS, help="checkpoints, samples, loss.png and run.json")
    output.add_argument("--save-every", dest="save_and_sample_every", type=int, metavar="N", default=d["save_and_sample_every"], help="steps between milestones")
    output.add_argument("--sample-rows", dest="num_sample_rows", type=int, metavar="N", default=d["num_sample_rows"], help="milestone grids are rows x rows samples")
    output.add_argument("--cond-scale", dest="sample_cond_scale", type=float, metavar="SCALE", default=d["sample_cond_scale"], help="guidance scale of the milestone samples")
    output.add_argument("--log-with", nargs="+", metavar="TRACKER", default=d["log_with"], help="experiment trackers: tensorboard, wandb, ... (None: no tracking)")
    output.add_argument("--logging-dir", help="where file trackers write (None: RESULTS_FOLDER/logs)")
    output.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --results-folder, with its settings")
    output.add_argument("--no-memory-check", action="store_true", help="start even when a step seems not to fit in memory")
    output.add_argument("--no-progress", action="store_true", help="hide progress bars")


# ---------------------------------------------------------------- demo


def run_demo_command(args: argparse.Namespace) -> int:
    names = [field.name for field in dataclasses.fields(DemoSettings) if hasattr(args, field.name)]
    settings = DemoSettings(**{name: getattr(args, name) for name in names})
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


def add_demo_command(commands: argparse._SubParsersAction) -> None:
    d = DemoSettings()
    demo = commands.add_parser(
        "demo", help="train a small model on synthetic moving shapes (a few minutes on a CPU)", formatter_class=HelpFormatter
    )
    demo.set_defaults(run=run_demo_command)
    demo.add_argument("--results-folder", default="./demo-results", help="where the demo writes")
    demo.add_argument("--steps", type=int, default=d.steps, help="training steps")
    demo.add_argument("--image-size", type=int, default=d.image_size, help="side of the square frames")
    demo.add_argument("--frames", "--num-frames", dest="num_frames", type=int, default=d.num_frames, help="frames per clip")
    demo.add_argument("--timesteps", type=int, default=d.timesteps, help="diffusion steps")
    demo.add_argument("--dim", type=int, default=d.dim, help="the U-net's base width")
    demo.add_argument("--seed", type=int, default=d.seed, help="seed of the clips, the weights and the samples")
    demo.add_argument("--threads", type=int, default=d.threads, help="intra-op CPU threads")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
