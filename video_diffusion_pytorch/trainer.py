"""Trainer: the original library's training loop, on `accelerate`.

It trains a GaussianDiffusion on a folder of clips (or any dataset), on whatever device
the machine has (CPU included) and in several processes when launched with `torchrun`
or `accelerate launch` (data parallel: each process draws its own batches, gradients
are averaged). Every `save_and_sample_every` steps, and at the last step, it writes a
checkpoint, a grid of samples from the EMA model and the loss curve. Only the main
process writes files, samples and logs.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object, set_seed
from torch import Tensor, nn
from torch.optim import Adam
from tqdm.auto import tqdm

from .checkpoint import (
    FORMAT_VERSION,
    capture_rng_state,
    checkpoint_path,
    load_checkpoint,
    resolve_milestone,
    restore_rng_state,
    save_checkpoint,
)
from .data import video_tensor_to_gif
from .files import atomic_write_text, remove_temporary_files
from .diffusion import GaussianDiffusion
from .ema import EMA
from .helpers import default, exists, num_to_groups
from .hub import describe_model
from .results import plot_losses, video_grid
from .training_data import TrainingData

logger = logging.getLogger(__name__)

class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite; the message names the step."""


def noop(*args: Any, **kwargs: Any) -> None:
    """A `log_fn` that ignores its arguments."""


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
        results_folder: where `model-{m}.pt`, `{m}.gif` and `loss.png` go.
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
        num_workers: DataLoader worker processes. With 0 (the default) a resumed run
            repeats an uninterrupted one exactly; with workers the data order still
            does, but random augmentations are drawn anew.
        progress: show progress bars.

    Exposed like the original's: `model` (the GaussianDiffusion), `ema_model`, `opt`,
    `scaler`, `step`, `ds`, `results_folder`.
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
    ):
        if not isinstance(diffusion_model, nn.Module) or not hasattr(diffusion_model, "sample"):
            raise TypeError(f"diffusion_model must be a GaussianDiffusion, got {type(diffusion_model).__name__}")
        positive = dict(
            train_batch_size=train_batch_size, gradient_accumulate_every=gradient_accumulate_every,
            update_ema_every=update_ema_every, save_and_sample_every=save_and_sample_every,
            num_sample_rows=num_sample_rows,
        )  # fmt: skip
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name, value in dict(train_num_steps=train_num_steps, num_images_per_clip=num_images_per_clip,
                                num_workers=num_workers, step_start_ema=step_start_ema).items():  # fmt: skip
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if not 0 <= cond_drop_prob <= 1:
            raise ValueError(f"cond_drop_prob must be in [0, 1], got {cond_drop_prob}")
        if exists(max_grad_norm) and max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be positive, got {max_grad_norm}")

        # mixed precision is this Trainer's own autocast, not the Accelerator's: the
        # accelerate state is one per process, and several Trainers may live in one
        self.accelerator = Accelerator(mixed_precision="no")
        self.device = self.accelerator.device
        self.progress = progress
        if exists(seed):
            set_seed(seed, device_specific=True)
        elif self.accelerator.num_processes > 1:
            # fresh processes share torch's default seed; each needs its own noise
            torch.manual_seed(torch.initial_seed() + self.accelerator.process_index)
        data_seed = default(seed, lambda: int(torch.randint(2**62, ()).item()))
        self.sample_seed = default(seed, 0)

        self.batch_size = train_batch_size
        self.image_size = diffusion_model.image_size
        self.gradient_accumulate_every = gradient_accumulate_every
        self.train_num_steps = train_num_steps
        self.step_start_ema = step_start_ema
        self.update_ema_every = update_ema_every
        self.save_and_sample_every = save_and_sample_every
        self.num_sample_rows = num_sample_rows
        self.max_grad_norm = max_grad_norm
        self.sample_cond_scale = sample_cond_scale

        self.data = TrainingData(
            diffusion_model, folder, batch_size=train_batch_size, seed=broadcast_object_list([data_seed])[0],
            device=self.device, rank=self.accelerator.process_index, num_processes=self.accelerator.num_processes,
            cond_drop_prob=cond_drop_prob, num_samples=num_sample_rows**2, horizontal_flip=horizontal_flip,
            short_clips=short_clips, image_folder=image_folder, num_images_per_clip=num_images_per_clip,
            num_workers=num_workers, progress=progress and self.is_main,
        )  # fmt: skip
        self.ds = self.data.ds

        self.model = diffusion_model
        self.ema = EMA(ema_decay)
        self.ema_model = copy.deepcopy(diffusion_model).requires_grad_(False)
        self.opt = Adam(diffusion_model.parameters(), lr=train_lr)
        self.training_model = self.accelerator.prepare_model(diffusion_model)  # on the device; DDP-wrapped when parallel
        self.ema_model.to(self.device)

        self.amp = amp
        self.autocast_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp and self.device.type == "cuda")

        self.step = 0
        self.losses: list[float] = []
        self.results_folder = Path(results_folder)
        if self.is_main:
            self.results_folder.mkdir(parents=True, exist_ok=True)
            remove_temporary_files(self.results_folder)  # left by a run killed while saving
        self.reset_parameters()

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

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

    def _train_step(self, batches: Iterator, prob_focus_present: float, focus_present_mask: Tensor | None) -> float:
        """One optimisation step over `gradient_accumulate_every` batches; returns the mean loss."""
        total = torch.zeros((), device=self.device)
        for index in range(self.gradient_accumulate_every):
            videos, kwargs = next(batches)
            last = index == self.gradient_accumulate_every - 1
            # gradients are averaged across processes only on the last backward pass
            with nullcontext() if last else self.accelerator.no_sync(self.training_model):
                with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.amp):
                    loss = self.training_model(
                        videos, prob_focus_present=prob_focus_present, focus_present_mask=focus_present_mask, **kwargs
                    )
                self.accelerator.backward(self.scaler.scale(loss / self.gradient_accumulate_every))
            total += loss.detach().float()

        if exists(self.max_grad_norm):
            self.scaler.unscale_(self.opt)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        return self.accelerator.reduce(total / self.gradient_accumulate_every, reduction="mean").item()

    def _milestone_after(self, step: int) -> int | None:
        """The milestone that step `step` (0-based) ends, if any: every `save_and_sample_every`
        steps as in the original (not step 0), and the last step of the run."""
        every = self.save_and_sample_every
        if step != 0 and step % every == 0:
            return step // every
        if step == self.train_num_steps - 1:
            return step // every + 1
        return None

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
                of the step over its batches and processes}`, plus `'sample'`: the path of
                the grid GIF at milestones.
        """
        if not callable(log_fn):
            raise TypeError(f"log_fn must be callable, got {type(log_fn).__name__}")
        if exists(focus_present_mask):
            focus_present_mask = focus_present_mask.to(self.device)
        batches = self.data.batches()
        bar = tqdm(
            total=self.train_num_steps, initial=self.step, desc="training",
            disable=not (self.progress and self.is_main), dynamic_ncols=True,
        )  # fmt: skip
        with bar:
            while self.step < self.train_num_steps:
                step = self.step
                loss = self._train_step(batches, prob_focus_present, focus_present_mask)
                if not math.isfinite(loss):  # the loss is on the host already: no extra sync
                    raise NonFiniteLossError(
                        f"the training loss is {loss} at step {step}: training stopped before any non-finite "
                        f"weights were written (checkpoints in {self.results_folder} are intact); lower train_lr, "
                        "set max_grad_norm, or check the data"
                    )
                if step % self.update_ema_every == 0:
                    self.step_ema()
                self.step += 1
                self.losses.append(loss)
                log: dict[str, Any] = {"loss": loss}

                milestone = self._milestone_after(step)
                if exists(milestone):
                    self.save(milestone)
                    if self.is_main:
                        log["sample"] = str(self._write_samples(milestone))
                        plot_losses(self.losses, self.results_folder / "loss.png")
                if self.is_main:
                    log_fn(log)
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                bar.update()
        batches.close()
        logger.info("training completed at step %d", self.step)

    # ------------------------------------------------------------ samples

    @torch.no_grad()
    def _write_samples(self, milestone: int) -> Path:
        """Sample `num_sample_rows ** 2` videos from the EMA model into `{milestone}.gif`
        (and their prompts into `{milestone}.txt`); the noise is the same at every milestone."""
        n = self.num_sample_rows**2
        conditions, prompts = self.data.sample_conditions(n)
        generator = torch.Generator(self.device).manual_seed(self.sample_seed)
        videos, start = [], 0
        for size in num_to_groups(n, self.batch_size):
            cond = conditions[start : start + size].to(self.device) if exists(conditions) else None
            videos.append(self.ema_model.sample(
                cond=cond, cond_scale=self.sample_cond_scale, batch_size=size, generator=generator,
                progress=self.progress,
            ))  # fmt: skip
            start += size
        path = self.results_folder / f"{milestone}.gif"
        video_tensor_to_gif(video_grid(torch.cat(videos).cpu(), self.num_sample_rows), path)
        if exists(prompts):
            atomic_write_text(self.results_folder / f"{milestone}.txt", "\n".join(prompts) + "\n")
        return path

    # ------------------------------------------------------------ checkpoints

    def save(self, milestone: int) -> Path:
        """Write `results_folder/model-{milestone}.pt` atomically (main process; every
        process must call it, since each contributes its random state)."""
        rng = gather_object([capture_rng_state()])  # one entry per process
        path = checkpoint_path(self.results_folder, milestone)
        if self.is_main:
            try:
                config = describe_model(self.model)
            except TypeError:  # a custom denoiser: the checkpoint still resumes training
                config = None
            checkpoint = {
                "step": self.step,
                "model": self.model.state_dict(),
                "ema": self.ema_model.state_dict(),
                "scaler": self.scaler.state_dict(),
                "format_version": FORMAT_VERSION,
                "optimizer": self.opt.state_dict(),
                "rng": rng,
                "data": self.data.state_dict(),
                "losses": torch.tensor(self.losses, dtype=torch.float64),
                "config": config,
            }
            save_checkpoint(checkpoint, path)
        self.accelerator.wait_for_everyone()
        return path

    def load(self, milestone: int = -1, *, strict: bool = True) -> None:
        """Restore `results_folder/model-{milestone}.pt` (-1: the latest milestone).

        Checkpoints of the original library load too; they hold no optimizer or random
        state, so Adam's moments and the data order start afresh.
        """
        milestone = resolve_milestone(self.results_folder, milestone)
        path = checkpoint_path(self.results_folder, milestone)
        checkpoint = load_checkpoint(path)
        try:
            self.model.load_state_dict(checkpoint["model"], strict=strict)
            self.ema_model.load_state_dict(checkpoint["ema"], strict=strict)
        except RuntimeError as error:
            raise ValueError(f"{path} does not fit this model: {error}") from error
        self.step = int(checkpoint["step"])
        if checkpoint["scaler"] and self.scaler.is_enabled():
            self.scaler.load_state_dict(checkpoint["scaler"])
        if "format_version" not in checkpoint:
            logger.info("%s comes from the original library: Adam and the data order start afresh", path)
            return
        self.opt.load_state_dict(checkpoint["optimizer"])
        self.data.load_state_dict(checkpoint["data"])
        self.losses = checkpoint["losses"].tolist()
        states = checkpoint["rng"]
        if len(states) == self.accelerator.num_processes:
            restore_rng_state(states[self.accelerator.process_index])
        else:
            logger.warning(
                "%s was written by %d processes, not %d: random streams continue from the current state",
                path, len(states), self.accelerator.num_processes,
            )  # fmt: skip
