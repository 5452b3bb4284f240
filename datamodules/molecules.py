"""LightningDataModule for 3-D molecules stored as WebDataset shards."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import webdataset as wds

from unisep.datamodules.molecule_stream import (
    DecodeMolecules,
    molecule_train_pipeline,
    molecule_val_pipeline,
    read_shard_smiles,
)
from unisep.datamodules.molecule_vocabulary import QM9_ELEMENTS, QM9_MAX_ATOMS, ElementVocabulary
from unisep.datamodules.molecule_writer import WRITE_COMMAND
from unisep.datamodules.qm9_demo import ensure_qm9_demo_shards
from unisep.datamodules.seeding import derive_seed
from unisep.datamodules.shard_datamodule import ShardDataModule
from unisep.datamodules.shards import ShardIndex
from unisep.datamodules.stream_stages import CorruptPolicy

logger = logging.getLogger(__name__)

DEMO_DATASETS = ("qm9",)


class _FixedLengthEpochs:
    """Training batches from an endless stream, cut into epochs of `num_batches`.

    Each `iter()` starts the next epoch with a freshly seeded pipeline and new workers.
    """

    def __init__(self, datamodule: MoleculeDataModule, num_batches: int) -> None:
        self.datamodule = datamodule
        self.num_batches = num_batches

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self.datamodule._begin_train_epoch()
        yield from self.datamodule._train_loader(epoch).with_epoch(nbatches=self.num_batches)


class MoleculeDataModule(ShardDataModule):
    """3-D molecules from WebDataset shards, as padded atom sets for UNITE.

    Batches are dicts with these entries:

    - ``elements``: (B, max_atoms) int64 vocabulary indices, with the padding index
      `len(elements)` on empty slots;
    - ``positions``: (B, max_atoms, 3) float32 in angstrom, centred at the centre of
      geometry, zeros on empty slots;
    - ``mask``: (B, max_atoms) bool, True on real atoms;
    - ``label``: (B,) int64 zeros, because the data is unconditional and the model
      uses a class table of size 1;
    - ``smiles``: list of B canonical SMILES.

    Training reads shards with replacement and cuts the endless stream into epochs of
    `batches_per_epoch` batches on every rank. Validation reads each molecule once,
    with shards split over ranks and workers. Randomness is seeded from (seed, epoch,
    rank, worker); `state_dict` stores the seed and the epoch count.

    Shards come from ``unisep data molecules`` or, with ``demo="qm9"``, from a subset of
    the QM9 molecules in qm9pack written on first use. ``setup`` rejects shards written
    with a larger ``max_atoms`` or with elements outside ``elements``.
    """

    write_command = WRITE_COMMAND
    demo_datasets = DEMO_DATASETS

    def __init__(
        self,
        train_shards: str | None = None,
        val_shards: str | None = None,
        batch_size: int = 64,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        shuffle_buffer: int = 2000,
        batches_per_epoch: int | None = None,
        random_rotation: bool = True,
        corrupt: Literal["skip", "raise"] = "skip",
        demo: Literal["qm9"] | None = None,
        demo_root: str = "data",
        demo_train_size: int = 4000,
        demo_val_size: int = 500,
        seed: int = 0,
        max_atoms: int = QM9_MAX_ATOMS,
        elements: Sequence[str] = QM9_ELEMENTS,
    ) -> None:
        """Store the settings; shard paths are checked in `setup`.

        Args:
            train_shards: training shard folder (with ``index.json``) or a brace or glob
                pattern of tar files. Required to fit unless `demo` is set.
            val_shards: validation shards in the same forms; None disables validation.
            batch_size: training molecules per batch on each device.
            val_batch_size: validation molecules per batch; defaults to `batch_size`.
            num_workers: DataLoader worker processes per device; 0 loads in the main process.
            shuffle_buffer: molecules each worker holds for shuffling.
            batches_per_epoch: training batches per epoch on each device. Defaults to
                ``num_samples // (batch_size * world_size)`` from the shard index.
            random_rotation: rotate each training molecule by a uniformly random
                rotation. The reconstruction loss compares coordinates directly and is
                not rotation invariant, so this is on by default.
            corrupt: "skip" logs and counts unusable molecules (bad archive, element
                outside `elements`, more than `max_atoms` atoms); "raise" stops with an
                error naming the sample.
            demo: "qm9" trains on a random subset of the real QM9 molecules shipped by
                qm9pack, written to `demo_root` on first use. `train_shards` and
                `val_shards` must then be None.
            demo_root: folder for the demo shards.
            demo_train_size, demo_val_size: molecules in the demo's splits.
            seed: seed of shard sampling, shuffling and rotations.
            max_atoms: atom slots per molecule, hydrogens included.
            elements: element vocabulary, in index order.

        Raises:
            ValueError: a setting is out of range, or `demo` is combined with shard paths.
        """
        super().__init__(train_shards, val_shards, demo, seed)
        self.save_hyperparameters()
        for name, value in dict(batch_size=batch_size, shuffle_buffer=shuffle_buffer, max_atoms=max_atoms).items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name, value in dict(val_batch_size=val_batch_size, batches_per_epoch=batches_per_epoch).items():
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if corrupt not in ("skip", "raise"):
            raise ValueError(f'corrupt must be "skip" or "raise", got {corrupt!r}')

        self.vocabulary = ElementVocabulary(elements)
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.batches_per_epoch = batches_per_epoch
        self.random_rotation = random_rotation
        self.corrupt: CorruptPolicy = corrupt
        self.demo_root = demo_root
        self.demo_train_size = demo_train_size
        self.demo_val_size = demo_val_size
        self.max_atoms = max_atoms

        self.epoch = 0  # training epochs started so far; the next epoch's number

    # ------------------------------------------------------------------ Lightning hooks

    def train_dataloader(self) -> _FixedLengthEpochs:
        """Return the training batches; each iteration is one epoch of fixed length."""
        if self.train_urls is None:
            self.setup("fit")
        return _FixedLengthEpochs(self, self._num_train_batches())

    def teardown(self, stage: str | None = None) -> None:
        if self.skipped:
            logger.warning("%d unusable molecules were skipped while reading shards", self.skipped)

    def state_dict(self) -> dict[str, Any]:
        """Return the seed and the number of training epochs started."""
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the seed and epoch count, so the next epoch gets a new order."""
        self.seed = int(state_dict["seed"])
        self.epoch = int(state_dict["epoch"])

    # ------------------------------------------------------------------ public helpers

    @property
    def skipped(self) -> int:
        """Unusable molecules skipped so far, over all workers and streams of this process."""
        return 0 if self._skip_counter is None else self._skip_counter.value

    @property
    def atomic_numbers(self) -> tuple[int, ...]:
        """Atomic numbers of the vocabulary, in index order."""
        return self.vocabulary.atomic_numbers

    @property
    def num_classes(self) -> int:
        """Number of class labels: 1, the data is unconditional."""
        return 1

    def training_smiles(self) -> list[str]:
        """Return the stored SMILES of every training molecule (for novelty)."""
        if self.train_urls is None:
            self.setup("fit")
        assert self.train_urls is not None
        return read_shard_smiles(self.train_urls)

    def validation_smiles(self) -> list[str]:
        """Return the stored SMILES of every validation molecule (an FCD reference)."""
        if self.val_urls is None:
            self.setup("validate")
        assert self.val_urls is not None
        return read_shard_smiles(self.val_urls)

    # ------------------------------------------------------------------ internals

    def _write_demo(self) -> dict[str, Path] | None:
        if self.demo != "qm9":
            return None
        return ensure_qm9_demo_shards(self.demo_root, self.demo_train_size, self.demo_val_size)

    def _check_index(self, index: ShardIndex | None) -> None:
        """Reject shards whose writer settings cannot fit this vocabulary and size."""
        if index is None:
            return
        stored_max = index.writer.get("max_atoms")
        if stored_max is not None and int(stored_max) > self.max_atoms:
            raise ValueError(
                f"shards in {index.folder} allow up to {stored_max} atoms but max_atoms is {self.max_atoms}; "
                f"set max_atoms >= {stored_max} or rewrite the shards with --max-atoms {self.max_atoms}"
            )
        stored_elements = index.writer.get("elements")
        if stored_elements is not None:
            extra = sorted(set(stored_elements) - set(self.vocabulary.symbols))
            if extra:
                raise ValueError(
                    f"shards in {index.folder} may contain elements {extra} that are not in "
                    f"elements={list(self.vocabulary.symbols)}; add them to elements"
                )

    def _num_train_batches(self) -> int:
        return self._epoch_length(self.batches_per_epoch, self.batch_size)

    def _decoder(self, *, random_rotation: bool, seed: int) -> DecodeMolecules:
        assert self._skip_counter is not None, "setup() creates the skip counter"
        return DecodeMolecules(
            vocabulary=self.vocabulary,
            max_atoms=self.max_atoms,
            corrupt=self.corrupt,
            counter=self._skip_counter,
            random_rotation=random_rotation,
            seed=seed,
        )

    def _val_loader(self, rank: int, world_size: int) -> wds.WebLoader:
        assert self.val_urls is not None
        pipeline = molecule_val_pipeline(
            self.val_urls,
            decoder=self._decoder(random_rotation=False, seed=self.seed),
            batch_size=self.val_batch_size,
            rank=rank,
            world_size=world_size,
        )
        # More workers than shards would leave some workers without data.
        shards_on_rank = len(self.val_urls[rank::world_size])
        return wds.WebLoader(pipeline, batch_size=None, num_workers=min(self.num_workers, shards_on_rank))

    def _begin_train_epoch(self) -> int:
        epoch = self.epoch
        self.epoch += 1
        return epoch

    def _train_loader(self, epoch: int) -> wds.WebLoader:
        assert self.train_urls is not None
        rank, _ = self._rank_and_world_size()
        pipeline = molecule_train_pipeline(
            self.train_urls,
            decoder=self._decoder(random_rotation=self.random_rotation, seed=derive_seed(self.seed, epoch, rank)),
            batch_size=self.batch_size,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
            epoch=epoch,
            rank=rank,
        )
        return wds.WebLoader(pipeline, batch_size=None, num_workers=self.num_workers)
