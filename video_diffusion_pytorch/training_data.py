"""The Trainer's data: clips (and images for joint training), their conditions, and where
each stream stands, checked against the model once, at construction."""

from __future__ import annotations

import logging
import os
from typing import Any, Iterator

import torch
from einops import rearrange
from torch import Tensor

from .checks import check_finite, check_video_values
from .data import ImageDataset, VideoDataset
from .diffusion import GaussianDiffusion
from .helpers import exists
from .loader import CaptionEmbeddings, condition_kind, endless_loader, split_item
from .text import embed_texts

logger = logging.getLogger(__name__)

IMAGE_STREAM_OFFSET = 2**32  # the image stream's seed, apart from every epoch seed of the clip stream


def _first_item(dataset: Any, what: str) -> tuple[Tensor, Any]:
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise TypeError(f"{what} must be a folder path or a dataset (with __len__ and __getitem__), got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise ValueError(f"{what} is empty: need at least one item to train on")
    return split_item(dataset[0])


class TrainingData:
    """Batches for the Trainer, ready for `GaussianDiffusion.forward`.

    Args:
        diffusion: the model; sets the clip shape and which conditions it takes.
        folder: a folder for `VideoDataset`, or a dataset (see `Trainer`).
        batch_size: clips per batch, per process.
        seed: the seed of the data order, the same in every process.
        device: where batches go.
        rank, num_processes: this process among the data-parallel ones.
        cond_drop_prob: the model's `null_cond_prob` during training.
        num_samples: how many conditions `sample_conditions` must provide.
        horizontal_flip, short_clips: `VideoDataset` options (folders only).
        image_folder, num_images_per_clip: joint image-video training.
        num_workers: DataLoader worker processes.
        progress: show a progress bar while captions are embedded.
    """

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        folder: str | os.PathLike | Any,
        *,
        batch_size: int,
        seed: int,
        device: torch.device,
        rank: int = 0,
        num_processes: int = 1,
        cond_drop_prob: float = 0.0,
        num_samples: int = 1,
        horizontal_flip: bool = False,
        short_clips: str = "pad",
        image_folder: str | os.PathLike | Any | None = None,
        num_images_per_clip: int = 0,
        num_workers: int = 0,
        progress: bool = True,
    ):
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.rank, self.num_processes, self.num_workers = rank, num_processes, num_workers
        self.cond_drop_prob, self.has_cond = cond_drop_prob, diffusion.has_cond
        self.num_frames = diffusion.num_frames
        self.position = 0  # in the stream of clips, over all processes
        self.image_position = 0
        channels, size = diffusion.channels, diffusion.image_size

        if isinstance(folder, (str, os.PathLike)):
            self.ds = VideoDataset(
                folder, size, channels, self.num_frames, horizontal_flip=horizontal_flip, short_clips=short_clips
            )
            logger.info("found %d videos in %s", len(self.ds), folder)
        elif horizontal_flip:
            raise ValueError("horizontal_flip applies to a folder; a dataset does its own transforms")
        else:
            self.ds = folder
        video, condition = _first_item(self.ds, "the training data")
        expected = (channels, self.num_frames, size, size)
        if tuple(video.shape) != expected:
            raise ValueError(
                f"the model takes videos (channels, frames, height, width) = {expected}, "
                f"but the dataset yields {tuple(video.shape)}"
            )
        check_video_values(video, "the training data's first video")  # fail at once, not at the first batch
        self.condition_kind = condition_kind(condition)
        shape = tuple(condition.shape) if self.condition_kind == "vector" else None
        diffusion.spec.check_condition(self.condition_kind, shape=shape, cond_drop_prob=cond_drop_prob, source="dataset")

        self.caption_embeddings = None
        self.vector_samples = None  # the conditions of the first items, for vector-conditioned samples
        if self.condition_kind == "text":
            captions = getattr(self.ds, "captions", None)
            if captions is None:
                raise ValueError("a dataset of (video, caption) pairs must list every caption in a `captions` attribute")

            def embed(texts: list[str]) -> Tensor:
                return embed_texts(texts, return_cls_repr=diffusion.text_use_bert_cls, device=device, model=diffusion.bert_model)

            self.caption_embeddings = CaptionEmbeddings(captions, embed, progress=progress)
        elif self.condition_kind == "vector":
            self.vector_samples = torch.stack([split_item(self.ds[i % len(self.ds)])[1] for i in range(num_samples)])

        self.num_images_per_clip, self.image_ds = num_images_per_clip, None
        if (image_folder is None) != (num_images_per_clip == 0):
            raise ValueError(
                "joint image-video training needs both image_folder and num_images_per_clip > 0, "
                f"got image_folder={image_folder!r} and num_images_per_clip={num_images_per_clip}"
            )
        if image_folder is not None:
            if isinstance(image_folder, (str, os.PathLike)):
                self.image_ds = ImageDataset(image_folder, size, channels, horizontal_flip=horizontal_flip)
            else:
                self.image_ds = image_folder
            image, _ = _first_item(self.image_ds, "the image data")
            if tuple(image.shape) != (channels, size, size):
                raise ValueError(f"the model takes images {(channels, size, size)}, but the image data yields {tuple(image.shape)}")

    def batches(self) -> Iterator[tuple[Tensor, dict[str, Any]]]:
        """Endless `(videos, keywords for the model)` on the device, from the current positions on."""
        options = dict(
            rank=self.rank, num_replicas=self.num_processes, num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )  # fmt: skip
        clips = iter(endless_loader(self.ds, self.batch_size, seed=self.seed, start=self.position, **options))
        images = None
        if exists(self.image_ds):
            k = self.num_images_per_clip
            images = iter(endless_loader(
                self.image_ds, self.batch_size * k, seed=self.seed + IMAGE_STREAM_OFFSET,
                start=self.image_position, **options,
            ))  # fmt: skip
            independent_frames = torch.tensor([False] * self.num_frames + [True] * k, device=self.device)

        while True:
            videos, condition = split_item(next(clips))
            where = f"the training data's batch at stream position {self.position + self.rank}"
            check_video_values(videos, f"{where}: videos")  # on the CPU, before the transfer
            self.position += self.batch_size * self.num_processes
            videos = videos.to(self.device)
            kwargs: dict[str, Any] = {}
            if self.condition_kind == "text":
                kwargs["cond"] = self.caption_embeddings(condition).to(self.device)
            elif self.condition_kind == "vector":
                check_finite(condition, f"{where}: cond")
                kwargs["cond"] = condition.to(self.device)
            if self.has_cond:
                kwargs["null_cond_prob"] = self.cond_drop_prob
            if exists(images):
                image_batch, _ = split_item(next(images))
                check_video_values(image_batch, f"the image data's batch at stream position {self.image_position + self.rank}")
                self.image_position += self.batch_size * self.num_images_per_clip * self.num_processes
                # (b * k, c, h, w) -> (b, c, k, h, w): k extra frames per clip
                image_batch = rearrange(image_batch.to(self.device), "(b k) c h w -> b c k h w", b=videos.shape[0])
                videos = torch.cat((videos, image_batch), dim=2)  # (b, c, f + k, h, w)
                kwargs["independent_frames"] = independent_frames
            yield videos, kwargs

    def sample_conditions(self, n: int) -> tuple[Tensor | None, list[str] | None]:
        """Conditions `(n, cond_dim)` for milestone samples, and their prompts for text models
        (the distinct captions in order, repeated as needed)."""
        if self.condition_kind == "text":
            distinct = self.caption_embeddings.captions
            prompts = [distinct[i % len(distinct)] for i in range(n)]
            return self.caption_embeddings(prompts), prompts
        if self.condition_kind == "vector":
            return self.vector_samples[:n], None
        return None, None

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "position": self.position, "image_position": self.image_position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.position, self.image_position = state["seed"], state["position"], state["image_position"]
