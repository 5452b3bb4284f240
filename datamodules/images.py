"""LightningDataModule for class-labelled images stored as WebDataset shards."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import webdataset as wds

from unisep.datamodules.digits import DIGITS_CLASSES, ensure_digits_shards
from unisep.datamodules.image_stream import DecodeImages, train_pipeline, val_pipeline
from unisep.datamodules.image_writer import WRITE_COMMAND
from unisep.datamodules.seeding import derive_seed
from unisep.datamodules.shard_datamodule import ResumableShardDataModule
from unisep.datamodules.shards import ShardIndex, ShardsNotFoundError, resolve_shards
from unisep.datamodules.stream_stages import CorruptPolicy

logger = logging.getLogger(__name__)

DEMO_DATASETS = ("digits",)


class ImageDataModule(ResumableShardDataModule):
    """Images and class labels from WebDataset shards, for UNITE and other image models.

    Batches are ``{"image": (batch, channels, image_size, image_size) float32 in
    [-1, 1], "label": (batch,) int64}``.

    Training reads the shards as an endless chain of permutations split over ranks and
    workers (see ``shard_schedule``), so the stream has no end. An epoch is
    ``batches_per_epoch`` batches on every rank, so no rank waits on an uneven last
    shard. Validation reads each sample once, with shards split over ranks and workers,
    and needs at least one shard per reader. Shard order, shuffling and flips are seeded
    from ``(seed, epoch, rank, worker)``. ``state_dict`` stores the seed, the epoch count
    and the batches served in the current epoch, so a resumed run continues at the
    batch where it stopped (see ``epochs.FixedLengthEpochs``).

    Shards come from ``unisep data images SRC OUT`` or, with ``demo="digits"``, from
    scikit-learn's handwritten digits written on first use.
    """

    write_command = WRITE_COMMAND
    demo_datasets = DEMO_DATASETS

    def __init__(
        self,
        train_shards: str | None = None,
        val_shards: str | None = None,
        image_size: int = 256,
        channels: int = 3,
        batch_size: int = 64,
        val_batch_size: int | None = None,
        num_workers: int = 4,
        val_num_workers: int | None = None,
        shuffle_buffer: int = 1000,
        batches_per_epoch: int | None = None,
        random_flip: bool = False,
        corrupt: Literal["skip", "raise"] = "skip",
        demo: Literal["digits"] | None = None,
        demo_root: str = "data",
        seed: int = 0,
    ) -> None:
        """Store the settings; shard paths are checked in ``setup``.

        Args:
            train_shards: Training shard folder (with ``index.json``) or a brace or glob
                pattern of tar files. Required to fit unless ``demo`` is set.
            val_shards: Validation shards in the same forms; None disables validation.
            image_size: Side of the square images in pixels. Stored images of another
                size are ADM centre-cropped to it when loaded.
            channels: 1 for grayscale or 3 for RGB; stored images are converted.
            batch_size: Training samples per batch on each device.
            val_batch_size: Validation samples per batch on each device; defaults to
                ``batch_size``.
            num_workers: DataLoader worker processes per device; 0 loads in the main
                process.
            val_num_workers: Validation DataLoader workers per device; defaults to
                ``num_workers``. Validation needs at least ``world_size *
                val_num_workers`` shards.
            shuffle_buffer: Samples each worker holds for shuffling (raw bytes, before
                decoding).
            batches_per_epoch: Training batches per epoch on each device. Defaults to
                ``num_samples // (batch_size * world_size)`` from the shard index, at least 1.
            random_flip: Flip training images horizontally with probability 0.5.
            corrupt: ``"skip"`` logs and counts samples that fail to decode;
                ``"raise"`` stops with an error naming the sample key and shard.
            demo: ``"digits"`` trains on scikit-learn's digits (1,497 train / 300 val),
                written to ``demo_root`` on first use; ``train_shards`` and
                ``val_shards`` must then be None.
            demo_root: Folder for the demo shards.
            seed: Seed of shard sampling, shuffling and flips.

        Raises:
            ValueError: A setting is out of range, or ``demo`` is combined with shard paths.
        """
        super().__init__(train_shards, val_shards, demo, seed)
        self.save_hyperparameters()
        _check_positive(image_size=image_size, batch_size=batch_size, shuffle_buffer=shuffle_buffer)
        if val_batch_size is not None:
            _check_positive(val_batch_size=val_batch_size)
        if batches_per_epoch is not None:
            _check_positive(batches_per_epoch=batches_per_epoch)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if val_num_workers is not None and val_num_workers < 0:
            raise ValueError(f"val_num_workers must be >= 0, got {val_num_workers}")
        if corrupt not in ("skip", "raise"):
            raise ValueError(f'corrupt must be "skip" or "raise", got {corrupt!r}')

        self.image_size = image_size
        self.channels = channels
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.val_num_workers = num_workers if val_num_workers is None else val_num_workers
        self.shuffle_buffer = shuffle_buffer
        self.batches_per_epoch = batches_per_epoch
        self.random_flip = random_flip
        self.corrupt: CorruptPolicy = corrupt
        self.demo_root = demo_root

    # ------------------------------------------------------------------ Lightning hooks

    def teardown(self, stage: str | None = None) -> None:
        if self.skipped:
            logger.warning("%d corrupt samples were skipped while reading image shards", self.skipped)

    # ------------------------------------------------------------------ public helpers

    @property
    def skipped(self) -> int:
        """Corrupt samples skipped so far, over all workers and streams of this process."""
        return 0 if self._skip_counter is None else self._skip_counter.value

    @property
    def classes(self) -> list[str] | None:
        """Class names from the training index, or None when unknown.

        Before ``setup`` this reads the index directly, so that
        ``LightningCLI.link_arguments("data.num_classes", ..., apply_on="instantiate")``
        can pass the class count to the model.
        """
        index = self.train_index
        if index is None and self.demo == "digits":
            return list(DIGITS_CLASSES)
        if index is None and self.train_shards is not None:
            try:
                _, index = resolve_shards(self.train_shards, write_command=WRITE_COMMAND)
            except (ShardsNotFoundError, ValueError):
                return None  # setup() raises the full error
        if index is None:
            return None
        classes = index.writer.get("classes")
        return list(classes) if classes is not None else None

    @property
    def num_classes(self) -> int | None:
        """Number of classes from the training index, or None when unknown."""
        classes = self.classes
        return None if classes is None else len(classes)

    # ------------------------------------------------------------------ internals

    def _write_demo(self) -> dict[str, Path] | None:
        return ensure_digits_shards(self.demo_root, self.image_size) if self.demo == "digits" else None

    def _check_index(self, index: ShardIndex | None) -> None:
        stored = None if index is None else index.writer.get("image_size")
        if stored is not None and stored != self.image_size:
            logger.warning(
                "Shards in %s store %d px images but image_size is %d; every image is "
                "resized and cropped when loaded. Write shards at %d px to avoid the cost.",
                index.folder,
                stored,
                self.image_size,
                self.image_size,
            )

    def _warn_uneven_validation(self, world_size: int) -> None:
        # NOTE: with uneven splits, ranks run different numbers of validation steps, so a
        # collective call inside validation_step (e.g. self.log(..., sync_dist=True)) hangs.
        if self.val_index is not None:
            per_rank = [sum(s.num_samples for s in self.val_index.shards[r::world_size]) for r in range(world_size)]
            uneven = len(set(per_rank)) > 1
            detail = f"samples per rank {per_rank}"
        else:
            uneven = len(self.val_urls or []) % world_size != 0
            detail = f"{len(self.val_urls or [])} shards over {world_size} ranks"
        if uneven:
            logger.warning(
                "Validation shards split unevenly over ranks (%s); ranks run different numbers of validation steps",
                detail,
            )

    def _num_train_batches(self) -> int:
        return self._epoch_length(self.batches_per_epoch, self.batch_size)

    def _decoder(self, *, random_flip: bool, seed: int) -> DecodeImages:
        assert self._skip_counter is not None, "setup() creates the skip counter"
        return DecodeImages(
            image_size=self.image_size,
            channels=self.channels,
            corrupt=self.corrupt,
            counter=self._skip_counter,
            random_flip=random_flip,
            seed=seed,
        )

    def _val_loader(self, rank: int, world_size: int) -> wds.WebLoader:
        assert self.val_urls is not None
        if world_size > 1:
            self._warn_uneven_validation(world_size)
        pipeline = val_pipeline(
            self.val_urls,
            decoder=self._decoder(random_flip=False, seed=self.seed),
            batch_size=self.val_batch_size,
            rank=rank,
            world_size=world_size,
        )
        return self._web_loader(pipeline, self.val_num_workers)

    def _train_loader(self, epoch: int) -> wds.WebLoader:
        assert self.train_urls is not None
        rank, world_size = self._rank_and_world_size()
        stream_seed = derive_seed(self.seed, epoch, rank)
        pipeline = train_pipeline(
            self.train_urls,
            decoder=self._decoder(random_flip=self.random_flip, seed=stream_seed),
            batch_size=self.batch_size,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
            epoch=epoch,
            rank=rank,
            world_size=world_size,
        )
        return self._web_loader(pipeline, self.num_workers, seed=stream_seed)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
