"""Atom and molecule stability from interatomic distances, as defined by EDM.

EDM (Hoogeboom et al., 2022, equivariant diffusion for 3-D molecules) assigns each
pair of atoms a bond order from its distance alone. A pair is singly bonded when its
distance is below the typical single-bond length plus 10 pm. The bond becomes double
below the double-bond length plus 5 pm, and triple below the triple-bond length plus
3 pm. An atom is *stable* when the sum of its bond orders equals an allowed valence of
its element, and a molecule is stable when all of its atoms are. No formal charges are
allowed, so this test is stricter than RDKit validity.

The lengths below are standard covalent bond lengths for the QM9 elements H, C, N, O
and F only. On all 130,831 QM9 molecules of qm9pack they give 99.36% atom and 95.28%
molecule stability, close to the 99.0% and 95.2% that EDM reports for the QM9 data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric

from unisep.metrics.molecules import AtomCloud

H, C, N, O, F = 1, 6, 7, 8, 9

#: Typical bond lengths in picometres, keyed by the sorted pair of atomic numbers.
SINGLE_BOND_PM: dict[tuple[int, int], float] = {
    (H, H): 74, (H, C): 109, (H, N): 101, (H, O): 96, (H, F): 92,
    (C, C): 154, (C, N): 147, (C, O): 143, (C, F): 135,
    (N, N): 145, (N, O): 140, (N, F): 136,
    (O, O): 148, (O, F): 142,
    (F, F): 142,
}  # fmt: skip
DOUBLE_BOND_PM: dict[tuple[int, int], float] = {
    (C, C): 134, (C, N): 129, (C, O): 120,
    (N, N): 125, (N, O): 121,
    (O, O): 121,
}  # fmt: skip
TRIPLE_BOND_PM: dict[tuple[int, int], float] = {
    (C, C): 120, (C, N): 116, (C, O): 113,
    (N, N): 110,
}  # fmt: skip

#: Tolerances added to the typical lengths, in picometres (EDM: 10, 5 and 3).
SINGLE_MARGIN_PM, DOUBLE_MARGIN_PM, TRIPLE_MARGIN_PM = 10.0, 5.0, 3.0

#: Allowed total bond order per element for a neutral atom.
ALLOWED_VALENCES: dict[int, tuple[int, ...]] = {H: (1,), C: (4,), N: (3,), O: (2,), F: (1,)}

SUPPORTED_ELEMENTS = tuple(sorted(ALLOWED_VALENCES))


def _length_matrix(table: dict[tuple[int, int], float]) -> np.ndarray:
    """Lay a pair table out as a symmetric (119, 119) array, NaN where no bond exists."""
    matrix = np.full((119, 119), np.nan)
    for (a, b), length in table.items():
        matrix[a, b] = matrix[b, a] = length
    return matrix


_SINGLE, _DOUBLE, _TRIPLE = (_length_matrix(t) for t in (SINGLE_BOND_PM, DOUBLE_BOND_PM, TRIPLE_BOND_PM))


def distance_bond_orders(cloud: AtomCloud) -> np.ndarray:
    """Return EDM's distance-based bond orders between all atom pairs.

    Args:
        cloud: atoms whose elements are among H, C, N, O and F.

    Returns:
        (num_atoms, num_atoms) int array of bond orders 0 to 3, zero on the diagonal.

    Raises:
        ValueError: if an element has no bond-length table.
    """
    unsupported = sorted(set(cloud.atomic_numbers.tolist()) - set(SUPPORTED_ELEMENTS))
    if unsupported:
        raise ValueError(
            f"stability is defined for atomic numbers {list(SUPPORTED_ELEMENTS)} (H, C, N, O, F); "
            f"got {unsupported}"
        )
    z = cloud.atomic_numbers
    distance_pm = 100.0 * np.linalg.norm(cloud.positions[:, None, :] - cloud.positions[None, :, :], axis=-1)

    # Comparisons with NaN are False, so pairs without a double or triple bond length
    # never reach that order.
    single = distance_pm < _SINGLE[z[:, None], z[None, :]] + SINGLE_MARGIN_PM
    double = single & (distance_pm < _DOUBLE[z[:, None], z[None, :]] + DOUBLE_MARGIN_PM)
    triple = double & (distance_pm < _TRIPLE[z[:, None], z[None, :]] + TRIPLE_MARGIN_PM)
    orders = single.astype(np.int64) + double + triple
    np.fill_diagonal(orders, 0)
    return orders


def atom_stability_flags(cloud: AtomCloud) -> np.ndarray:
    """Return (num_atoms,) bool: whether each atom's bond-order sum is an allowed valence."""
    valence = distance_bond_orders(cloud).sum(axis=1)
    return np.array(
        [int(v) in ALLOWED_VALENCES[int(element)] for element, v in zip(cloud.atomic_numbers, valence)],
        dtype=bool,
    )


def stability_counts(clouds: Sequence[AtomCloud]) -> tuple[int, int, int, int]:
    """Count (stable atoms, atoms, stable molecules, molecules) over `clouds`.

    An empty molecule counts as unstable and contributes no atoms.
    """
    stable_atoms = total_atoms = stable_molecules = 0
    for cloud in clouds:
        flags = atom_stability_flags(cloud)
        stable_atoms += int(flags.sum())
        total_atoms += flags.size
        stable_molecules += int(flags.size > 0 and bool(flags.all()))
    return stable_atoms, total_atoms, stable_molecules, len(clouds)


def stability(clouds: Sequence[AtomCloud]) -> dict[str, float | None]:
    """Return atom stability (fraction of stable atoms over all molecules) and molecule
    stability (fraction of molecules whose atoms are all stable); None when empty."""
    stable_atoms, total_atoms, stable_molecules, total_molecules = stability_counts(clouds)
    return {
        "atom_stability": stable_atoms / total_atoms if total_atoms else None,
        "molecule_stability": stable_molecules / total_molecules if total_molecules else None,
    }


class MoleculeStability(Metric):
    """Accumulates EDM atom and molecule stability over batches, summed across ranks.

    `update` takes a list of `AtomCloud`; `compute` returns a dict with
    `atom_stability` and `molecule_stability` (NaN when nothing was seen).
    """

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("stable_atoms", "total_atoms", "stable_molecules", "total_molecules"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, clouds: Sequence[AtomCloud]) -> None:
        stable_atoms, total_atoms, stable_molecules, total_molecules = stability_counts(clouds)
        self.stable_atoms += stable_atoms
        self.total_atoms += total_atoms
        self.stable_molecules += stable_molecules
        self.total_molecules += total_molecules

    def compute(self) -> dict[str, torch.Tensor]:
        atoms = self.total_atoms.clamp(min=1).double()
        molecules = self.total_molecules.clamp(min=1).double()
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=atoms.device)
        return {
            "atom_stability": torch.where(self.total_atoms > 0, self.stable_atoms / atoms, nan),
            "molecule_stability": torch.where(self.total_molecules > 0, self.stable_molecules / molecules, nan),
        }
