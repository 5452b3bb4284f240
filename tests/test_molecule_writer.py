"""Tests for the molecule shard writer: every source round-trips, bad inputs are
skipped with their reason and never written, the QM9 split and the demo builder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from rdkit import Chem, RDConfig

from unisep.datamodules.molecule_sources import QM9PACK_NUM_MOLECULES, qm9_split_rows, read_qm9pack
from unisep.datamodules.molecule_writer import decode_npz, main, write_molecule_shards
from unisep.datamodules.qm9_demo import ensure_qm9_demo_shards
from unisep.datamodules.shards import ShardSetExistsError, read_shard_index

NCI_SDF = Path(RDConfig.RDDataDir) / "NCI" / "first_200.props.sdf"

WATER_XYZ = """3
water, DFT geometry from QM9
O -0.0343604951 0.9775395708 0.0076015923
H 0.0647664923 0.0205721989 0.0015346341
H 0.8717903737 1.3007924048 0.0006931336
"""

# The layout of the original QM9 files: a charge column, Mathematica exponents, and
# frequency, SMILES and InChI lines after the atoms.
METHANE_QM9_XYZ = """5
gdb 1\t157.7118\t157.70997\t157.70699\t0.\t13.21
C\t-0.0126981359\t 1.0858041578\t 0.0080009958\t-0.535689
H\t 0.002150416\t-0.0060313176\t 0.0019761204\t 0.133921
H\t 1.0117308433\t 1.4637511618\t 0.0002765748\t 0.133922
H\t-0.540815069\t 1.4475266138\t-0.8766437152\t 0.133923
H\t-0.5238136345\t 1.4379326443\t 9.063972942*^-1\t 0.133923
1341.307\t1341.3284\t1341.365\t1562.6731\t1562.7453\t3038.3205\t3151.6034\t3151.6788\t3151.7078
C\tC
InChI=1S/CH4/h1H4\tInChI=1S/CH4/h1H4
"""


def _samples(folder: Path) -> list[dict]:
    index = read_shard_index(folder)
    return list(wds.DataPipeline(wds.SimpleShardList(index.urls), wds.tarfile_to_samples()))


def _decoded(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    return {s["__key__"]: (*decode_npz(s["npz"]), s["smi"].decode()) for s in _samples(folder)}


# ------------------------------------------------------------------------------ sources


def test_xyz_round_trip_exact(tmp_path):
    source = tmp_path / "two.xyz"
    source.write_text(WATER_XYZ + METHANE_QM9_XYZ)

    index = write_molecule_shards("xyz", source, tmp_path / "out", progress=False)
    molecules = _decoded(tmp_path / "out")

    assert index.num_samples == 2
    assert index.skipped == {}
    elements, positions, smiles = molecules["two_000000"]
    assert elements.tolist() == [8, 1, 1]
    np.testing.assert_array_equal(positions[1], np.float32([0.0647664923, 0.0205721989, 0.0015346341]))
    assert smiles == "O"  # inferred from the geometry: XYZ carries no bonds
    elements, positions, smiles = molecules["two_000001"]
    assert elements.tolist() == [6, 1, 1, 1, 1]
    assert positions[4, 2] == np.float32(0.9063972942)
    assert smiles == "C"


def test_sdf_round_trip_with_embedding(tmp_path):
    index = write_molecule_shards("sdf", NCI_SDF, tmp_path / "out", limit=12, progress=False)
    molecules = _decoded(tmp_path / "out")
    originals = [m for _, m in zip(range(12), Chem.SDMolSupplier(str(NCI_SDF)))]

    assert index.num_samples + sum(index.skipped.values()) == 12
    assert index.num_samples >= 3
    assert index.writer["force_fields"] == {"MMFF94": index.num_samples}
    for key, (elements, positions, smiles) in molecules.items():
        original = originals[int(key.rsplit("_", 1)[1])]
        expected = Chem.AddHs(original)
        # The 2-D file has implicit hydrogens; the sample has all atoms and 3-D coordinates.
        assert sorted(elements.tolist()) == sorted(a.GetAtomicNum() for a in expected.GetAtoms())
        assert positions.shape == (len(elements), 3)
        assert np.ptp(positions[:, 2]) > 0.1
        assert smiles == Chem.MolToSmiles(original)


def test_smiles_round_trip_deterministic(tmp_path):
    source = tmp_path / "mols.smi"
    source.write_text("smiles name\nCCO ethanol\nO=C=O\n# a comment\nc1ccncc1 pyridine\n")

    first = write_molecule_shards("smiles", source, tmp_path / "a", progress=False)
    write_molecule_shards("smiles", source, tmp_path / "b", progress=False)
    molecules = _decoded(tmp_path / "a")

    assert first.num_samples == 3
    assert [m[2] for m in molecules.values()] == ["CCO", "O=C=O", "c1ccncc1"]
    assert [len(m[0]) for m in molecules.values()] == [9, 3, 11]
    assert (tmp_path / "a" / "a-000000.tar").read_bytes() == (tmp_path / "b" / "b-000000.tar").read_bytes()


def test_qm9pack_round_trip(tmp_path):
    index = write_molecule_shards("qm9pack", None, tmp_path / "out", split="val", limit=30, progress=False)
    molecules = _decoded(tmp_path / "out")
    expected = {r.key: r for r in read_qm9pack("val", limit=30)}

    assert index.num_samples == 30
    assert index.writer["split"] == "val"
    assert set(molecules) == set(expected)
    for key, (elements, positions, smiles) in molecules.items():
        assert elements.dtype == np.int64  # decode_npz widens the stored int8
        assert elements.tolist() == expected[key].atomic_numbers.tolist()
        np.testing.assert_allclose(positions, expected[key].positions, atol=1e-6)
        assert smiles == Chem.MolToSmiles(Chem.MolFromSmiles(expected[key].smiles))


def test_qm9_split_sizes_disjoint():
    rows = qm9_split_rows(QM9PACK_NUM_MOLECULES)
    again = qm9_split_rows(QM9PACK_NUM_MOLECULES)

    assert {name: len(r) for name, r in rows.items()} == {"train": 100_000, "val": 17_748, "test": 13_083}
    assert len(np.unique(np.concatenate(list(rows.values())))) == QM9PACK_NUM_MOLECULES
    assert all(np.array_equal(rows[name], again[name]) for name in rows)


# ---------------------------------------------------------------------------- bad input


def test_bad_inputs_skipped_and_counted(tmp_path):
    source = tmp_path / "bad.smi"
    source.write_text(
        "CCO good\n"
        "C1CC unclosed_ring\n"
        "CCCCCCCCCC decane_32_atoms\n"
        "CCS sulfur\n"
        "c1ccccc1 benzene\n"
    )

    index = write_molecule_shards("smiles", source, tmp_path / "out", max_atoms=29, progress=False)
    keys = {s["__key__"] for s in _samples(tmp_path / "out")}

    assert index.skipped == {"element outside vocabulary": 1, "too many atoms": 1, "unparsable SMILES": 1}
    assert keys == {"bad_000001", "bad_000005"}
    assert index.num_samples == 2


def test_max_atoms_counts_hydrogens(tmp_path):
    source = tmp_path / "alkanes.smi"
    source.write_text("C methane\nCC ethane\n")  # 5 and 8 atoms with hydrogens

    index = write_molecule_shards("smiles", source, tmp_path / "out", max_atoms=7, progress=False)

    assert index.skipped == {"too many atoms": 1}
    assert [s["__key__"] for s in _samples(tmp_path / "out")] == ["alkanes_000001"]


def test_all_inputs_skipped_raises(tmp_path):
    source = tmp_path / "bad.smi"
    source.write_text("C1CC\n")

    with pytest.raises(ValueError, match="unparsable SMILES"):
        write_molecule_shards("smiles", source, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "index.json").exists()


def test_bad_xyz_block_skipped(tmp_path):
    source = tmp_path / "mixed.xyz"
    source.write_text(WATER_XYZ + "2\nbroken\nC 0.0 0.0\nH 0 0 1.1\n" + "1\nunknown element\nXx 0 0 0\n" + WATER_XYZ)

    index = write_molecule_shards("xyz", source, tmp_path / "out", progress=False)

    assert index.num_samples == 2
    assert index.skipped == {"unparsable XYZ": 2}


def test_custom_vocabulary_accepts_element(tmp_path):
    source = tmp_path / "s.smi"
    source.write_text("CCS\n")

    index = write_molecule_shards("smiles", source, tmp_path / "out", elements=["H", "C", "S"], progress=False)

    assert index.num_samples == 1
    assert index.writer["elements"] == ["H", "C", "S"]


def test_writer_refuses_overwrite(tmp_path):
    source = tmp_path / "w.xyz"
    source.write_text(WATER_XYZ)
    write_molecule_shards("xyz", source, tmp_path / "out", progress=False)

    with pytest.raises(ShardSetExistsError):
        write_molecule_shards("xyz", source, tmp_path / "out", progress=False)
    assert write_molecule_shards("xyz", source, tmp_path / "out", overwrite=True, progress=False).num_samples == 1


def test_writer_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown molecule source"):
        write_molecule_shards("pdb", tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match="split applies to the qm9pack source only"):
        write_molecule_shards("xyz", tmp_path, tmp_path / "out", split="train")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_molecule_shards("xyz", tmp_path / "missing.xyz", tmp_path / "out")
    with pytest.raises(ValueError, match="not an element symbol"):
        write_molecule_shards("xyz", tmp_path, tmp_path / "out", elements=["H", "Qq"])


# ------------------------------------------------------------------- command line, demo


def test_command_line_writes_all_qm9_splits(tmp_path, capsys):
    status = main(["--source", "qm9pack", str(tmp_path / "qm9"), "--limit", "5", "--no-progress"])

    assert status == 0
    assert [read_shard_index(tmp_path / "qm9" / s).num_samples for s in ("train", "val", "test")] == [5, 5, 5]
    assert "wrote 5 molecules" in capsys.readouterr().out


def test_command_line_reports_errors(tmp_path, capsys):
    status = main(["--source", "smiles", str(tmp_path / "missing.smi"), str(tmp_path / "out"), "--no-progress"])

    assert status == 1
    assert "missing.smi does not exist" in capsys.readouterr().err


def test_demo_shards_written_once(tmp_path):
    paths = ensure_qm9_demo_shards(tmp_path, num_train=40, num_val=10)
    index_file = paths["train"] / "index.json"
    written = index_file.stat().st_mtime_ns

    assert read_shard_index(paths["train"]).num_samples == 40
    assert read_shard_index(paths["val"]).num_samples == 10
    train_keys = {s["__key__"] for s in _samples(paths["train"])}
    val_keys = {s["__key__"] for s in _samples(paths["val"])}
    assert not train_keys & val_keys
    assert ensure_qm9_demo_shards(tmp_path, num_train=40, num_val=10) == paths
    assert index_file.stat().st_mtime_ns == written
    assert sorted(os.listdir(tmp_path)) == ["qm9-demo-40-10"]


def test_demo_rejects_sizes(tmp_path):
    with pytest.raises(ValueError, match="num_train"):
        ensure_qm9_demo_shards(tmp_path, num_train=0)
    with pytest.raises(ValueError, match="num_val"):
        ensure_qm9_demo_shards(tmp_path, num_val=20_000)
