"""All generation metrics of a set of 3-D molecules in one call."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from unisep.metrics.fcd import frechet_chemnet_distance
from unisep.metrics.molecule_stability import SUPPORTED_ELEMENTS, stability
from unisep.metrics.molecules import (
    AtomCloud,
    FragmentRule,
    MoleculeCheck,
    canonical_smiles,
    check_molecules,
    failure_counts,
    finite_or_none,
    validity_uniqueness_novelty,
)

logger = logging.getLogger(__name__)


def canonical_smiles_set(smiles: Iterable[str]) -> set[str]:
    """Canonicalise SMILES as the metrics do (heavy atoms, no stereo), dropping failures."""
    canonical = (canonical_smiles(s) for s in smiles if s)
    return {s for s in canonical if s is not None}


def generation_report(
    clouds: Sequence[AtomCloud],
    *,
    training_smiles: Iterable[str] | None = None,
    fcd_reference_smiles: Sequence[str] | None = None,
    fragments: FragmentRule = "largest",
    chemnet_path: str | None = None,
) -> tuple[dict[str, Any], list[MoleculeCheck]]:
    """Score generated molecules.

    Args:
        clouds: the generated molecules.
        training_smiles: SMILES of the training set, in any valid form; novelty is
            None without them.
        fcd_reference_smiles: reference SMILES for FCD (e.g. the validation split);
            FCD is None without them or with fewer than two valid samples.
        fragments: fragment rule of validity, "largest" or "single".
        chemnet_path: ChemNet weight file for FCD; fcd-torch's own when None.

    Returns:
        The metrics (`validity`, `uniqueness`, `novelty`, `connected`,
        `atom_stability`, `molecule_stability`, `fcd`, counts and `invalid_reasons`)
        and the per-molecule checks.
    """
    checks = check_molecules(clouds, fragments=fragments)
    training = None if training_smiles is None else canonical_smiles_set(training_smiles)
    report: dict[str, Any] = validity_uniqueness_novelty(checks, training)
    report["invalid_reasons"] = failure_counts(checks)

    supported = all(set(cloud.atomic_numbers.tolist()) <= set(SUPPORTED_ELEMENTS) for cloud in clouds)
    if supported:
        report.update(stability(clouds))
    else:
        logger.warning("Stability skipped: it is defined for H, C, N, O and F only")
        report.update(atom_stability=None, molecule_stability=None)

    valid_smiles = [check.smiles for check in checks if check.valid]
    report["fcd"] = None
    if fcd_reference_smiles is not None and len(valid_smiles) >= 2:
        report["fcd"] = finite_or_none(
            frechet_chemnet_distance(valid_smiles, list(fcd_reference_smiles), chemnet_path=chemnet_path)
        )
        report["fcd_num_reference"] = len(fcd_reference_smiles)
    return report, checks
