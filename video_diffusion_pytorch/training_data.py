"""The Trainer's data: clips (and images for joint training), their conditions, a few
held-out clips for the validation loss, and where each stream stands.

It yields plain values (videos, conditions, the per-frame mask of joint training); it is
told the clip shape, what the denoiser takes and how to embed captions, and knows
nothing of the diffusion model itself.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterator, NamedTuple

import torch
from accelerate import Accelerator
from einops import rearrange
from torch import Tensor
from torch.utils.data import Subset

from .checks import check_finite, check_video_values
from .data import ImageDataset, VideoDataset
from .denoiser import DenoiserSpec
from .helpers import exists
from .loader import CaptionEmbeddings, PositionSeeded, condition_kind, endless_loader, split_item
from .text import embed_texts

logger = logging.getLogger(__name__)

IMAGE_STREAM_OFFSET = 2**32  # the image stream's seed, apart from every epoch seed of the clip stream
VALIDATION_STREAM_OFFSET = 2**33  # the held-out clips' augmentation seed


class Batch(NamedTuple):
    """One batch on the device: `videos (b, c, f, h, w)` in [0, 1] (f includes the images
    of joint training), `cond (b, cond_dim)` or None, and `independent_frames (f,)` (True
    for appended images) or None."""

    videos: Tensor
    cond: Tensor | None
    independent_frames: Tensor | None


def bert_embedder(*, return_cls_repr: bool, model: str | None, device: torch.device) -> Callable[[list[str]], Tensor]:
    """Captions -> BERT embeddings `(n, 768)`, with a model's text settings."""
    return lambda texts: embed_texts(texts, return_cls_repr=return_cls_repr, device=device, model=model)


def _first_item(dataset: Any, what: str) -> tuple[Tensor, Any]:
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise TypeError(f"{what} must be a folder path or a dataset (with __len__ and __getitem__), got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise ValueError(f"{what} is empty: need at least one item to train on")
    return split_item(dataset[0])


def default_validation_clips(num_clips: int) -> int:
    """Clips held out when not told: a tenth of the data, at most 8 (none below 10 clips)."""
    return min(8, num_clips // 10)


class TrainingData:
    """Batches for the Trainer, which gives every argument (its own defaults are the only ones).

    Args:
        folder: a folder for `VideoDataset`, or a dataset (see `Trainer`).
        video_shape: `(channels, frames, size)` of the clips the model takes.
        spec: what the denoiser takes; the dataset's conditions are checked against it.
        embed_text: captions -> embeddings, for text-conditioned models.
        seed: the seed of the data order, the same in every process.
        cond_drop_prob: the caption dropout the model will be trained with (checked here).
        cond_scale: the guidance scale of the milestone samples (checked here).
        horizontal_flip, short_clips: `VideoDataset` options (folders only).
        image_folder, num_images_per_clip: joint image-video training.
        validation_clips: the last items of the dataset, held out of training for the
            validation loss (None: `default_validation_clips`).
        progress: show a progress bar while captions are embedded.
    """

    def __init__(
        self,
        folder: str | os.PathLike | Any,
        *,
        video_shape: tuple[int, int, int],
        spec: DenoiserSpec,
        embed_text: Callable[[list[str]], Tensor] | None,
        seed: int,
        cond_drop_prob: float,
        cond_scale: float,
        horizontal_flip: bool,
        short_clips: str,
        image_folder: str | os.PathLike | Any | None,
        num_images_per_clip: int,
        validation_clips: int | None,
        progress: bool,
    ):
        channels, self.num_frames, size = video_shape
        self.seed, self.position, self.image_position = seed, 0, 0  # positions: in the streams, over all processes
        self.ds = self._clips(folder, video_shape, horizontal_flip, short_clips)
        video, condition = _first_item(self.ds, "the training data")
        if tuple(video.shape) != (channels, self.num_frames, size, size):
            raise ValueError(
                f"the model takes videos (channels, frames, height, width) = {(channels, self.num_frames, size, size)}, "
                f"but the dataset yields {tuple(video.shape)}"
            )
        check_video_values(video, "the training data's first video")  # fail at once, not at the first batch
        self.condition_kind = condition_kind(condition)
        shape = tuple(condition.shape) if self.condition_kind == "vector" else None
        spec.check_condition(
            self.condition_kind, shape=shape, cond_drop_prob=cond_drop_prob, cond_scale=cond_scale, source="dataset"
        )  # fmt: skip
        self._split(validation_clips)

        self.caption_embeddings = None
        if self.condition_kind == "text":
            captions = getattr(self.ds, "captions", None)
            if captions is None:
                raise ValueError("a dataset of (video, caption) pairs must list every caption in a `captions` attribute")
            self.caption_embeddings = CaptionEmbeddings(captions, embed_text, progress=progress)
        self.num_images_per_clip = num_images_per_clip
        self.image_ds = self._images(image_folder, num_images_per_clip, channels, size, horizontal_flip)

    @staticmethod
    def _clips(folder: Any, video_shape: tuple[int, int, int], horizontal_flip: bool, short_clips: str) -> Any:
        if isinstance(folder, (str, os.PathLike)):
            channels, frames, size = video_shape
            dataset = VideoDataset(folder, size, channels, frames, horizontal_flip=horizontal_flip, short_clips=short_clips)
            logger.info("found %d videos in %s", len(dataset), folder)
            return dataset
        if horizontal_flip:
            raise ValueError("horizontal_flip applies to a folder; a dataset does its own transforms")
        return folder

    def _split(self, validation_clips: int | None) -> None:
        """Hold the last `validation_clips` items out of the training stream."""
        held_out = default_validation_clips(len(self.ds)) if validation_clips is None else validation_clips
        if not isinstance(held_out, int) or not 0 <= held_out < len(self.ds):
            raise ValueError(
                f"validation_clips must be an integer in [0, {len(self.ds)}) for a dataset of {len(self.ds)} items, "
                f"got {validation_clips!r}"
            )
        kept = len(self.ds) - held_out
        self.train_ds = Subset(self.ds, range(kept)) if held_out else self.ds
        self.validation_ds = Subset(self.ds, range(kept, len(self.ds))) if held_out else None

    @staticmethod
    def _images(image_folder: Any, num_images: int, channels: int, size: int, horizontal_flip: bool) -> Any:
        if (image_folder is None) != (num_images == 0):
            raise ValueError(
                "joint image-video training needs both image_folder and num_images_per_clip > 0, "
                f"got image_folder={image_folder!r} and num_images_per_clip={num_images}"
            )
        if image_folder is None:
            return None
        if isinstance(image_folder, (str, os.PathLike)):
            images = ImageDataset(image_folder, size, channels, horizontal_flip=horizontal_flip)
        else:
            images = image_folder
        image, _ = _first_item(images, "the image data")
        if tuple(image.shape) != (channels, size, size):
            raise ValueError(f"the model takes images {(channels, size, size)}, but the image data yields {tuple(image.shape)}")
        return images

    # ------------------------------------------------------------ streams

    def _loader(self, accelerator: Accelerator, dataset: Any, batch_size: int, seed: int, start: int, num_workers: int) -> Any:
        loader = endless_loader(
            dataset, batch_size, seed=seed, start=start, num_workers=num_workers,
            pin_memory=accelerator.device.type == "cuda",
        )  # fmt: skip
        # each process its own batches; they stay on the CPU until their values are checked
        return accelerator.prepare_data_loader(loader, device_placement=False)

    def _condition(self, condition: Any, device: torch.device, where: str = "") -> Tensor | None:
        if self.condition_kind == "text":
            return self.caption_embeddings(condition).to(device)
        if self.condition_kind == "vector":
            check_finite(condition, f"{where}: cond")
            return condition.to(device)
        return None

    def batches(self, accelerator: Accelerator, batch_size: int, num_workers: int = 0) -> Iterator[Batch]:
        """Endless batches of `batch_size` clips per process, from the current positions on."""
        loaders = [self._loader(accelerator, self.train_ds, batch_size, self.seed, self.position, num_workers)]
        k = self.num_images_per_clip
        if exists(self.image_ds):
            seed = self.seed + IMAGE_STREAM_OFFSET
            loaders.append(self._loader(accelerator, self.image_ds, batch_size * k, seed, self.image_position, num_workers))
        try:
            yield from self._batches(accelerator, batch_size, *map(iter, loaders))
        finally:
            for loader in loaders:
                loader.end()  # accelerate forgets the endless loaders

    def _batches(self, accelerator: Accelerator, batch_size: int, clips: Iterator, images: Iterator | None = None) -> Iterator[Batch]:
        device, processes, k = accelerator.device, accelerator.num_processes, self.num_images_per_clip
        independent_frames = None
        if exists(images):
            independent_frames = torch.tensor([False] * self.num_frames + [True] * k, device=device)
        rank = accelerator.process_index
        while True:
            videos, condition = split_item(next(clips))
            # values are checked on the CPU, before the transfer (no device sync)
            where = f"the training data's batch at stream position {self.position + rank * batch_size}"
            check_video_values(videos, f"{where}: videos")
            self.position += batch_size * processes
            videos = videos.to(device, non_blocking=True)
            if exists(images):
                image_batch, _ = split_item(next(images))
                check_video_values(image_batch, f"the image data's batch at stream position {self.image_position + rank * batch_size * k}")
                self.image_position += batch_size * k * processes
                # (b * k, c, h, w) -> (b, c, k, h, w): k extra frames per clip
                image_batch = rearrange(image_batch.to(device, non_blocking=True), "(b k) c h w -> b c k h w", b=videos.shape[0])
                videos = torch.cat((videos, image_batch), dim=2)  # (b, c, f + k, h, w)
            yield Batch(videos, self._condition(condition, device, where), independent_frames)

    def validation_batch(self) -> Batch | None:
        """The held-out clips and their conditions, on the CPU, the same at every call."""
        if self.validation_ds is None:
            return None
        items = PositionSeeded(self.validation_ds, self.seed + VALIDATION_STREAM_OFFSET)
        videos, conditions = zip(*(split_item(items[index, index]) for index in range(len(items))))
        cond = None
        if self.condition_kind != "none":
            cond = self._condition(list(conditions) if self.condition_kind == "text" else torch.stack(conditions), torch.device("cpu"))
        return Batch(torch.stack(videos), cond, None)

    def sample_conditions(self, n: int) -> tuple[Tensor | None, list[str] | None]:
        """Conditions `(n, cond_dim)` for milestone samples, and their prompts for text models
        (the distinct captions in order, repeated as needed)."""
        if self.condition_kind == "text":
            distinct = self.caption_embeddings.captions
            prompts = [distinct[i % len(distinct)] for i in range(n)]
            return self.caption_embeddings(prompts), prompts
        if self.condition_kind == "vector":  # the conditions of the first items, in order
            return torch.stack([split_item(self.ds[i % len(self.ds)])[1] for i in range(n)]), None
        return None, None

    def state_dict(self) -> dict[str, int]:
        """Where the streams stand: the data seed and the clip and image positions."""
        return {"seed": self.seed, "position": self.position, "image_position": self.image_position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue the streams from a `state_dict`."""
        self.seed, self.position, self.image_position = state["seed"], state["position"], state["image_position"]
