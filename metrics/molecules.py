"""Chemical validity, uniqueness and novelty of 3-D molecules given as atoms only.

A generated molecule is a set of atoms (atomic numbers and Cartesian positions in
angstrom) without bonds. Bonds are inferred from the geometry with RDKit's
`rdDetermineBonds`, a port of the xyz2mol method. It finds the connectivity from scaled
covalent radii, then bond orders and formal charges that sum to a total charge of 0.
A molecule is *valid* when that succeeds, RDKit sanitisation accepts the result, and
the bond orders need no chemically implausible help: no atom has radical electrons, no
formal charge exceeds 1 in magnitude, and every hydrogen is neutral with one bond.
xyz2mol can otherwise balance a broken valence with charges such as [C-3] or a bridging
[H-], which sanitisation accepts. QM9 itself holds a few hundred zwitterions with
charges of +1 and -1, which stay valid.

Connectivity uses RDKit's van der Waals criterion with covalent radii scaled by 1.15.
On all 130,831 QM9 molecules shipped by qm9pack this rates 99.99% of the DFT
geometries valid, against 94.8% for RDKit's default connect-the-dots criterion, which
adds spurious bonds across the strained cages common in QM9 (measured with RDKit
2026.9).

Conventions (documented here once; the callback and the tests rely on them):

- Fragments: by default a molecule made of several disconnected fragments is still
  valid and is represented by its largest fragment, as in EDM (Hoogeboom et al.,
  2022) and ADiT's evaluation code. `fragments="single"` makes
  such a molecule invalid instead, and every report also gives `connected`, the
  fraction of samples that form a single fragment.
- SMILES: canonical RDKit SMILES of the heavy-atom graph without stereochemistry
  (`isomericSmiles=False`). Stereo perceived from noisy generated coordinates is not
  reliable, and EDM's bond-table molecules carry none either.
- Uniqueness = distinct SMILES / valid samples. Novelty = distinct SMILES absent from
  the training set / distinct SMILES (EDM's definition: novel among unique).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from rdkit import Chem, RDLogger
from rdkit.Chem import rdDetermineBonds

# RDKit prints every rejected valence to stderr; failures are counted instead.
RDLogger.DisableLog("rdApp.*")

FragmentRule = Literal["largest", "single"]

#: Bond-order search budget of xyz2mol. Real QM9 molecules need a few iterations;
#: a malformed generated cloud can otherwise make the search exponential.
DEFAULT_MAX_ITERATIONS = 1000

#: Largest number of neighbours any atom may have before bond orders are attempted.
#: Six covers hypervalent S and P; H, C, N, O and F never exceed four.
MAX_NEIGHBOURS = 6


@dataclass(frozen=True)
class AtomCloud:
    """A molecule as atoms only: atomic numbers and 3-D positions, no bonds.

    Attributes:
        atomic_numbers: (num_atoms,) integer atomic numbers, e.g. 6 for carbon.
        positions: (num_atoms, 3) Cartesian coordinates in angstrom.
    """

    atomic_numbers: np.ndarray
    positions: np.ndarray

    def __post_init__(self) -> None:
        atomic_numbers = np.asarray(self.atomic_numbers, dtype=np.int64).reshape(-1)
        positions = np.asarray(self.positions, dtype=np.float64)
        if positions.shape != (atomic_numbers.shape[0], 3):
            raise ValueError(
                f"positions must have shape ({atomic_numbers.shape[0]}, 3) to match "
                f"{atomic_numbers.shape[0]} atomic numbers, got {positions.shape}"
            )
        if atomic_numbers.size and (atomic_numbers.min() < 1 or atomic_numbers.max() > 118):
            raise ValueError(f"atomic numbers must lie in [1, 118], got {atomic_numbers.tolist()}")
        # The dataclass is frozen; normalise the dtypes once here.
        object.__setattr__(self, "atomic_numbers", atomic_numbers)
        object.__setattr__(self, "positions", positions)

    @property
    def num_atoms(self) -> int:
        """Number of atoms."""
        return int(self.atomic_numbers.shape[0])


def to_atom_clouds(
    element_indices: torch.Tensor | np.ndarray,
    positions: torch.Tensor | np.ndarray,
    atomic_numbers: Sequence[int],
    mask: torch.Tensor | np.ndarray | None = None,
) -> list[AtomCloud]:
    """Convert padded model outputs or batches into one `AtomCloud` per molecule.

    Args:
        element_indices: (batch, max_atoms) integer indices into the vocabulary; the
            index `len(atomic_numbers)` is the padding ("no atom") class.
        positions: (batch, max_atoms, 3) positions in angstrom.
        atomic_numbers: the vocabulary as atomic numbers, e.g. (1, 6, 7, 8, 9).
        mask: optional (batch, max_atoms) bool of real atoms. When None, an atom is
            real where its index is not the padding class (use this for generated
            samples, whose atom count is predicted).

    Returns:
        A list of `batch` atom clouds.
    """
    indices = _to_numpy(element_indices).astype(np.int64)
    coords = _to_numpy(positions).astype(np.float64)
    if indices.ndim != 2 or coords.shape != indices.shape + (3,):
        raise ValueError(
            f"expected element_indices (batch, max_atoms) and positions (batch, max_atoms, 3), "
            f"got {indices.shape} and {coords.shape}"
        )
    vocabulary = np.asarray(list(atomic_numbers), dtype=np.int64)
    padding_index = len(vocabulary)
    if indices.size and (indices.min() < 0 or indices.max() > padding_index):
        raise ValueError(
            f"element indices must lie in [0, {padding_index}] (vocabulary of {padding_index} "
            f"elements plus padding), got range [{indices.min()}, {indices.max()}]"
        )
    real = indices != padding_index if mask is None else _to_numpy(mask).astype(bool) & (indices != padding_index)
    return [AtomCloud(vocabulary[indices[b][real[b]]], coords[b][real[b]]) for b in range(indices.shape[0])]


def _to_numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().to("cpu", torch.float64 if array.is_floating_point() else array.dtype).numpy()
    return np.asarray(array)


def atom_cloud_to_rdkit(cloud: AtomCloud) -> Chem.RWMol:
    """Build an RDKit molecule with the cloud's atoms and one 3-D conformer, no bonds.

    Every atom is marked as carrying no implicit hydrogens, so a missing hydrogen shows
    up as a broken valence instead of being silently added back.
    """
    molecule = Chem.RWMol()
    for atomic_number in cloud.atomic_numbers:
        atom = Chem.Atom(int(atomic_number))
        atom.SetNoImplicit(True)
        molecule.AddAtom(atom)
    conformer = Chem.Conformer(cloud.num_atoms)
    for index, position in enumerate(cloud.positions):
        conformer.SetAtomPosition(index, position.tolist())
    conformer.Set3D(True)
    molecule.AddConformer(conformer, assignId=True)
    return molecule


class BondInferenceError(ValueError):
    """Bonds could not be inferred from a 3-D structure; `reason` is a short label."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def infer_bonds(
    cloud: AtomCloud,
    *,
    charge: int = 0,
    covalent_factor: float = 1.15,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
) -> Chem.Mol:
    """Infer bonds, bond orders and formal charges from 3-D positions, then sanitise.

    Args:
        cloud: the atoms.
        charge: total charge the bond-order assignment must reach.
        covalent_factor: atoms closer than this factor times the sum of their covalent
            radii are connected.
        max_iterations: budget of the bond-order search (0 = unlimited).

    Returns:
        A sanitised molecule with explicit hydrogens and the input conformer.

    Raises:
        BondInferenceError: with `reason` one of "empty", "too many neighbours",
            "no bond orders", "sanitisation failed", "radical" or "implausible charge".
    """
    if cloud.num_atoms == 0:
        raise BondInferenceError("empty", "the molecule has no atoms")
    molecule = atom_cloud_to_rdkit(cloud)
    rdDetermineBonds.DetermineConnectivity(molecule, charge=charge, covFactor=covalent_factor, useVdw=True)

    # Atoms piled on top of each other get many neighbours; the bond-order search would
    # then only burn time before failing.
    degrees = [atom.GetDegree() for atom in molecule.GetAtoms()]
    if max(degrees) > MAX_NEIGHBOURS:
        raise BondInferenceError("too many neighbours", f"an atom has {max(degrees)} neighbours")

    try:
        rdDetermineBonds.DetermineBondOrders(
            molecule,
            charge=charge,
            allowChargedFragments=True,
            embedChiral=False,
            maxIterations=max_iterations,
        )
    except (ValueError, RuntimeError) as error:
        raise BondInferenceError("no bond orders", str(error)) from error
    try:
        Chem.SanitizeMol(molecule)
    except (ValueError, RuntimeError) as error:
        raise BondInferenceError("sanitisation failed", str(error)) from error
    _check_plausible(molecule)
    return molecule.GetMol()


def _check_plausible(molecule: Chem.Mol) -> None:
    """Reject radicals, charges beyond +-1 and charged or multiply bonded hydrogens."""
    for atom in molecule.GetAtoms():
        if atom.GetNumRadicalElectrons():
            raise BondInferenceError("radical", f"atom {atom.GetIdx()} ({atom.GetSymbol()}) has radical electrons")
        charge = atom.GetFormalCharge()
        if abs(charge) > 1 or (atom.GetAtomicNum() == 1 and (charge != 0 or atom.GetDegree() != 1)):
            raise BondInferenceError(
                "implausible charge",
                f"atom {atom.GetIdx()} ({atom.GetSymbol()}) has charge {charge} and {atom.GetDegree()} bonds",
            )


def canonical_smiles(molecule: Chem.Mol | str) -> str | None:
    """Return the canonical heavy-atom SMILES without stereo, or None if it fails.

    Args:
        molecule: an RDKit molecule or a SMILES string.
    """
    if isinstance(molecule, str):
        molecule = Chem.MolFromSmiles(molecule)
        if molecule is None:
            return None
    try:
        return Chem.MolToSmiles(Chem.RemoveHs(molecule), isomericSmiles=False)
    except (ValueError, RuntimeError):
        return None


@dataclass(frozen=True)
class MoleculeCheck:
    """Outcome of checking one 3-D molecule.

    Attributes:
        molecule: the sanitised RDKit molecule (all fragments, explicit hydrogens), or
            None when bond inference failed.
        smiles: canonical SMILES of the largest fragment, or None when invalid.
        num_fragments: number of disconnected fragments (0 when inference failed).
        failure: reason for invalidity, or None when valid.
    """

    molecule: Chem.Mol | None
    smiles: str | None
    num_fragments: int
    failure: str | None

    @property
    def valid(self) -> bool:
        """Whether the molecule counts as valid."""
        return self.failure is None


def check_molecule(cloud: AtomCloud, *, fragments: FragmentRule = "largest", **bond_options) -> MoleculeCheck:
    """Infer bonds for one molecule and decide its validity.

    Args:
        cloud: the atoms.
        fragments: "largest" (EDM convention: keep the largest fragment) or "single"
            (a molecule in several fragments is invalid).
        **bond_options: passed to `infer_bonds`.
    """
    if fragments not in ("largest", "single"):
        raise ValueError(f"fragments must be 'largest' or 'single', got {fragments!r}")
    try:
        molecule = infer_bonds(cloud, **bond_options)
    except BondInferenceError as error:
        return MoleculeCheck(None, None, 0, error.reason)

    parts = Chem.GetMolFrags(molecule, asMols=True, sanitizeFrags=False)
    if fragments == "single" and len(parts) > 1:
        return MoleculeCheck(molecule, None, len(parts), "disconnected")
    largest = max(parts, key=lambda part: part.GetNumAtoms())
    smiles = canonical_smiles(largest)
    if smiles is None:
        return MoleculeCheck(molecule, None, len(parts), "no SMILES")
    return MoleculeCheck(molecule, smiles, len(parts), None)


def check_molecules(clouds: Iterable[AtomCloud], **options) -> list[MoleculeCheck]:
    """Apply `check_molecule` to every cloud, with the same options."""
    return [check_molecule(cloud, **options) for cloud in clouds]


def validity_uniqueness_novelty(
    checks: Sequence[MoleculeCheck],
    training_smiles: Iterable[str] | None = None,
) -> dict[str, float | int | None]:
    """Summarise checked molecules into validity, uniqueness and novelty.

    Args:
        checks: the output of `check_molecules`.
        training_smiles: canonical SMILES (as `canonical_smiles` writes them) of the
            training set; novelty is None when this is None.

    Returns:
        `validity`, `uniqueness`, `novelty` and `connected` as fractions in [0, 1]
        (None when undefined, e.g. uniqueness with no valid sample), plus the counts
        `num_samples`, `num_valid`, `num_unique`, `num_novel`.
    """
    num_samples = len(checks)
    valid_smiles = [check.smiles for check in checks if check.valid]
    unique = set(valid_smiles)
    novel = None if training_smiles is None else unique - set(training_smiles)
    return {
        "validity": _ratio(len(valid_smiles), num_samples),
        "uniqueness": _ratio(len(unique), len(valid_smiles)),
        "novelty": None if novel is None else _ratio(len(novel), len(unique)),
        "connected": _ratio(sum(check.num_fragments == 1 for check in checks), num_samples),
        "num_samples": num_samples,
        "num_valid": len(valid_smiles),
        "num_unique": len(unique),
        "num_novel": None if novel is None else len(novel),
    }


def failure_counts(checks: Sequence[MoleculeCheck]) -> dict[str, int]:
    """Count invalid molecules by failure reason."""
    counts: dict[str, int] = {}
    for check in checks:
        if check.failure is not None:
            counts[check.failure] = counts.get(check.failure, 0) + 1
    return counts


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def finite_or_none(value: float | None) -> float | None:
    """Map NaN and infinity to None so a metric survives strict JSON."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)
