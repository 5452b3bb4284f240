"""Training epochs of a fixed number of batches, cut from an endless stream and resumable mid-epoch.

An epoch's batches are a function of (seed, epoch, rank, worker count) only, so a
resumed run rebuilds the interrupted epoch's stream and drops the batches that the
training loop had already received. Dropping costs one read and decode of each of those
batches, at DataLoader speed, with no forward or backward pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class StreamPosition:
    """Where the training stream of one rank stands; every rank holds the same values.

    Attributes:
        epoch: Training epochs started so far; the epoch being served is ``epoch - 1``.
        batches: Batches of epoch ``epoch - 1`` handed to the training loop.
        world_size: Number of ranks when the position was counted. The streams of the
            ranks depend on it, so a position counted with another world size is not
            resumed mid-epoch.
    """

    epoch: int = 0
    batches: int = 0
    world_size: int = 1

    def begin(self, num_batches: int, world_size: int) -> tuple[int, int]:
        """Return ``(epoch, batches to skip)`` for the next pass over the training stream.

        An interrupted epoch (``0 < batches < num_batches``) continues where it stopped;
        otherwise the next epoch starts.
        """
        if 0 < self.batches < num_batches:
            if world_size == self.world_size:
                return self.epoch - 1, self.batches
            logger.warning(
                "The checkpoint stopped at batch %d of epoch %d with %d ranks; this run has %d ranks, "
                "so the rest of that epoch is skipped and epoch %d starts",
                self.batches,
                self.epoch - 1,
                self.world_size,
                world_size,
                self.epoch,
            )
        epoch = self.epoch
        self.epoch += 1
        self.batches = 0
        self.world_size = world_size
        return epoch, 0

    def state_dict(self) -> dict[str, int]:
        """Return the position as plain integers."""
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position; checkpoints that stored only the epoch resume at an epoch start."""
        self.epoch = int(state["epoch"])
        self.batches = int(state.get("batches", 0))
        self.world_size = int(state.get("world_size", 1))


class FixedLengthEpochs:
    """Training batches from an endless stream, cut into epochs of ``num_batches``.

    Each ``iter()`` serves one epoch: the interrupted one if ``position`` says so, else
    the next. ``__iter__`` is a generator, so Lightning's check that the object is
    iterable starts no epoch. Lightning fetches no batch ahead from an iterable with a
    length, so at every step end ``position.batches`` counts exactly the batches the
    training loop has received.

    ``state_dict`` and ``load_state_dict`` make the object resumable for Lightning, which
    stores them with the loop state; they read and write the same ``StreamPosition``
    that the datamodule stores.

    Args:
        loader_for_epoch: Builds the endless batch stream of an epoch number.
        num_batches: Batches per epoch on this rank.
        position: Shared position, owned by the datamodule.
        world_size: Number of ranks of this run.
    """

    def __init__(
        self,
        loader_for_epoch: Callable[[int], Iterable[Any]],
        num_batches: int,
        position: StreamPosition,
        world_size: int = 1,
    ) -> None:
        if num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")
        self.loader_for_epoch = loader_for_epoch
        self.num_batches = num_batches
        self.position = position
        self.world_size = world_size

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[Any]:
        epoch, skip = self.position.begin(self.num_batches, self.world_size)
        if skip:
            logger.info("Resuming epoch %d at batch %d of %d; reading past the batches already trained on", epoch, skip, self.num_batches)
        stream = iter(self.loader_for_epoch(epoch))
        for index in range(self.num_batches):
            try:
                batch = next(stream)
            except StopIteration:
                raise RuntimeError(
                    f"the training stream of epoch {epoch} ended after {index} of {self.num_batches} batches; "
                    "training streams should not end, so check that the shards are readable"
                ) from None
            if index < skip:
                continue
            self.position.batches = index + 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Return the shared stream position."""
        return self.position.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the shared stream position."""
        self.position.load_state_dict(state)
