"""Base classes of the DataModules that read WebDataset shard sets.

- ``ShardDataModule``: shard paths, demo sets, ``setup``, rank queries and the default
  epoch length. The image, video and molecule DataModules derive from it.
- ``ResumableShardDataModule``: adds training epochs of a fixed number of batches that
  resume mid-epoch (``epochs.FixedLengthEpochs``) and the check that validation has a
  shard for every reader. The image and video DataModules derive from it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import torch
import webdataset as wds
from lightning.pytorch import LightningDataModule

from unisep.datamodules.epochs import FixedLengthEpochs, StreamPosition
from unisep.datamodules.shard_schedule import check_validation_shards
from unisep.datamodules.shards import ShardIndex, ShardsNotFoundError, resolve_shards
from unisep.datamodules.stream_stages import SkipCounter

logger = logging.getLogger(__name__)


class ShardDataModule(LightningDataModule):
    """Shard paths, demo sets and ``setup`` shared by the DataModules that read shard sets.

    A subclass sets ``write_command`` (the command that writes its shards, named in
    errors) and ``demo_datasets``, and implements ``_val_loader`` and
    ``_num_train_batches``. It overrides ``_write_demo`` when it has demo sets and
    ``_check_index`` to check the writer settings stored in an index.

    ``setup`` fills ``train_urls``/``train_index`` and ``val_urls``/``val_index``, and
    creates ``_skip_counter``, the count of skipped samples shared by DataLoader workers.

    Args:
        train_shards: Training shard folder (with ``index.json``) or a brace or glob
            pattern of tar files. Required to fit unless ``demo`` is set.
        val_shards: Validation shards in the same forms; None disables validation.
        demo: Name of a demo set in ``demo_datasets`` that writes its own shards, or None.
        seed: Seed of the data streams.

    Raises:
        ValueError: ``demo`` is unknown, or combined with shard paths.
    """

    write_command: ClassVar[str]
    demo_datasets: ClassVar[tuple[str, ...]] = ()

    def __init__(self, train_shards: str | None, val_shards: str | None, demo: str | None, seed: int) -> None:
        super().__init__()
        if demo is not None and demo not in self.demo_datasets:
            raise ValueError(f"demo must be one of {self.demo_datasets} or None, got {demo!r}")
        if demo is not None and (train_shards is not None or val_shards is not None):
            raise ValueError(f"demo={demo!r} writes its own shards; leave train_shards and val_shards unset")
        self.train_shards = train_shards
        self.val_shards = val_shards
        self.demo = demo
        self.seed = seed

        self.train_urls: list[str] | None = None
        self.train_index: ShardIndex | None = None
        self.val_urls: list[str] | None = None
        self.val_index: ShardIndex | None = None
        self._skip_counter: SkipCounter | None = None

    # ------------------------------------------------------------------ Lightning hooks

    def prepare_data(self) -> None:
        """Write the demo shards once per node (Lightning calls this on local rank 0 only)."""
        self._use_demo_shards()

    def setup(self, stage: str | None = None) -> None:
        """Resolve the shard paths needed by ``stage`` and check their indexes.

        Raises:
            ShardsNotFoundError: A required shard path is unset, missing or empty; the
                message names the path and the command that writes shards.
            ValueError: ``_check_index`` or ``_check_validation_shards`` rejects the shards.
        """
        # Safe on every rank: the demo shards are reused if prepare_data wrote them.
        self._use_demo_shards()
        if stage in ("fit", None) and self.train_urls is None:
            if self.train_shards is None:
                raise ShardsNotFoundError(
                    f"train_shards is not set; pass a shard folder written by `{self.write_command}`,"
                    f" or set {self._demo_hint()}"
                )
            self.train_urls, self.train_index = resolve_shards(self.train_shards, write_command=self.write_command)
            self._check_index(self.train_index)
        if stage in ("fit", "validate", None) and self.val_urls is None and self.val_shards is not None:
            self.val_urls, self.val_index = resolve_shards(self.val_shards, write_command=self.write_command)
            self._check_index(self.val_index)
            # Here rather than in val_dataloader, which Lightning first calls at the
            # first validation: a run with too few shards stops before training.
            self._check_validation_shards()
        if stage == "validate" and self.val_shards is None:
            raise ShardsNotFoundError(f"val_shards is not set; pass a shard folder written by `{self.write_command}`")
        if self._skip_counter is None:
            # Created here, in the main process, so that DataLoader workers share it.
            self._skip_counter = SkipCounter()

    def val_dataloader(self) -> wds.WebLoader | list[Any]:
        """Return the validation batches, or an empty list (no validation) without ``val_shards``."""
        if self.val_urls is None and self.val_shards is not None:
            self.setup("validate")
        if self.val_urls is None:
            return []
        rank, world_size = self._rank_and_world_size()
        self._check_validation_shards()
        return self._val_loader(rank, world_size)

    # ------------------------------------------------------------------ subclass hooks

    def _write_demo(self) -> dict[str, Path] | None:
        """Write the shards of ``demo`` unless present and return ``{"train": folder, "val": folder}``.

        The base class has no demo sets and returns None.
        """
        return None

    def _check_index(self, index: ShardIndex | None) -> None:
        """Check the writer settings stored in a shard index, which is None without ``index.json``.

        The base class accepts every index.
        """

    def _check_validation_shards(self) -> None:
        """Check that the validation shards suit the readers of this run.

        The base class accepts any number of shards.
        """

    def _val_loader(self, rank: int, world_size: int) -> wds.WebLoader:
        """Return the validation loader of ``rank``, called after ``setup`` has resolved ``val_urls``."""
        raise NotImplementedError

    def _num_train_batches(self) -> int:
        """Return the training batches per epoch on each rank."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared helpers

    def _use_demo_shards(self) -> None:
        paths = self._write_demo()
        if paths is not None:
            self.train_shards, self.val_shards = str(paths["train"]), str(paths["val"])

    def _demo_hint(self) -> str:
        if len(self.demo_datasets) == 1:
            return f"demo={self.demo_datasets[0]!r}"
        return f"demo to one of {self.demo_datasets}"

    def _rank_and_world_size(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _epoch_length(self, batches_per_epoch: int | None, batch_size: int, samples_per_record: int = 1) -> int:
        """Return ``batches_per_epoch``, or by default the batches per rank that contain every training sample once.

        Args:
            batches_per_epoch: The configured epoch length, or None for the default.
            batch_size: Samples per batch on each rank.
            samples_per_record: Samples drawn from each stored record, e.g. clips per video.

        Raises:
            ValueError: The default is needed but the training shards have no ``index.json``.
        """
        if batches_per_epoch is not None:
            return batches_per_epoch
        if self.train_index is None:
            raise ValueError(
                f"the length of an epoch is unknown because {self.train_shards!r} has no index.json; "
                "set batches_per_epoch"
            )
        _, world_size = self._rank_and_world_size()
        samples = self.train_index.num_samples * samples_per_record
        return max(1, samples // (batch_size * world_size))


class ResumableShardDataModule(ShardDataModule):
    """A ``ShardDataModule`` whose training epochs resume at the batch where a run stopped.

    Training reads an endless stream and cuts it into epochs of ``_num_train_batches()``
    batches on every rank (``epochs.FixedLengthEpochs``). ``state_dict`` stores the seed
    and the ``StreamPosition``, so a resumed run continues at the batch where it stopped.
    Validation needs at least one shard for each of the ``world_size * val_num_workers``
    readers.

    A subclass sets ``val_num_workers`` in ``__init__`` and implements
    ``_train_loader(epoch)``, which builds the loader of one epoch's stream.
    """

    val_num_workers: int

    def __init__(self, train_shards: str | None, val_shards: str | None, demo: str | None, seed: int) -> None:
        super().__init__(train_shards, val_shards, demo, seed)
        self.position = StreamPosition()

    def train_dataloader(self) -> FixedLengthEpochs:
        """Return the training batches; each iteration is one epoch of fixed length."""
        if self.train_urls is None:
            self.setup("fit")
        _, world_size = self._rank_and_world_size()
        return FixedLengthEpochs(self._train_loader, self._num_train_batches(), self.position, world_size)

    def state_dict(self) -> dict[str, Any]:
        """Return the seed and the training stream position (see ``StreamPosition``)."""
        return {"seed": self.seed, **self.position.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the seed and stream position, so training continues at the batch where it stopped."""
        if state_dict["seed"] != self.seed:
            logger.info("Using the checkpoint's data seed %d instead of %d", state_dict["seed"], self.seed)
        self.seed = int(state_dict["seed"])
        self.position.load_state_dict(state_dict)

    @property
    def epoch(self) -> int:
        """Training epochs started so far."""
        return self.position.epoch

    def _train_loader(self, epoch: int) -> wds.WebLoader:
        """Return the loader of the endless training stream of ``epoch`` on this rank."""
        raise NotImplementedError

    def _check_validation_shards(self) -> None:
        assert self.val_urls is not None
        check_validation_shards(
            shards=str(self.val_shards),
            num_shards=len(self.val_urls),
            num_samples=None if self.val_index is None else self.val_index.num_samples,
            world_size=self._rank_and_world_size()[1],
            num_workers=self.val_num_workers,
            write_command=self.write_command,
        )

    def _web_loader(self, pipeline: wds.DataPipeline, num_workers: int, seed: int | None = None) -> wds.WebLoader:
        """Wrap a pipeline that yields whole batches in a ``WebLoader``.

        Args:
            pipeline: Yields batches, so the loader batches nothing itself.
            num_workers: DataLoader worker processes.
            seed: Seed of the workers' base seed (training), or None (validation).
        """
        # With a seed, the DataLoader draws its workers' base seed from this generator,
        # not from the global torch RNG, so starting an epoch leaves the training RNG alone.
        generator = None if seed is None else torch.Generator().manual_seed(seed % 2**63)
        return wds.WebLoader(
            pipeline,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=torch.cuda.is_available(),
            generator=generator,
        )
