"""WebDataset pipelines that turn molecule shards into padded batches.

A decoded molecule is a fixed-size set of `max_atoms` atom slots:

- ``elements``: (max_atoms,) int64 indices into the element vocabulary; empty slots
  hold the padding index `len(vocabulary)`;
- ``positions``: (max_atoms, 3) float32 in angstrom, centred at the centre of geometry
  (the unweighted mean of the real atoms' positions), zeros on empty slots;
- ``mask``: (max_atoms,) bool, True on real atoms;
- ``smiles``: the canonical SMILES stored with the molecule.

Atoms keep the order of the shard. The training stream can apply a uniformly random
rotation per molecule, because the model's coordinate loss is not rotation invariant.
The stream structure (resampled shards, per-worker seeded shuffle, rank splitting)
follows the image streams in `image_stream`, with the stages of `stream_stages`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
import webdataset as wds

from unisep.datamodules.molecule_vocabulary import ElementVocabulary
from unisep.datamodules.molecule_writer import decode_npz
from unisep.datamodules.seeding import derive_seed, worker_info
from unisep.datamodules.stream_stages import (
    CorruptPolicy,
    ShuffleBuffer,
    SkipCounter,
    skip_or_raise,
    tar_error_handler,
    validation_pipeline,
)

logger = logging.getLogger(__name__)


def random_rotation_matrix(rng: np.random.Generator) -> np.ndarray:
    """Draw a rotation matrix (3, 3) uniformly from SO(3) (Haar measure).

    Q from the QR decomposition of a Gaussian matrix, with the signs of R's diagonal
    moved into Q, is Haar-distributed on O(3). Negating Q when its determinant is -1
    maps it onto SO(3).
    """
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q = -q
    return q


class DecodeMolecules:
    """Pipeline stage: raw webdataset samples -> padded molecule dicts.

    Args:
        vocabulary: element vocabulary of the model.
        max_atoms: atom slots per molecule.
        corrupt: "skip" counts and logs an unusable sample; "raise" raises
            `CorruptSampleError` naming its key and shard.
        counter: shared count of skipped samples.
        random_rotation: rotate each molecule by a uniformly random rotation.
        seed: seed of the rotations; the worker id is mixed in.
    """

    def __init__(
        self,
        *,
        vocabulary: ElementVocabulary,
        max_atoms: int,
        corrupt: CorruptPolicy,
        counter: SkipCounter,
        random_rotation: bool = False,
        seed: int = 0,
    ) -> None:
        self.vocabulary = vocabulary
        self.max_atoms = max_atoms
        self.corrupt = corrupt
        self.counter = counter
        self.random_rotation = random_rotation
        self.seed = seed

    def decode(self, sample: dict[str, Any], rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Decode one sample; raise ValueError when it is unusable."""
        if "npz" not in sample:
            present = sorted(k for k in sample if not k.startswith("__"))
            raise ValueError(f"no npz member; members are {present}")
        numbers, positions = decode_npz(sample["npz"])
        if len(numbers) == 0:
            raise ValueError("the molecule has no atoms")
        if len(numbers) > self.max_atoms:
            raise ValueError(f"{len(numbers)} atoms exceed max_atoms {self.max_atoms}")
        indices = self.vocabulary.encode(numbers)
        if not np.isfinite(positions).all():
            raise ValueError("non-finite coordinates")

        centred = positions - positions.mean(axis=0, keepdims=True)
        if rng is not None:
            centred = centred @ random_rotation_matrix(rng).T.astype(np.float32)

        count = len(numbers)
        elements = np.full(self.max_atoms, self.vocabulary.padding_index, dtype=np.int64)
        elements[:count] = indices
        padded = np.zeros((self.max_atoms, 3), dtype=np.float32)
        padded[:count] = centred
        mask = np.zeros(self.max_atoms, dtype=bool)
        mask[:count] = True
        smiles = sample["smi"].decode("utf-8").strip() if "smi" in sample else ""
        return {"elements": elements, "positions": padded, "mask": mask, "smiles": smiles}

    def __call__(self, samples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        worker, _ = worker_info()
        rng = np.random.default_rng(derive_seed(self.seed, worker, 3)) if self.random_rotation else None
        for sample in samples:
            try:
                decoded = self.decode(sample, rng)
            except ValueError as error:
                skip_or_raise(
                    sample, error, corrupt=self.corrupt, counter=self.counter, label="unusable molecule", log=logger
                )
                continue
            yield decoded


def collate_molecules(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack decoded molecules into a batch.

    Returns:
        ``elements`` (B, max_atoms) int64, ``positions`` (B, max_atoms, 3) float32,
        ``mask`` (B, max_atoms) bool, ``label`` (B,) int64 zeros (QM9 is
        unconditional, so every molecule has class 0) and ``smiles`` list[str].
    """
    return {
        "elements": torch.from_numpy(np.stack([s["elements"] for s in samples])),
        "positions": torch.from_numpy(np.stack([s["positions"] for s in samples])),
        "mask": torch.from_numpy(np.stack([s["mask"] for s in samples])),
        "label": torch.zeros(len(samples), dtype=torch.int64),
        "smiles": [s["smiles"] for s in samples],
    }


def _dataloader_worker_id() -> int:
    return worker_info()[0]


def molecule_train_pipeline(
    urls: list[str],
    *,
    decoder: DecodeMolecules,
    batch_size: int,
    shuffle_buffer: int,
    seed: int,
    epoch: int,
    rank: int,
) -> wds.DataPipeline:
    """Build the endless training stream of one rank for one epoch.

    Shards are drawn with replacement from a generator seeded by (seed, epoch, rank,
    worker), so every rank yields batches without end. The caller takes a fixed number
    of batches per epoch.
    """
    stream_seed = derive_seed(seed, epoch, rank)
    return wds.DataPipeline(
        wds.ResampledShards(urls, seed=stream_seed, deterministic=True, worker_seed=_dataloader_worker_id),
        wds.tarfile_to_samples(handler=tar_error_handler(decoder.corrupt, "molecule shard")),
        ShuffleBuffer(shuffle_buffer, stream_seed),
        decoder,
        wds.batched(batch_size, collation_fn=collate_molecules, partial=False),
    )


def molecule_val_pipeline(
    urls: list[str],
    *,
    decoder: DecodeMolecules,
    batch_size: int,
    rank: int,
    world_size: int,
) -> wds.DataPipeline:
    """Build the finite validation stream of one rank: each molecule once over all ranks.

    Shards are split over ranks, then over DataLoader workers; the last batch of each
    worker may be smaller than `batch_size`.
    """
    return validation_pipeline(
        urls,
        decode=decoder,
        collate=collate_molecules,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        handler=tar_error_handler(decoder.corrupt, "molecule shard"),
    )


def read_shard_smiles(urls: list[str]) -> list[str]:
    """Read the stored SMILES of every molecule in the given shards, in order."""
    pipeline = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())
    return [sample["smi"].decode("utf-8").strip() for sample in pipeline if "smi" in sample]
