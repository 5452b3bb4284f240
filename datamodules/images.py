"""LightningDataModule for class-labelled images stored as WebDataset shards."""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
import webdataset as wds
from lightning.pytorch import LightningDataModule

from unisep.datamodules.digits import DIGITS_CLASSES, ensure_digits_shards
from unisep.datamodules.epochs import FixedLengthEpochs, StreamPosition
from unisep.datamodules.image_stream import (
    CorruptPolicy,
    DecodeImages,
    SkipCounter,
    derive_seed,
    train_pipeline,
    val_pipeline,
)
from unisep.datamodules.image_writer import WRITE_COMMAND
from unisep.datamodules.shard_schedule import check_validation_shards
from unisep.datamodules.shards import ShardIndex, ShardsNotFoundError, resolve_shards

logger = logging.getLogger(__name__)

DEMO_DATASETS = ("digits",)


class ImageDataModule(LightningDataModule):
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
        super().__init__()
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
        if demo is not None and demo not in DEMO_DATASETS:
            raise ValueError(f"demo must be one of {DEMO_DATASETS} or None, got {demo!r}")
        if demo is not None and (train_shards is not None or val_shards is not None):
            raise ValueError(f"demo={demo!r} writes its own shards; leave train_shards and val_shards unset")

        self.train_shards = train_shards
        self.val_shards = val_shards
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
        self.demo = demo
        self.demo_root = demo_root
        self.seed = seed

        self.position = StreamPosition()
        self.train_urls: list[str] | None = None
        self.train_index: ShardIndex | None = None
        self.val_urls: list[str] | None = None
        self.val_index: ShardIndex | None = None
        self._skip_counter: SkipCounter | None = None

    # ------------------------------------------------------------------ Lightning hooks

    def prepare_data(self) -> None:
        """Write the demo shards once per node (Lightning calls this on local rank 0 only)."""
        if self.demo == "digits":
            ensure_digits_shards(self.demo_root, self.image_size)

    def setup(self, stage: str | None = None) -> None:
        """Resolve the shard paths needed by ``stage`` and read their indexes.

        Raises:
            ShardsNotFoundError: A required shard path is unset, missing or empty; the
                message names the path and the command that writes shards.
        """
        if self.demo == "digits":
            # Safe on every rank: the shards are reused if prepare_data wrote them.
            paths = ensure_digits_shards(self.demo_root, self.image_size)
            self.train_shards, self.val_shards = str(paths["train"]), str(paths["val"])

        if stage in ("fit", None) and self.train_urls is None:
            if self.train_shards is None:
                raise ShardsNotFoundError(
                    "train_shards is not set; pass a shard folder written by "
                    f"`{WRITE_COMMAND}`, or set demo='digits'"
                )
            self.train_urls, self.train_index = resolve_shards(self.train_shards, write_command=WRITE_COMMAND)
            self._check_image_size(self.train_index)
        if stage in ("fit", "validate", None) and self.val_urls is None and self.val_shards is not None:
            self.val_urls, self.val_index = resolve_shards(self.val_shards, write_command=WRITE_COMMAND)
            self._check_image_size(self.val_index)
            # Here rather than in val_dataloader, which Lightning first calls at the
            # first validation: a run with too few shards stops before training.
            self._check_validation_shards()
        if stage == "validate" and self.val_shards is None:
            raise ShardsNotFoundError(f"val_shards is not set; pass a shard folder written by `{WRITE_COMMAND}`")
        if self._skip_counter is None:
            # Created here, in the main process, so that DataLoader workers share it.
            self._skip_counter = SkipCounter()

    def train_dataloader(self) -> FixedLengthEpochs:
        """Return the training batches; each iteration is one epoch of fixed length."""
        if self.train_urls is None:
            self.setup("fit")
        _, world_size = self._rank_and_world_size()
        return FixedLengthEpochs(self._train_loader, self._num_train_batches(), self.position, world_size)

    def val_dataloader(self) -> wds.WebLoader | list[Any]:
        """Return the validation batches, or an empty list (no validation) without ``val_shards``."""
        if self.val_urls is None and self.val_shards is not None:
            self.setup("validate")
        if self.val_urls is None:
            return []
        rank, world_size = self._rank_and_world_size()
        self._check_validation_shards()
        if world_size > 1:
            self._warn_uneven_validation(world_size)
        pipeline = val_pipeline(
            self.val_urls,
            decoder=self._decoder(random_flip=False, seed=self.seed),
            batch_size=self.val_batch_size,
            rank=rank,
            world_size=world_size,
        )
        return wds.WebLoader(
            pipeline,
            batch_size=None,
            num_workers=self.val_num_workers,
            pin_memory=torch.cuda.is_available(),
        )

    def teardown(self, stage: str | None = None) -> None:
        if self.skipped:
            logger.warning("%d corrupt samples were skipped while reading image shards", self.skipped)

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

    def _check_image_size(self, index: ShardIndex | None) -> None:
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

    def _check_validation_shards(self) -> None:
        assert self.val_urls is not None
        check_validation_shards(
            shards=str(self.val_shards),
            num_shards=len(self.val_urls),
            num_samples=None if self.val_index is None else self.val_index.num_samples,
            world_size=self._rank_and_world_size()[1],
            num_workers=self.val_num_workers,
            write_command=WRITE_COMMAND,
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

    def _rank_and_world_size(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _num_train_batches(self) -> int:
        if self.batches_per_epoch is not None:
            return self.batches_per_epoch
        if self.train_index is None:
            raise ValueError(
                f"the length of an epoch is unknown because {self.train_shards!r} has no index.json; "
                "set batches_per_epoch"
            )
        _, world_size = self._rank_and_world_size()
        return max(1, self.train_index.num_samples // (self.batch_size * world_size))

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

    def _train_loader(self, epoch: int) -> wds.WebLoader:
        assert self.train_urls is not None
        rank, world_size = self._rank_and_world_size()
        pipeline = train_pipeline(
            self.train_urls,
            decoder=self._decoder(random_flip=self.random_flip, seed=derive_seed(self.seed, epoch, rank)),
            batch_size=self.batch_size,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
            epoch=epoch,
            rank=rank,
            world_size=world_size,
        )
        return wds.WebLoader(
            pipeline,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            # The DataLoader draws its workers' base seed from this generator, not from
            # the global torch RNG, so starting an epoch leaves the training RNG alone.
            generator=torch.Generator().manual_seed(derive_seed(self.seed, epoch, rank) % 2**63),
        )


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
