"""Trainer: the original library's training loop, on `accelerate`.

It trains a GaussianDiffusion on a folder of clips (or any dataset), on whatever device
the machine has (CPU included) and in several processes when launched with `torchrun`
or `accelerate launch` (data parallel: each process draws its own batches, gradients
are averaged). `accelerate` holds the model, the optimizer and the data loaders, runs the
mixed precision and the gradient accumulation, and feeds the experiment trackers. Every
`save_and_sample_every` steps, and at the last step, it writes a checkpoint, a grid of
samples from the EMA model and the loss curve. Only the main process writes files,
samples and logs, and only one run at a time may use a results folder.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from accelerate.utils import gather_object
from torch import Tensor, nn
from torch.optim import Adam
from tqdm.auto import tqdm

from .accelerated import autocast_dtype, build_accelerator, seed_processes
from .checks import check_number
from .checkpoint import capture_rng_state, checkpoint_path, list_milestones, load_checkpoint, resolve_milestone, save_checkpoint
from .compilation import compile_denoiser
from .denoiser import DenoiserSpec
from .diffusion import GaussianDiffusion
from .ema import EMA
from .files import remove_temporary_files
from .helpers import default, exists
from .milestones import write_outputs
from .optimisation import optimisation_step
from .run_lock import RunLock
from .run_settings import RUN_SETTINGS, check_settings, setting_defaults, write_run_file
from .run_state import restore_run, run_checkpoint
from .tracking import start_trackers
from .training_data import Batch, TrainingData, bert_embedder

logger = logging.getLogger(__name__)


def noop(*args: Any, **kwargs: Any) -> None:
    """A `log_fn` that ignores its arguments."""


class NonFiniteLossError(ValueError):
    """The training loss (or the gradient norm) became NaN or infinite; the message names
    the step. Nothing of that step was saved."""


class Trainer:
    """Train a GaussianDiffusion with Adam, an EMA copy, periodic samples and checkpoints.

    The original's arguments, with its defaults:

    Args:
        diffusion_model: the GaussianDiffusion to train (in place).
        folder: a folder of clips read by `VideoDataset` (searched recursively; a caption
            file beside a clip, `clip.gif` + `clip.txt`, makes the run text-conditioned),
            or a dataset whose items are videos `(c, f, h, w)` in [0, 1], `(video,
            caption)` pairs (the dataset then lists every caption in `.captions`), or
            `(video, cond)` pairs with vectors `(cond_dim,)`. A tensor of videos works.
        ema_decay: decay of the EMA copy of the weights.
        num_frames: unused, as in the original: clips have the model's `num_frames`.
        train_batch_size: videos per batch, per process.
        train_lr: Adam's learning rate.
        train_num_steps: optimisation steps to train for in total.
        gradient_accumulate_every: batches per optimisation step (each loss is divided by
            this number before its backward pass).
        amp: mixed precision: float16 autocast with a gradient scaler on CUDA, bfloat16
            autocast (no scaler) on the CPU and other devices.
        step_start_ema: before this step the EMA copy is reset to the weights.
        update_ema_every: steps between EMA updates.
        save_and_sample_every: steps between milestones; the last step is one too.
        results_folder: where `model-{m}.pt`, `{m}.gif`, `loss.png` and `run.json` go.
            Milestones are numbered on from the highest one in the folder, so no
            checkpoint is ever replaced by another step's.
        num_sample_rows: the sample grid is `num_sample_rows` x `num_sample_rows` videos.
        max_grad_norm: clip the gradient norm to this value when given.

    New, keyword-only:
        cond_drop_prob: probability of dropping each video's condition during training
            (classifier-free guidance; the U-net's `null_cond_prob`).
        sample_cond_scale: guidance scale of the milestone samples.
        horizontal_flip: flip clips at random (folders only; a dataset does its own).
        short_clips: what a folder's clips shorter than the model's `num_frames` become:
            "pad" (black frames at the end, the original's behaviour), "loop" or "skip"
            (see `VideoDataset`).
        image_folder: joint image-video training (Ho et al. 2022, §3): a folder of images
            (`ImageDataset`) or a dataset of images `(c, h, w)`.
        num_images_per_clip: images appended to each clip as extra frames; their
            temporal attention is masked, so they are learnt as independent images. They
            share the clip's condition.
        seed: seeds the random generators (offset by the process index) and the data
            order; milestone samples use their own generator seeded with it (0 if None).
        num_workers: DataLoader worker processes. A resumed run repeats an uninterrupted
            one exactly with any number of them.
        progress: show progress bars.
        mixed_precision: 'no', 'fp16' or 'bf16' through accelerate; None: `amp`, else
            accelerate's configuration (`accelerate launch --mixed_precision`,
            `accelerate config`, the `ACCELERATE_MIXED_PRECISION` variable).
        validation_clips: the dataset's last items held out of training; at milestones
            the EMA model's loss on them, with fixed noise and steps, is logged as
            `validation_loss` (None: a tenth of the data, at most 8, none below 10 clips).
        log_with: accelerate trackers ('tensorboard', 'wandb', ..., or a list) that receive
            the loss, learning rate, gradient norm and steps per second of every step,
            and the samples and validation loss of every milestone.
        logging_dir: where file-based trackers write (default `results_folder/logs`).
        compile: `torch.compile` the trained and EMA U-nets: True, or a mode string such
            as 'max-autotune' (see `compilation`).
        milestone_metrics: scores of the milestone samples `(n, c, f, h, w)` in [0, 1], e.g.
            `metrics.VideoMetrics(real_videos, ("fvd",))`: logged and returned like the
            validation loss (the sample grid is small: a rough, cheap signal).

    Run settings (every argument above but the model, data, folders and `progress`) are
    saved in each checkpoint under "run" and in `results_folder/run.json`. `load` restores
    them, except those given here with a value other than the default, which win (each
    difference reported in one line). Exposed like the original's: `model` (the
    GaussianDiffusion), `ema_model`, `opt`, `scaler`, `step`, `ds`, `results_folder`.
    """

    def __init__(
        self,
        diffusion_model: GaussianDiffusion,
        folder: str | os.PathLike | Any,
        *,
        ema_decay: float = 0.995,
        num_frames: int = 16,
        train_batch_size: int = 32,
        train_lr: float = 1e-4,
        train_num_steps: int = 100000,
        gradient_accumulate_every: int = 2,
        amp: bool = False,
        step_start_ema: int = 2000,
        update_ema_every: int = 10,
        save_and_sample_every: int = 1000,
        results_folder: str | os.PathLike = "./results",
        num_sample_rows: int = 4,
        max_grad_norm: float | None = None,
        cond_drop_prob: float = 0.0,
        sample_cond_scale: float = 1.0,
        horizontal_flip: bool = False,
        short_clips: str = "pad",
        image_folder: str | os.PathLike | Any | None = None,
        num_images_per_clip: int = 0,
        seed: int | None = None,
        num_workers: int = 0,
        progress: bool = True,
        mixed_precision: str | None = None,
        validation_clips: int | None = None,
        log_with: str | list[str] | None = None,
        logging_dir: str | os.PathLike | None = None,
        compile: bool | str = False,
        milestone_metrics: Callable[[Tensor], dict[str, float]] | None = None,
    ):
        if not isinstance(diffusion_model, nn.Module) or not hasattr(diffusion_model, "sample"):
            raise TypeError(f"diffusion_model must be a GaussianDiffusion, got {type(diffusion_model).__name__}")
        arguments = locals()
        settings = {name: arguments[name] for name in RUN_SETTINGS}
        check_settings(settings)
        defaults = self.default_settings()
        self.explicit_settings = {name for name, value in settings.items() if value != defaults[name]}
        for name, value in settings.items():
            setattr(self, name, value)

        self.results_folder = Path(results_folder)
        self.accelerator = build_accelerator(amp, mixed_precision, log_with, Path(default(logging_dir, self.results_folder / "logs")))
        self.device = self.accelerator.device
        self.progress = progress
        self.milestone_metrics = milestone_metrics
        self._lock = RunLock(self.results_folder)
        if self.is_main:
            self._lock.acquire()  # before any work: a second trainer on the folder stops at once
            weakref.finalize(self, self._lock.release)
            remove_temporary_files(self.results_folder)  # left by a run killed while saving
        self.image_size = diffusion_model.image_size
        try:
            self.data = self._training_data(diffusion_model, folder, image_folder, seed_processes(self.accelerator, seed))
        except BaseException:  # the folder stays free for a corrected run in this process
            self._lock.release()
            raise
        self.ds = self.data.ds

        self.model = diffusion_model
        self.ema_model = copy.deepcopy(diffusion_model).requires_grad_(False).to(self.device)
        if compile:
            compile_denoiser(self.model.denoise_fn, compile)
            compile_denoiser(self.ema_model.denoise_fn, compile)
        # on the device, DDP-wrapped when parallel, autocast under mixed precision
        self.training_model, self.opt = self.accelerator.prepare(diffusion_model, Adam(diffusion_model.parameters(), lr=train_lr))
        self.scaler = self.accelerator.scaler or torch.amp.GradScaler(self.device.type, enabled=False)

        self.step = 0
        self.milestone = max(list_milestones(self.results_folder), default=0)  # the last one written
        self.losses: list[float] = []
        self.reset_parameters()

    def _training_data(self, diffusion: GaussianDiffusion, folder: Any, image_folder: Any, seed: int) -> TrainingData:
        spec = DenoiserSpec.of(diffusion.denoise_fn)
        embed_text = None
        if spec.text:
            embed_text = bert_embedder(return_cls_repr=diffusion.text_use_bert_cls, model=diffusion.bert_model, device=self.device)
        return TrainingData(
            folder, video_shape=(diffusion.channels, diffusion.num_frames, self.image_size), spec=spec,
            embed_text=embed_text, seed=seed, cond_drop_prob=self.cond_drop_prob, cond_scale=self.sample_cond_scale,
            horizontal_flip=self.horizontal_flip, short_clips=self.short_clips, image_folder=image_folder,
            num_images_per_clip=self.num_images_per_clip, validation_clips=self.validation_clips,
            progress=self.progress and self.is_main,
        )  # fmt: skip

    @classmethod
    def default_settings(cls) -> dict[str, Any]:
        """The run settings' defaults, read from this constructor's signature."""
        return setting_defaults(cls.__init__)

    @property
    def settings(self) -> dict[str, Any]:
        """The run settings, by their argument names."""
        return {name: getattr(self, name) for name in RUN_SETTINGS}

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def batch_size(self) -> int:
        return self.train_batch_size

    @property
    def ema(self) -> EMA:
        return EMA(self.ema_decay)

    @property
    def autocast_dtype(self) -> torch.dtype:
        return autocast_dtype(self.accelerator)

    # ------------------------------------------------------------ EMA (the original's semantics)

    def reset_parameters(self) -> None:
        """Copy the weights into the EMA model."""
        self.ema_model.load_state_dict(self.model.state_dict())

    def step_ema(self) -> None:
        """Reset the EMA copy before `step_start_ema`, else move it towards the weights."""
        if self.step < self.step_start_ema:
            self.reset_parameters()
            return
        self.ema.update_model_average(self.ema_model, self.model)

    # ------------------------------------------------------------ training

    def _check_finite(self, loss: float, norm: float, step: int) -> None:
        """Stop at a NaN or infinite loss, or gradient norm (without a gradient scaler,
        which skips such steps), before the step's weights reach the EMA or a checkpoint."""
        if math.isfinite(loss) and (math.isfinite(norm) or self.scaler.is_enabled()):
            return
        what = f"the training loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {norm}"
        last = f"; the last is model-{self.milestone}.pt" if self.milestone else ""
        raise NonFiniteLossError(
            f"{what} at step {step}: training stopped before any non-finite weights were written (checkpoints in "
            f"{self.results_folder} are intact{last}); lower train_lr, set max_grad_norm, or check the data"
        )

    def _milestone_after(self, step: int) -> bool:
        """Whether step `step` (0-based) ends a milestone: every `save_and_sample_every`
        steps as in the original (not step 0), and the last step of the run."""
        return (step != 0 and step % self.save_and_sample_every == 0) or step == self.train_num_steps - 1

    def train(
        self,
        prob_focus_present: float = 0.0,
        focus_present_mask: Tensor | None = None,
        log_fn: Callable[[dict[str, Any]], Any] = noop,
    ) -> None:
        """Train from `self.step` to `train_num_steps`.

        Args:
            prob_focus_present: probability per video of training as independent frames
                (the U-net's "focus on the present").
            focus_present_mask: bool `(batch,)`, overriding `prob_focus_present`.
            log_fn: called on the main process after every step with `{'loss': mean loss
                of the step over its batches and processes}`, plus at milestones `'sample'`
                (the path of the grid GIF) and `'validation_loss'` (with held-out clips).
        Raises `NonFiniteLossError` naming the step when the loss becomes NaN or infinite.
        """
        if not callable(log_fn):
            raise TypeError(f"log_fn must be callable, got {type(log_fn).__name__}")
        check_number("prob_focus_present", prob_focus_present, low=0, high=1)  # before any step
        focus = dict(prob_focus_present=prob_focus_present, focus_present_mask=focus_present_mask)
        if exists(focus_present_mask):
            focus["focus_present_mask"] = focus_present_mask.to(self.device)
        if self.is_main and not self._lock.held:
            self._lock.acquire()
        self.accelerator.gradient_accumulation_steps = self.gradient_accumulate_every  # shared by the process's Trainers
        self.accelerator.step = 0
        start_trackers(self.accelerator, self.settings)
        batches = self.data.batches(self.accelerator, self.train_batch_size, self.num_workers)
        try:
            self._train_loop(batches, focus, log_fn)
        finally:
            batches.close()
            self.accelerator.end_training()
            self._lock.release()
        logger.info("training completed at step %d", self.step)

    def _train_loop(self, batches: Iterator[Batch], focus: dict[str, Any], log_fn: Callable) -> None:
        bar = tqdm(
            total=self.train_num_steps, initial=self.step, desc="training",
            disable=not (self.progress and self.is_main), dynamic_ncols=True,
        )  # fmt: skip
        with bar:
            while self.step < self.train_num_steps:
                step, started = self.step, time.perf_counter()
                loss, norm = optimisation_step(
                    self.accelerator, self.training_model, self.opt, batches, self.gradient_accumulate_every,
                    max_grad_norm=self.max_grad_norm, null_cond_prob=self.cond_drop_prob, **focus,
                )  # fmt: skip
                loss, norm = torch.stack((loss, norm.float())).tolist()  # the step's one host sync
                self._check_finite(loss, norm, step)
                if step % self.update_ema_every == 0:
                    self.step_ema()
                self.step += 1
                self.losses.append(loss)
                lr = self.opt.param_groups[0]["lr"]
                steps_per_s = 1 / (time.perf_counter() - started)
                self.accelerator.log(dict(loss=loss, lr=lr, grad_norm=norm, steps_per_s=steps_per_s), step=self.step)
                log = {"loss": loss}
                if self._milestone_after(step):
                    log.update(self._milestone())
                if self.is_main:
                    log_fn(log)
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                bar.update()

    def _milestone(self) -> dict[str, Any]:
        """Save the next milestone and, on the main process, its samples, loss curve and
        validation loss (`milestones.write_outputs`); returns what `log_fn` reports of it."""
        milestone = self.milestone + 1
        self.save(milestone)
        return write_outputs(self, milestone) if self.is_main else {}

    @property
    def sample_seed(self) -> int:
        return default(self.seed, 0)

    # ------------------------------------------------------------ checkpoints

    def save(self, milestone: int | None = None) -> Path:
        """Write `results_folder/model-{milestone}.pt` (default: the next milestone) and
        `run.json` atomically, on the main process; every process must call it, since each
        contributes its random state. A full disk leaves the earlier checkpoints intact."""
        rng = gather_object([capture_rng_state()])  # one entry per process
        milestone = default(milestone, self.milestone + 1)
        path = checkpoint_path(self.results_folder, milestone)
        if self.is_main:
            save_checkpoint(run_checkpoint(self, rng), path)  # a full disk: one OSError, the file left as it was
            write_run_file(self.results_folder, self.settings, step=self.step, milestone=milestone)
        self.milestone = max(self.milestone, milestone)
        self.accelerator.wait_for_everyone()
        return path

    def load(self, milestone: int = -1, *, strict: bool = True) -> list[str]:
        """Restore `results_folder/model-{milestone}.pt` (-1: the one of the latest step)
        with `restore`; returns its report of settings that differ from the checkpoint's.

        Checkpoints of the original library load too; they hold no optimizer or random
        state, so Adam's moments and the data order start afresh.
        """
        path = checkpoint_path(self.results_folder, resolve_milestone(self.results_folder, milestone))
        return self.restore(load_checkpoint(path), strict=strict, source=path)

    def restore(
        self, checkpoint: dict[str, Any], *, keep: set[str] | None = None, strict: bool = True, source: Any = "the checkpoint"
    ) -> list[str]:
        """Continue from a loaded checkpoint: weights, EMA copy, step, Adam, scaler, random
        states, data positions and run settings.

        Args:
            checkpoint: as read by `checkpoint.load_checkpoint`.
            keep: settings that stay as this Trainer has them (default: those given to
                the constructor with a non-default value); the others take the
                checkpoint's values.
            strict: the weights must match the model's parameters exactly.
            source: names the checkpoint in messages.
        Returns one line per setting that differs from the checkpoint's and stays, such as
        `train_lr: 0.0001 -> 0.0003` (also logged).
        """
        return restore_run(self, checkpoint, keep=default(keep, self.explicit_settings), strict=strict, source=source)
