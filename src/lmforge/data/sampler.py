"""A resumable, shardable batch sampler with optional length grouping.

Written here because no library sampler does all that lmforge needs at once: its order depends
only on (seed, epoch), so a resumed run sees the same batches as an uninterrupted one; it shards
batches across distributed processes itself; and it can group texts of similar length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import torch
from torch.utils.data import DataLoader, Sampler

# Length grouping sorts windows of this many batches, so batches stay random across the epoch.
MEGABATCH_FACTOR = 50


class SeededBatchSampler(Sampler[list[int]]):
    """Yields lists of example indices for one process.

    Args:
        lengths: token count per example (used when `group_by_length`).
        batch_size: examples per batch (per process).
        shuffle: reshuffle every epoch; the order is a function of `seed` and the epoch.
        group_by_length: within shuffled windows of 50 batches, sort by length.
        num_replicas / rank: the process group; batches are dealt round-robin.
        drop_last: drop a final incomplete batch.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        group_by_length: bool = False,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.epoch = 0
        # (epoch, batches already trained on): set on a mid-epoch resume, used once.
        self._resume: tuple[int, int] | None = None
        # Returns the running fit's epoch (set by `ResumableDataLoader`); None: use set_epoch.
        self.epoch_source: Callable[[], int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        n = len(self.lengths)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        if self.group_by_length:
            window = self.batch_size * MEGABATCH_FACTOR
            order = [
                i
                for start in range(0, n, window)
                for i in sorted(order[start : start + window], key=lambda j: -self.lengths[j])
            ]
        batches = [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.shuffle and self.group_by_length:
            # Sorted windows would put all long batches first; shuffle batch order too.
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch + 1)
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
        if self.num_replicas > 1:
            # Every process needs the same number of batches: repeat from the start to pad.
            total = math.ceil(len(batches) / self.num_replicas) * self.num_replicas
            batches += batches[: total - len(batches)]
            batches = batches[self.rank :: self.num_replicas]
        return batches

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Skip the first `batches_done` batches the next time `epoch` is iterated."""
        self._resume = (epoch, batches_done)

    def __iter__(self) -> Iterator[list[int]]:
        # A generator: this runs at the first batch, when the fit knows its epoch.
        if self.epoch_source is not None:
            self.epoch = self.epoch_source()
        batches = self._batches()
        if self._resume is not None and self._resume[0] == self.epoch:
            batches = batches[self._resume[1] :]
        self._resume = None
        yield from batches

    def __len__(self) -> int:
        n_batches = len(self.lengths) // self.batch_size
        if not self.drop_last and len(self.lengths) % self.batch_size:
            n_batches += 1
        return math.ceil(n_batches / self.num_replicas)


class ResumableDataLoader(DataLoader):
    """A DataLoader over a `SeededBatchSampler` that Lightning can resume mid-epoch.

    Lightning saves `state_dict()` of stateful training loaders in each checkpoint and hands it
    back on resume. The batch order is a function of (seed, epoch), so the state is only where
    the epoch stood: the batches whose optimizer step already ran, read from the trainer's
    progress at save time (the loader itself runs ahead of training by the prefetched batches).

    Args:
        progress: returns (epoch, batches processed in that epoch) of the running fit.
    """

    def __init__(self, *args: Any, progress: Callable[[], tuple[int, int]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress
        # Lightning hands the epoch to `sampler.set_epoch` and `batch_sampler.sampler.set_epoch`
        # only, never to a batch sampler itself: the sampler asks the running fit instead.
        sampler = cast(SeededBatchSampler, self.batch_sampler)
        sampler.epoch_source = lambda: self.progress()[0]

    def state_dict(self) -> dict[str, int]:
        epoch, batches_done = self.progress()
        return {"epoch": epoch, "batches_done": batches_done}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        sampler = cast(SeededBatchSampler, self.batch_sampler)
        sampler.resume_at(state_dict["epoch"], state_dict["batches_done"])
