"""Writers for molecule samples: an SDF file of 3-D structures and a PNG depiction grid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rdkit import Chem
from rdkit.Chem import AllChem, Draw

from unisep.metrics.molecules import AtomCloud, MoleculeCheck, atom_cloud_to_rdkit, check_molecule


def _checks_for(clouds: Sequence[AtomCloud], checks: Sequence[MoleculeCheck] | None) -> Sequence[MoleculeCheck]:
    if checks is None:
        return [check_molecule(cloud) for cloud in clouds]
    if len(checks) != len(clouds):
        raise ValueError(f"got {len(clouds)} molecules but {len(checks)} checks; pass one check per molecule")
    return checks


def write_sdf(
    clouds: Sequence[AtomCloud],
    path: str | Path,
    checks: Sequence[MoleculeCheck] | None = None,
) -> Path:
    """Write every molecule, valid or not, to one SDF file with its 3-D coordinates.

    Valid molecules carry their inferred bonds and charges. Invalid ones are written as
    atoms without bonds, so the file still shows what the model produced. Each record
    has the properties `valid` (1 or 0), `smiles` (largest fragment, empty when
    invalid) and `failure` (empty when valid); its name is `sample_<index>`.

    Args:
        clouds: the molecules.
        path: output `.sdf` file; parent folders are created.
        checks: the result of `check_molecules(clouds)`, computed here when None.

    Returns:
        The path written.
    """
    checks = _checks_for(clouds, checks)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with Chem.SDWriter(str(path)) as writer:
        for index, (cloud, check) in enumerate(zip(clouds, checks)):
            molecule = Chem.Mol(check.molecule) if check.valid else atom_cloud_to_rdkit(cloud).GetMol()
            molecule.SetProp("_Name", f"sample_{index}")
            molecule.SetIntProp("valid", int(check.valid))
            molecule.SetProp("smiles", check.smiles or "")
            molecule.SetProp("failure", check.failure or "")
            # Unsanitised atom-only molecules lack ring information, which the writer reads.
            molecule.UpdatePropertyCache(strict=False)
            Chem.FastFindRings(molecule)
            writer.write(molecule)
    return path


def draw_molecule_grid(
    clouds: Sequence[AtomCloud],
    path: str | Path,
    checks: Sequence[MoleculeCheck] | None = None,
    *,
    molecules_per_row: int = 8,
    cell_size: int = 200,
    max_molecules: int = 64,
) -> Path:
    """Draw 2-D depictions of the first molecules into one PNG grid.

    Valid molecules are drawn as their heavy-atom graph. Invalid ones are drawn as
    their heavy atoms without bonds, labelled "invalid" with the failure reason.

    Args:
        clouds: the molecules.
        path: output `.png` file; parent folders are created.
        checks: the result of `check_molecules(clouds)`, computed here when None.
        molecules_per_row: grid columns.
        cell_size: side of one cell in pixels.
        max_molecules: draw at most this many molecules (the first ones).

    Returns:
        The path written.
    """
    count = min(len(clouds), max_molecules)
    if count == 0:
        raise ValueError("no molecules to draw; pass at least one AtomCloud")
    checks = _checks_for(clouds[:count], None if checks is None else checks[:count])
    drawings, legends = [], []
    for index, (cloud, check) in enumerate(zip(clouds[:count], checks)):
        if check.valid:
            molecule = Chem.RemoveHs(check.molecule)
            legend = check.smiles if len(check.smiles) <= 28 else check.smiles[:25] + "..."
        else:
            heavy = AtomCloud(cloud.atomic_numbers[cloud.atomic_numbers > 1], cloud.positions[cloud.atomic_numbers > 1])
            molecule = atom_cloud_to_rdkit(heavy).GetMol()
            molecule.UpdatePropertyCache(strict=False)
            legend = f"invalid: {check.failure}"
        molecule = Chem.Mol(molecule)
        molecule.RemoveAllConformers()
        AllChem.Compute2DCoords(molecule)
        drawings.append(molecule)
        legends.append(f"{index}: {legend}")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Draw.MolsToGridImage(
        drawings,
        molsPerRow=max(1, min(molecules_per_row, len(drawings))),
        subImgSize=(cell_size, cell_size),
        legends=legends,
    )
    image.save(str(path))
    return path
