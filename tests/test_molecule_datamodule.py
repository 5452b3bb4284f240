"""Tests for the molecule DataModule and its decoding stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import webdataset as wds

from unisep.datamodules.image_stream import CorruptSampleError, SkipCounter
from unisep.datamodules.molecule_sources import load_qm9pack_table
from unisep.datamodules.molecule_stream import DecodeMolecules, random_rotation_matrix
from unisep.datamodules.molecule_vocabulary import ElementVocabulary
from unisep.datamodules.molecule_writer import encode_npz, write_molecule_shards
from unisep.datamodules.molecules import MoleculeDataModule
from unisep.datamodules.shards import ShardSetWriter, ShardsNotFoundError

PADDING = 5  # index of "no atom" for the QM9 vocabulary H, C, N, O, F


@pytest.fixture(scope="module")
def qm9_shards(tmp_path_factory):
    """60 training and 25 validation QM9 molecules, 10 per shard."""
    root = tmp_path_factory.mktemp("qm9")
    table = load_qm9pack_table()
    for split, count in (("train", 60), ("val", 25)):
        write_molecule_shards(
            "qm9pack", None, root / split, split=split, limit=count, qm9pack_table=table, max_samples_per_shard=10, progress=False
        )
    return root


def _module(qm9_shards, **options) -> MoleculeDataModule:
    settings = dict(train_shards=str(qm9_shards / "train"), val_shards=str(qm9_shards / "val"), batch_size=8, num_workers=0)
    settings.update(options)
    module = MoleculeDataModule(**settings)
    module.setup("fit")
    return module


def test_batch_shapes_and_padding(qm9_shards):
    batch = next(iter(_module(qm9_shards).train_dataloader()))

    assert batch["elements"].shape == (8, 29)
    assert batch["elements"].dtype == torch.int64
    assert batch["positions"].shape == (8, 29, 3)
    assert batch["positions"].dtype == torch.float32
    assert batch["mask"].dtype == torch.bool
    assert torch.equal(batch["label"], torch.zeros(8, dtype=torch.int64))
    assert len(batch["smiles"]) == 8
    assert torch.equal(batch["mask"], batch["elements"] != PADDING)
    assert batch["positions"][~batch["mask"]].abs().max() == 0
    # Real atoms come first, so each mask is a prefix.
    assert torch.equal(batch["mask"], batch["mask"].cumprod(dim=1).bool())


def test_positions_centred(qm9_shards):
    batch = next(iter(_module(qm9_shards, random_rotation=False).val_dataloader()))
    counts = batch["mask"].sum(dim=1, keepdim=True)
    centres = batch["positions"].sum(dim=1) / counts

    assert centres.abs().max() < 1e-5


def test_rotation_preserves_distances(qm9_shards):
    plain = next(iter(_module(qm9_shards, random_rotation=False).val_dataloader()))
    module = _module(qm9_shards)
    decoder = module._decoder(random_rotation=True, seed=1)
    pipeline = wds.DataPipeline(wds.SimpleShardList(module.val_urls[:1]), wds.tarfile_to_samples(), decoder)
    rotated = next(iter(pipeline))

    real = plain["mask"][0].numpy()
    before = plain["positions"][0].numpy()[real]
    after = rotated["positions"][real]
    distances = lambda x: np.linalg.norm(x[:, None] - x[None], axis=-1)  # noqa: E731
    assert not np.allclose(before, after, atol=1e-3)
    np.testing.assert_allclose(distances(before), distances(after), atol=1e-4)


def test_random_rotation_is_proper():
    rng = np.random.default_rng(0)
    rotations = np.stack([random_rotation_matrix(rng) for _ in range(200)])

    np.testing.assert_allclose(rotations @ rotations.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (200, 3, 3)), atol=1e-10)
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-10)
    # Haar measure: each matrix entry has mean 0.
    assert np.abs(rotations.mean(axis=0)).max() < 0.15


def test_validation_sees_each_molecule_once(qm9_shards):
    module = _module(qm9_shards, num_workers=2)
    smiles = [s for batch in module.val_dataloader() for s in batch["smiles"]]

    assert len(smiles) == 25
    assert sorted(smiles) == sorted(module.validation_smiles())


def test_training_epoch_has_fixed_length(qm9_shards):
    module = _module(qm9_shards)
    loader = module.train_dataloader()
    epochs = [sum(1 for _ in loader) for _ in range(2)]

    assert len(loader) == 60 // 8
    assert epochs == [7, 7]
    assert module.state_dict() == {"seed": 0, "epoch": 2}
    assert len(module.training_smiles()) == 60


def test_unusable_molecules_skipped_and_counted(tmp_path):
    good = encode_npz(np.array([8, 1, 1]), np.array([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]))
    sulfur = encode_npz(np.array([16, 1, 1]), np.array([[0.0, 0, 0], [1.34, 0, 0], [-0.3, 1.3, 0]]))
    with ShardSetWriter(tmp_path / "mixed", modality="molecule", prefix="mixed") as writer:
        writer.write({"__key__": "good", "npz": good, "smi": "O"})
        writer.write({"__key__": "sulfur", "npz": sulfur, "smi": "S"})
        writer.write({"__key__": "broken", "npz": b"not an archive", "smi": "C"})
    counter = SkipCounter()
    vocabulary = ElementVocabulary()
    urls = [str(tmp_path / "mixed" / "mixed-000000.tar")]
    decoder = DecodeMolecules(vocabulary=vocabulary, max_atoms=29, corrupt="skip", counter=counter)
    decoded = list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(), decoder))

    assert [d["smiles"] for d in decoded] == ["O"]
    assert counter.value == 2
    strict = DecodeMolecules(vocabulary=vocabulary, max_atoms=29, corrupt="raise", counter=counter)
    with pytest.raises(CorruptSampleError, match="sulfur"):
        list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(), strict))


def test_molecule_larger_than_max_atoms_skipped(qm9_shards):
    counter = SkipCounter()
    decoder = DecodeMolecules(vocabulary=ElementVocabulary(), max_atoms=8, corrupt="skip", counter=counter)
    module = _module(qm9_shards)
    samples = wds.DataPipeline(wds.SimpleShardList(module.val_urls), wds.tarfile_to_samples(), decoder)
    decoded = list(samples)

    assert all(d["mask"].sum() <= 8 for d in decoded)
    assert counter.value == 25 - len(decoded)
    assert counter.value > 0


def test_setup_rejects_mismatched_shards(tmp_path, qm9_shards):
    source = tmp_path / "s.smi"
    source.write_text("CCS\n")
    write_molecule_shards("smiles", source, tmp_path / "sulfur", elements=["H", "C", "S"], progress=False)

    with pytest.raises(ValueError, match=r"elements \['S'\]"):
        MoleculeDataModule(train_shards=str(tmp_path / "sulfur")).setup("fit")
    with pytest.raises(ValueError, match="max_atoms >= 29"):
        MoleculeDataModule(train_shards=str(qm9_shards / "train"), max_atoms=20).setup("fit")


def test_missing_shards_error_names_command(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ShardsNotFoundError, match="unisep data molecules") as error:
        MoleculeDataModule(train_shards=str(missing)).setup("fit")
    assert str(missing) in str(error.value)
    with pytest.raises(ShardsNotFoundError, match="demo='qm9'"):
        MoleculeDataModule().setup("fit")


def test_constructor_rejects_bad_settings():
    with pytest.raises(ValueError, match="leave train_shards"):
        MoleculeDataModule(train_shards="x", demo="qm9")
    with pytest.raises(ValueError, match="demo must be"):
        MoleculeDataModule(demo="zinc")
    with pytest.raises(ValueError, match="batch_size"):
        MoleculeDataModule(batch_size=0)
