"""What the Trainer feeds the model: endless, resumable batch streams and their conditions.

A dataset item is a video `(c, f, h, w)`, or a pair `(video, caption)` for text
conditioning, or `(video, cond)` with a conditioning vector `(cond_dim,)`. Batches come
from an endless shuffled stream of indices whose position is a plain integer, so a
checkpoint can record it and a resumed run continues with exactly the batches an
uninterrupted run would have seen. The stream is cut into batches and the batches are
dealt to the processes by `accelerate` (process `r` of `n` takes batches `r, r + n, ...`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

# ---------------------------------------------------------------- index stream


class InfiniteSampler(Sampler[tuple[int, int]]):
    """Endless shuffled `(index, position)` pairs over a dataset of `length` items.

    Epoch `e` of the stream is `randperm(length)` drawn from a generator seeded with
    `seed + e`; the stream starts at position `start`. Every process uses the same
    stream; `accelerate` gives each its own batches of it.
    """

    def __init__(self, length: int, *, seed: int, start: int = 0):
        if length < 1:
            raise ValueError(f"cannot sample from an empty dataset (length {length})")
        self.length, self.seed, self.start = length, seed, start

    def _order(self, epoch: int) -> Tensor:
        return torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + epoch))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position, epoch, order = self.start, None, None
        while True:
            stream_epoch, offset = divmod(position, self.length)
            if stream_epoch != epoch:
                epoch, order = stream_epoch, self._order(stream_epoch)
            yield int(order[offset]), position
            position += 1


class PositionSeeded(Dataset):
    """`dataset[index]` drawn with torch's random generator seeded by the stream position.

    A dataset's random augmentations (a random crop in time, a flip) then depend only on
    the data seed and where the item stands in the stream: not on how many batches the
    loader fetched ahead, nor on the number of worker processes, so a resumed run draws
    them exactly as an uninterrupted one. The global generator is left as it was.
    """

    def __init__(self, dataset: Any, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, position = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, position)) % 2**63)
            return self.dataset[index]


def endless_loader(
    dataset: Any, batch_size: int, *, seed: int, start: int, num_workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """A DataLoader over `InfiniteSampler` that never ends, items drawn by `PositionSeeded`.
    Its worker seeds come from a generator of its own, so creating it draws nothing from
    the global random state."""
    sampler = InfiniteSampler(len(dataset), seed=seed, start=start)
    return DataLoader(
        PositionSeeded(dataset, seed), batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip


# ---------------------------------------------------------------- items


def split_item(item: Any) -> tuple[Tensor, Any]:
    """`(video, condition or None)` of a dataset item or of a collated batch of them."""
    if isinstance(item, Tensor):
        return item, None
    if isinstance(item, (tuple, list)) and len(item) in (1, 2) and isinstance(item[0], Tensor):
        return item[0], (item[1] if len(item) == 2 else None)
    raise TypeError(
        "a dataset item must be a video tensor, (video,), (video, caption) or (video, cond tensor); "
        f"got {type(item).__name__}"
        + (f" of {len(item)} elements" if isinstance(item, (tuple, list)) else "")
    )


def condition_kind(condition: Any) -> str:
    """'none', 'text' or 'vector': what conditions a dataset item carries."""
    if condition is None:
        return "none"
    if isinstance(condition, str):
        return "text"
    if isinstance(condition, Tensor) and condition.ndim == 1:
        return "vector"
    raise TypeError(
        f"a dataset item's condition must be a caption (str) or a vector (cond_dim,), got {type(condition).__name__}"
        + (f" of shape {tuple(condition.shape)}" if isinstance(condition, Tensor) else "")
    )


# ---------------------------------------------------------------- captions


class CaptionEmbeddings:
    """The BERT embedding of every distinct caption, computed once, in a fixed order.

    Embedding all captions up front, in chunks that do not depend on the batches drawn,
    makes each caption's vector the same in every run (a resumed run included).

    Args:
        captions: every caption of the dataset (repeats allowed).
        embed: list of strings -> `(n, cond_dim)` embeddings (BERT).
        chunk_size: captions per BERT call.
        progress: show a progress bar.
    """

    def __init__(
        self,
        captions: Sequence[str],
        embed: Callable[[list[str]], Tensor],
        *,
        chunk_size: int = 64,
        progress: bool = True,
    ):
        self.captions = list(dict.fromkeys(captions))  # distinct, in first-seen order
        self.index = {caption: row for row, caption in enumerate(self.captions)}
        chunks = [self.captions[i : i + chunk_size] for i in range(0, len(self.captions), chunk_size)]
        embeddings = [embed(chunk).float().cpu() for chunk in tqdm(chunks, desc="embedding captions", disable=not progress)]
        self.table = torch.cat(embeddings)  # (distinct captions, cond_dim)

    def __call__(self, captions: Sequence[str]) -> Tensor:
        """`(len(captions), cond_dim)` on the CPU."""
        missing = [caption for caption in captions if caption not in self.index]
        if missing:
            raise ValueError(f"the dataset yielded captions missing from its `captions` list: {missing[:3]}")
        return self.table[[self.index[caption] for caption in captions]]
