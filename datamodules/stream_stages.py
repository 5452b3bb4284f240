"""WebDataset pipeline stages shared by the image, molecule and video streams.

- Skipping: ``SkipCounter`` counts unusable samples over DataLoader workers,
  ``skip_or_raise`` applies the ``corrupt`` policy to one sample, and
  ``SkipUnreadableShard`` is the webdataset handler for tar files that cannot be read.
- Stages: ``ShuffleBuffer`` (seeded per worker) and ``SplitByRank``.
- ``validation_pipeline``: the finite stream that reads every shard once.

All randomness comes from integers such as ``(seed, epoch, rank, worker)`` (see
``seeding``), so a run is reproducible.
"""

from __future__ import annotations

import logging
import multiprocessing
import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import webdataset as wds

from unisep.datamodules.seeding import derive_seed, worker_info

logger = logging.getLogger(__name__)

CorruptPolicy = Literal["skip", "raise"]

# The first 10 skips of a stream are logged one by one, then only every 1000th, so a
# bad data set cannot flood the log. The count is shared by all workers of a stream.
_MAX_SKIP_WARNINGS = 10
_SKIP_LOG_EVERY = 1000


class CorruptSampleError(ValueError):
    """A sample in a shard could not be decoded and ``corrupt="raise"`` was set."""


class SkipCounter:
    """Count skipped samples across DataLoader worker processes.

    The count lives in shared memory (``multiprocessing.Value``), so increments made in
    worker processes are visible in the main process. Create it in the main process
    before the workers start.
    """

    def __init__(self) -> None:
        self._value = multiprocessing.Value("q", 0)

    def increment(self) -> int:
        """Add one and return the new total."""
        with self._value.get_lock():
            self._value.value += 1
            return self._value.value

    @property
    def value(self) -> int:
        """Samples skipped so far."""
        return self._value.value


def should_log_skip(total: int) -> bool:
    """Return True for the first 10 skips of a stream and for every 1000th after them."""
    return total <= _MAX_SKIP_WARNINGS or total % _SKIP_LOG_EVERY == 0


def skip_or_raise(
    sample: dict[str, Any],
    error: Exception,
    *,
    corrupt: CorruptPolicy,
    counter: SkipCounter,
    label: str,
    log: logging.Logger,
) -> None:
    """Apply the ``corrupt`` policy to a sample that could not be decoded.

    Args:
        sample: The raw webdataset sample; its ``__key__`` and ``__url__`` name it.
        error: Why it could not be decoded.
        corrupt: ``"raise"`` raises ``CorruptSampleError``; ``"skip"`` counts the
            sample and logs it (rate-limited by ``should_log_skip``).
        counter: Shared count of skipped samples.
        label: Name of the sample kind in messages, e.g. ``"corrupt sample"``.
        log: Logger of the calling stream, so that records name the modality.

    Raises:
        CorruptSampleError: ``corrupt`` is ``"raise"``; the message names the key and shard.
    """
    key, url = sample.get("__key__"), sample.get("__url__")
    if corrupt == "raise":
        raise CorruptSampleError(
            f"{label} {key!r} in shard {url}: {error!r}. "
            'Set corrupt="skip" to skip such samples, or rewrite the shards.'
        ) from error
    total = counter.increment()
    if should_log_skip(total):
        log.warning("Skipped %s %r in shard %s: %r (%d skipped so far)", label, key, url, error, total)


class SkipUnreadableShard:
    """Webdataset handler for a tar that cannot be read: log it and go on with the next shard.

    A class rather than a closure, so that DataLoader workers started with ``spawn``
    can unpickle it.

    Args:
        label: Name of the shard kind in the log, e.g. ``"video shard"``.
    """

    def __init__(self, label: str = "shard") -> None:
        self.label = label

    def __call__(self, error: Exception) -> bool:
        logger.warning("Skipped the rest of a %s that could not be read: %r", self.label, error)
        return True


def tar_error_handler(corrupt: CorruptPolicy, label: str = "shard") -> Callable[[Exception], bool]:
    """Return the webdataset handler for unreadable tars: re-raise for ``"raise"``, else log and skip."""
    return wds.reraise_exception if corrupt == "raise" else SkipUnreadableShard(label)


def worker_rng(seed: int, stage: int) -> random.Random:
    """Return a ``random.Random`` seeded by ``(seed, worker id, stage)`` for the current DataLoader worker."""
    worker, _ = worker_info()
    return random.Random(derive_seed(seed, worker, stage))


class ShuffleBuffer:
    """Pipeline stage: ``webdataset.shuffle`` seeded per worker at iteration time.

    ``wds.shuffle(seed=...)`` would give every worker the same seed, because the stage
    is built once in the main process and copied into the workers.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed

    def __call__(self, samples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        rng = worker_rng(self.seed, stage=2)
        return wds.shuffle(self.size, initial=self.size, rng=rng)(iter(samples))


class SplitByRank:
    """Pipeline stage: keep every ``world_size``-th shard URL, starting at ``rank``.

    Rank and world size are passed in from the trainer instead of read from
    ``torch.distributed`` inside the worker, where spawned workers see no process group.
    """

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank = rank
        self.world_size = world_size

    def __call__(self, urls: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for i, url in enumerate(urls):
            if i % self.world_size == self.rank:
                yield url


def validation_pipeline(
    urls: list[str],
    *,
    decode: Callable[[Iterable[dict[str, Any]]], Iterator[dict[str, Any]]],
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
    batch_size: int,
    rank: int,
    world_size: int,
    handler: Callable[[Exception], bool],
) -> wds.DataPipeline:
    """Build the finite validation stream of one rank.

    Shards are split over ranks, then over DataLoader workers, and read in order, so
    over all ranks each readable sample is yielded once. The last batch of each worker
    may be smaller than ``batch_size``.

    Args:
        urls: All shard URLs, in the same order on every rank.
        decode: Stage that turns raw samples into decoded ones.
        collate: Stacks a list of decoded samples into a batch.
        batch_size: Samples per batch.
        rank: Global rank of this process.
        world_size: Number of ranks.
        handler: Webdataset handler for tar files that cannot be read.
    """
    return wds.DataPipeline(
        wds.SimpleShardList(urls),
        SplitByRank(rank, world_size),
        wds.split_by_worker,
        wds.tarfile_to_samples(handler=handler),
        decode,
        wds.batched(batch_size, collation_fn=collate, partial=True),
    )
