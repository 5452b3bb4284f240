"""Hand-checked cases for the molecule metrics: validity, uniqueness, novelty,
stability, RMSD after alignment, reconstruction match and FCD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem
from scipy.spatial.transform import Rotation

from unisep.datamodules.molecule_sources import load_qm9pack_table, read_qm9pack
from unisep.metrics.fcd import frechet_chemnet_distance
from unisep.metrics.molecule_reconstruction import MoleculeReconstruction, aligned_rmsd, reconstruction_match
from unisep.metrics.molecule_stability import MoleculeStability, distance_bond_orders, stability
from unisep.metrics.molecules import (
    AtomCloud,
    BondInferenceError,
    _check_plausible,
    canonical_smiles,
    check_molecule,
    check_molecules,
    to_atom_clouds,
    validity_uniqueness_novelty,
)

QM9_ATOMIC_NUMBERS = (1, 6, 7, 8, 9)


@pytest.fixture(scope="module")
def qm9_table():
    return load_qm9pack_table()


@pytest.fixture(scope="module")
def qm9_molecules(qm9_table) -> list[tuple[AtomCloud, str]]:
    """The first 200 QM9 molecules of qm9pack (DFT geometries) with their SMILES."""
    records = list(read_qm9pack(None, limit=200, table=qm9_table))
    return [(AtomCloud(r.atomic_numbers, r.positions), r.smiles) for r in records]


def _embedded(smiles: str, seed: int = 0) -> AtomCloud:
    molecule = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    assert AllChem.EmbedMolecule(molecule, params) == 0
    AllChem.MMFFOptimizeMolecule(molecule)
    numbers = [atom.GetAtomicNum() for atom in molecule.GetAtoms()]
    return AtomCloud(numbers, molecule.GetConformer().GetPositions())


def _methane(num_hydrogens: int = 4) -> AtomCloud:
    directions = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1], [0, 0, -1]], dtype=float)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    hydrogens = 1.09 * directions[:num_hydrogens]
    return AtomCloud([6] + [1] * num_hydrogens, np.vstack([np.zeros((1, 3)), hydrogens]))


# ----------------------------------------------------------------------------- validity


def test_qm9_molecules_all_valid(qm9_molecules):
    checks = check_molecules([cloud for cloud, _ in qm9_molecules])
    summary = validity_uniqueness_novelty(checks)

    assert summary["num_samples"] == 200
    assert summary["validity"] == 1.0
    assert summary["connected"] == 1.0


def test_inferred_smiles_match_qm9_smiles(qm9_molecules):
    checks = check_molecules([cloud for cloud, _ in qm9_molecules])
    agree = [check.smiles == canonical_smiles(smiles) for check, (_, smiles) in zip(checks, qm9_molecules)]

    # QM9's SMILES describe the relaxed geometry; a handful may differ in bond orders.
    assert np.mean(agree) >= 0.97


def test_methane_valid():
    check = check_molecule(_methane(4))

    assert check.valid
    assert check.smiles == "C"


@pytest.mark.parametrize("num_hydrogens", [3, 5])
def test_broken_carbon_valence_invalid(num_hydrogens):
    check = check_molecule(_methane(num_hydrogens))

    assert not check.valid
    assert check.failure == "no bond orders"
    assert check.smiles is None


def test_missing_hydrogen_invalid(qm9_molecules):
    cloud = next(cloud for cloud, smiles in qm9_molecules if smiles == "CCO")
    last_hydrogen = np.flatnonzero(cloud.atomic_numbers == 1)[-1]
    keep = np.arange(cloud.num_atoms) != last_hydrogen

    assert check_molecule(cloud).valid
    assert not check_molecule(AtomCloud(cloud.atomic_numbers[keep], cloud.positions[keep])).valid


def test_overlapping_atoms_invalid():
    cloud = AtomCloud([6] * 8, np.random.default_rng(0).normal(scale=0.3, size=(8, 3)))
    check = check_molecule(cloud)

    assert not check.valid
    assert check.failure == "too many neighbours"


def test_qm9_zwitterion_valid(qm9_table):
    row = qm9_table[qm9_table["SMILES"] == "[NH3+]CCC([O-])=O"].iloc[0]
    record = next(read_qm9pack(None, table=qm9_table.loc[[row.name]].reset_index(drop=True)))
    check = check_molecule(AtomCloud(record.atomic_numbers, record.positions))

    assert check.valid
    assert check.smiles == "[NH3+]CCC(=O)[O-]"


def test_radical_invalid():
    # A bare C2 unit: bond orders exist only with radical electrons on both carbons.
    check = check_molecule(AtomCloud([6, 6], [[0.0, 0.0, 0.0], [1.25, 0.0, 0.0]]))

    assert check.failure == "radical"


@pytest.mark.parametrize("smiles", ["C[C-2]C", "C[N-2]", "[H-]"])
def test_implausible_charges_rejected(smiles):
    with pytest.raises(BondInferenceError, match="charge"):
        _check_plausible(Chem.AddHs(Chem.MolFromSmiles(smiles)))


def test_empty_molecule_invalid():
    check = check_molecule(AtomCloud(np.zeros(0, dtype=int), np.zeros((0, 3))))

    assert check.failure == "empty"


def test_fragments_largest_and_single():
    water = _embedded("O")
    ethanol = _embedded("CCO")
    both = AtomCloud(
        np.concatenate([ethanol.atomic_numbers, water.atomic_numbers]),
        np.vstack([ethanol.positions, water.positions + 10.0]),
    )

    largest = check_molecule(both, fragments="largest")
    single = check_molecule(both, fragments="single")

    assert largest.valid
    assert largest.smiles == "CCO"
    assert largest.num_fragments == 2
    assert not single.valid
    assert single.failure == "disconnected"
    with pytest.raises(ValueError, match="fragments"):
        check_molecule(both, fragments="all")


# ------------------------------------------------------------------- uniqueness, novelty


def test_duplicates_lower_uniqueness(qm9_molecules):
    clouds = [cloud for cloud, _ in qm9_molecules[:3]]
    rotation = Rotation.random(random_state=0).as_matrix()
    # A rotated and shifted copy is the same molecule.
    duplicates = [AtomCloud(c.atomic_numbers, c.positions @ rotation.T + 3.0) for c in clouds[:2]]

    summary = validity_uniqueness_novelty(check_molecules(clouds + duplicates))

    assert summary["validity"] == 1.0
    assert summary["num_unique"] == 3
    assert summary["uniqueness"] == pytest.approx(3 / 5)


def test_training_molecules_not_novel(qm9_molecules):
    clouds = [cloud for cloud, _ in qm9_molecules[:20]]
    training = [canonical_smiles(smiles) for _, smiles in qm9_molecules]

    seen = validity_uniqueness_novelty(check_molecules(clouds), training)
    half_seen = validity_uniqueness_novelty(check_molecules(clouds), training[:10])
    no_reference = validity_uniqueness_novelty(check_molecules(clouds))

    assert seen["novelty"] == 0.0
    assert half_seen["novelty"] == pytest.approx(0.5)
    assert no_reference["novelty"] is None


def test_summary_without_valid_samples():
    summary = validity_uniqueness_novelty(check_molecules([_methane(5), _methane(3)]))

    assert summary["validity"] == 0.0
    assert summary["uniqueness"] is None


# ---------------------------------------------------------------------------- stability


def test_bond_orders_from_distances():
    def order(atomic_numbers, distance):
        cloud = AtomCloud(atomic_numbers, [[0, 0, 0], [distance, 0, 0]])
        return int(distance_bond_orders(cloud)[0, 1])

    assert order([6, 6], 1.54) == 1
    assert order([6, 6], 1.34) == 2
    assert order([6, 6], 1.20) == 3
    assert order([6, 6], 1.70) == 0
    assert order([6, 8], 1.21) == 2
    assert order([1, 6], 1.09) == 1


def test_qm9_molecules_stable(qm9_molecules):
    # EDM reports 99.0% atom and 95.2% molecule stability on the QM9 data itself.
    result = stability([cloud for cloud, _ in qm9_molecules])

    assert result["atom_stability"] > 0.99
    assert result["molecule_stability"] > 0.95


def test_broken_valence_unstable():
    result = stability([_methane(4), _methane(3)])

    assert result["molecule_stability"] == 0.5
    assert result["atom_stability"] == pytest.approx((5 + 3) / 9)


def test_stability_rejects_unsupported_element():
    with pytest.raises(ValueError, match="stability is defined"):
        stability([AtomCloud([6, 16], [[0, 0, 0], [1.8, 0, 0]])])


def test_stability_metric_accumulates(qm9_molecules):
    metric = MoleculeStability()
    metric.update([cloud for cloud, _ in qm9_molecules[:10]])
    metric.update([_methane(3)])
    result = metric.compute()

    assert result["molecule_stability"].item() == pytest.approx(10 / 11)


# ------------------------------------------------------------------ RMSD and match rate


def test_rmsd_zero_after_rotation_and_translation(qm9_molecules):
    positions = torch.tensor(np.stack([c.positions[:5] for c, _ in qm9_molecules[20:24]]), dtype=torch.float32)
    rotations = torch.tensor(Rotation.random(4, random_state=1).as_matrix(), dtype=torch.float32)
    moved = positions @ rotations.transpose(1, 2) + torch.tensor([1.5, -2.0, 7.0])

    assert aligned_rmsd(moved, positions).max().item() < 1e-5


def test_rmsd_agrees_with_scipy_alignment():
    generator = np.random.default_rng(2)
    target = generator.normal(size=(12, 3))
    prediction = target @ Rotation.random(random_state=3).as_matrix().T + generator.normal(scale=0.1, size=(12, 3))

    centred_target = target - target.mean(axis=0)
    centred_prediction = prediction - prediction.mean(axis=0)
    rotation, _ = Rotation.align_vectors(centred_target, centred_prediction)
    expected = np.sqrt(((rotation.apply(centred_prediction) - centred_target) ** 2).sum(axis=1).mean())

    rmsd = aligned_rmsd(torch.tensor(prediction)[None], torch.tensor(target)[None])
    assert rmsd.item() == pytest.approx(expected, rel=1e-6)


def test_mirror_image_not_aligned():
    # Reflections are excluded: a chiral point set and its mirror image stay apart.
    target = torch.tensor([[0.0, 0, 0], [1.5, 0, 0], [0, 1.2, 0], [0, 0, 0.9]])[None]
    mirrored = target * torch.tensor([-1.0, 1.0, 1.0])

    assert aligned_rmsd(mirrored, target).item() > 0.1


def test_rmsd_ignores_padding():
    target = torch.randn(1, 6, 3, dtype=torch.float64)
    prediction = target.clone()
    prediction[0, 4:] += 100.0  # garbage on padded slots
    mask = torch.tensor([[True] * 4 + [False] * 2])

    assert aligned_rmsd(prediction, target, mask).item() < 1e-10


def test_match_requires_elements_and_rmsd():
    padding = 5
    target_elements = torch.tensor([[1, 1, 0, padding], [1, 1, 0, padding], [1, 1, 0, padding]])
    target_positions = torch.randn(3, 4, 3, generator=torch.Generator().manual_seed(0))
    mask = target_elements != padding
    predicted_elements = target_elements.clone()
    predicted_elements[1, 3] = 0  # an extra atom where the input has none
    predicted_positions = target_positions.clone()
    predicted_positions[2, 0] += 3.0  # one atom far off: RMSD about 1.4 angstrom

    matched, elements_equal, rmsd = reconstruction_match(
        predicted_elements, predicted_positions, target_elements, target_positions, mask, rmsd_threshold=0.5
    )

    assert matched.tolist() == [True, False, False]
    assert elements_equal.tolist() == [True, False, True]
    assert rmsd[0].item() < 1e-5
    assert rmsd[2].item() > 0.5


def test_reconstruction_metric_accumulates():
    metric = MoleculeReconstruction(rmsd_threshold=0.5)
    elements = torch.tensor([[0, 1, 2], [0, 1, 2]])
    positions = torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 3, dtype=torch.bool)
    metric.update(elements, positions, elements, positions, mask)
    metric.update(torch.tensor([[0, 0, 2]]), positions[:1], elements[:1], positions[:1], mask[:1])
    result = metric.compute()

    assert result["match_rate"].item() == pytest.approx(2 / 3)
    assert result["element_match_rate"].item() == pytest.approx(2 / 3)
    assert result["rmsd"].item() < 1e-5
    with pytest.raises(ValueError, match="rmsd_threshold"):
        MoleculeReconstruction(rmsd_threshold=0.0)


# ---------------------------------------------------------------------- conversions, FCD


def test_to_atom_clouds_drops_padding():
    indices = torch.tensor([[1, 0, 0, 0, 5, 5], [1, 3, 0, 0, 5, 5]])
    positions = torch.arange(36, dtype=torch.float32).reshape(2, 6, 3)

    predicted = to_atom_clouds(indices, positions, QM9_ATOMIC_NUMBERS)
    masked = to_atom_clouds(indices, positions, QM9_ATOMIC_NUMBERS, mask=torch.tensor([[True] * 3 + [False] * 3] * 2))

    assert predicted[0].atomic_numbers.tolist() == [6, 1, 1, 1]
    assert predicted[1].atomic_numbers.tolist() == [6, 8, 1, 1]
    assert np.array_equal(predicted[1].positions, positions[1, :4].numpy())
    assert masked[0].num_atoms == 3
    with pytest.raises(ValueError, match="element indices"):
        to_atom_clouds(torch.tensor([[6]]), torch.zeros(1, 1, 3), QM9_ATOMIC_NUMBERS)


def test_atom_cloud_rejects_bad_shapes():
    with pytest.raises(ValueError, match="positions must have shape"):
        AtomCloud([6, 1], np.zeros((3, 3)))
    with pytest.raises(ValueError, match="atomic numbers"):
        AtomCloud([0], np.zeros((1, 3)))


def test_fcd_identical_sets_near_zero(qm9_molecules):
    smiles = [smiles for _, smiles in qm9_molecules[:100]]
    other = [smiles for _, smiles in qm9_molecules[100:200]]

    same = frechet_chemnet_distance(smiles, smiles)
    different = frechet_chemnet_distance(["C" * (i % 9 + 1) for i in range(100)], other)

    assert abs(same) < 1e-3
    assert different > 1.0
    assert math.isnan(frechet_chemnet_distance(["C"], other))


def test_fcd_missing_weights_error(tmp_path):
    missing = tmp_path / "ChemNet.pt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        frechet_chemnet_distance(["CC", "CO"], ["CC", "CO"], chemnet_path=missing)
