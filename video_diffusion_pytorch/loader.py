"""What the Trainer feeds the model: endless, resumable batch streams and their conditions.

A dataset item is a video `(c, f, h, w)`, or a pair `(video, caption)` for text
conditioning, or `(video, cond)` with a conditioning vector `(cond_dim,)`. Batches come
from an endless shuffled stream of indices whose position is a plain integer, so a
checkpoint can record it and a resumed run continues with exactly the batches an
uninterrupted run would have seen. With several processes, process `r` of `n` takes the
stream positions `r, r + n, r + 2n, ...`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

# ---------------------------------------------------------------- index stream


class InfiniteSampler(Sampler[int]):
    """Endless shuffled indices of a dataset of `length` items.

    Epoch `e` of the stream is `randperm(length)` drawn from a generator seeded with
    `seed + e`; this process yields the stream positions `start + rank + k * num_replicas`
    for k = 0, 1, ... Every process must use the same `seed` and `start`.
    """

    def __init__(self, length: int, *, seed: int, start: int = 0, rank: int = 0, num_replicas: int = 1):
        if length < 1:
            raise ValueError(f"cannot sample from an empty dataset (length {length})")
        self.length, self.seed, self.start = length, seed, start
        self.rank, self.num_replicas = rank, num_replicas

    def _order(self, epoch: int) -> Tensor:
        return torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + epoch))

    def __iter__(self) -> Iterator[int]:
        position, epoch, order = self.start + self.rank, None, None
        while True:
            stream_epoch, offset = divmod(position, self.length)
            if stream_epoch != epoch:
                epoch, order = stream_epoch, self._order(stream_epoch)
            yield int(order[offset])
            position += self.num_replicas


def endless_loader(
    dataset: Any,
    batch_size: int,
    *,
    seed: int,
    start: int,
    rank: int = 0,
    num_replicas: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over `InfiniteSampler` that never ends. Its worker seeds come from a
    generator of its own, so creating it draws nothing from the global random state."""
    sampler = InfiniteSampler(len(dataset), seed=seed, start=start, rank=rank, num_replicas=num_replicas)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
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
