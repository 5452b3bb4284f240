"""Which shards each rank and DataLoader worker reads.

A *reader* is one DataLoader worker of one rank, or the rank's main process when it
runs no workers. A run with `world_size` ranks of `num_workers` workers has
`world_size * num_workers` readers, and below a reader's global index is
`rank * num_workers + worker`.

- Training: all ranks agree on one endless chain of random permutations of the shard
  list, seeded by the run seed and the epoch. Reader g of G reads entries
  g, g + G, g + 2G, ... of the chain. Within one pass over the shards no two readers
  open the same shard, so ranks see different samples. Every shard is read once per
  pass, so a small shard is sampled as often, per sample, as a large one. The stream
  never ends, so every rank yields the same number of batches whatever the shard sizes.
- Validation: each sample must be read exactly once, so shards are split over ranks,
  then over workers. That needs at least one shard per reader;
  `check_validation_shards` rejects a run with fewer at start-up.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset

from unisep.datamodules.seeding import derive_seed, worker_info


def shard_draws(num_shards: int, *, seed: int, epoch: int, reader: int, num_readers: int) -> Iterator[int]:
    """Yield, without end, the indices of the shards that one training reader opens.

    Args:
        num_shards: Length of the shard list.
        seed: Run seed; every rank passes the same value.
        epoch: Epoch number; each epoch has its own chain of permutations.
        reader: Global reader index in ``[0, num_readers)``.
        num_readers: Ranks times DataLoader workers per rank.

    Raises:
        ValueError: ``num_shards < 1`` or ``reader`` is outside ``[0, num_readers)``.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if not 0 <= reader < num_readers:
        raise ValueError(f"reader must be in [0, {num_readers}), got {reader}")
    for cycle in itertools.count():
        order = np.random.default_rng(derive_seed(seed, epoch, cycle)).permutation(num_shards)
        # Entry j of pass `cycle` has chain position cycle * num_shards + j; keep the
        # positions congruent to `reader` modulo num_readers.
        first = (reader - cycle * num_shards) % num_readers
        for index in order[first::num_readers]:
            yield int(index)


class ShardChain(IterableDataset):
    """First stage of a training pipeline: ``{"url": ...}`` of this reader's shards, without end.

    The DataLoader worker id is read at iteration time, inside the worker. Rank and world
    size come from the trainer, because spawned workers see no process group.

    Args:
        urls: Every shard URL, in the same order on every rank.
        seed: Run seed.
        epoch: Epoch number.
        rank: Global rank of this process.
        world_size: Number of ranks.
    """

    def __init__(self, urls: list[str], *, seed: int, epoch: int, rank: int, world_size: int) -> None:
        super().__init__()
        if not urls:
            raise ValueError("ShardChain needs at least one shard URL")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.urls = list(urls)
        self.seed = seed
        self.epoch = epoch
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = worker_info()
        draws = shard_draws(
            len(self.urls),
            seed=self.seed,
            epoch=self.epoch,
            reader=self.rank * num_workers + worker,
            num_readers=self.world_size * num_workers,
        )
        for index in draws:
            yield {"url": self.urls[index]}


def check_validation_shards(
    *,
    shards: str,
    num_shards: int,
    num_samples: int | None,
    world_size: int,
    num_workers: int,
    write_command: str,
) -> None:
    """Raise when a read-once stream has fewer shards than readers.

    A reader without a shard yields nothing. A rank without validation batches logs no
    validation metric, so it skips the cross-rank reduction that the other ranks wait in
    at the end of validation.

    Args:
        shards: Shard path, for the message.
        num_shards: Number of shards.
        num_samples: Samples over all shards, to suggest a shard size; None if unknown.
        world_size: Number of ranks.
        num_workers: DataLoader workers per rank for this stream (0 counts as 1 reader).
        write_command: Command that writes this kind of shards, for the message.

    Raises:
        ValueError: ``num_shards < world_size * max(1, num_workers)``; the message gives
            the counts and both fixes.
    """
    readers_per_rank = max(1, num_workers)
    readers = world_size * readers_per_rank
    if num_shards >= readers:
        return
    shard_size = f" with --shard-size {max(1, num_samples // readers)}" if num_samples else " with a smaller --shard-size"
    fixes = f"rewrite it as at least {readers} shards (`{write_command}`{shard_size})"
    if num_shards >= world_size:
        fixes += f", or set val_num_workers to at most {num_shards // world_size}"
    else:
        fixes += f", or validate on at most {num_shards} devices"
    raise ValueError(
        f"validation shards {shards!r}: {num_shards} shards for {world_size} ranks x {readers_per_rank} "
        f"workers = {readers} readers. Validation reads each sample once and needs at least one shard per "
        f"reader; {fixes}"
    )
