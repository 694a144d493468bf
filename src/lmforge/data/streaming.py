"""Training data streamed instead of tokenized up front (`data.streaming=true`).

The training split is read as a `datasets` IterableDataset (local files or the hub), filtered,
shuffled with a buffer, dealt to the distributed processes and tokenized on the fly; validation
and test stay map-style (tokenized once and cached). Peak memory does not grow with the corpus.

What holds (and is tested):
- a pass over the stream deals every example to exactly one process: `datasets`'
  `split_dataset_by_node` gives each rank whole files where their number divides evenly, else
  every world-th example; within a rank, DataLoader workers get whole files (shards) each, so
  workers beyond the number of files stay idle rather than read an example twice;
- the stream never ends: a pass is followed by the next, reshuffled (`set_epoch`), so every
  process always has a next batch and DDP ranks never wait on one that ran out; training is
  bounded by `trainer.max_steps`, and validation runs every `trainer.val_check_interval` steps;
- the order is a function of (seed, pass): a resumed run skips the batches the checkpoint
  records (re-reading them, not training on them) and then sees what the uninterrupted run saw.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import datasets
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lmforge.errors import LmforgeError


class StreamedTrainingSet(IterableDataset):
    """The endless training examples of one process: passes over `build()` (a tokenized
    `datasets` IterableDataset for this rank), skipping the first `skip_batches` batches of the
    process (a resumed run) across its workers.

    Args:
        build: makes this rank's tokenized stream (called in each worker).
        batch_size: examples per batch, for turning skipped batches into skipped examples.
        skip_batches: batches of this process already trained on.
    """

    def __init__(
        self,
        build: Callable[[], datasets.IterableDataset],
        batch_size: int,
        skip_batches: int = 0,
    ) -> None:
        super().__init__()
        self.build = build
        self.batch_size = batch_size
        self.skip_batches = skip_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        stream = self.build()
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        # `datasets` deals whole shards to DataLoader workers; workers beyond the shards idle.
        active = min(workers, stream.num_shards) if workers > 1 else 1
        if worker >= active:
            return
        # A DataLoader takes batches from its (active) workers in turn: batch i came from
        # worker i % active, so this worker skips its share of the trained batches.
        to_skip = len(range(worker, self.skip_batches, active)) * self.batch_size
        passes = 0
        while True:
            stream.set_epoch(passes)
            empty = True
            for example in stream:
                empty = False
                if to_skip:
                    to_skip -= 1
                    continue
                yield example
            if empty:
                raise LmforgeError(
                    "data.train_file: the training stream yields no examples (every row empty "
                    "or filtered out); expected text to train on."
                )
            passes += 1


class StreamLoader(DataLoader):
    """A DataLoader over a `StreamedTrainingSet` whose state Lightning saves in checkpoints:
    the batches trained so far (read from the trainer's progress), the same record the
    map-style loader keeps, so a resumed run hands it back through `resume_point`."""

    def __init__(self, *args: Any, progress: Callable[[], tuple[int, int]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress

    def state_dict(self) -> dict[str, int]:
        epoch, batches_done = self.progress()
        return {"epoch": epoch, "batches_done": batches_done}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        dataset = self.dataset
        assert isinstance(dataset, StreamedTrainingSet)
        dataset.skip_batches = int(state_dict["batches_done"])


def rank_stream(
    stream: datasets.IterableDataset, rank: int, world: int
) -> datasets.IterableDataset:
    """This rank's part of a stream (see the module docstring)."""
    if world <= 1:
        return stream
    from datasets.distributed import split_dataset_by_node

    return split_dataset_by_node(stream, rank=rank, world_size=world)
