"""Reconstruction match rate and RMSD of molecules after optimal rigid alignment.

The decoder predicts one element and one position per atom slot, in the input's atom
order, so the atom correspondence is known and no permutation search is needed:

- *RMSD*: root-mean-square distance in angstrom over the input's real atoms after the
  optimal rotation and translation (the Kabsch algorithm), with reflections excluded.
- *Match*: every atom slot, padding included, has the input's element (so the atom
  count matches too), and the RMSD is below `rmsd_threshold`.

ADiT's evaluation code (Joshi et al., 2025) counts a match when pymatgen's
`MoleculeMatcher` finds an atom mapping at all, so its match bounds no distance. The
default threshold here, 0.5 angstrom, is stricter. It is about a third of a C-C bond
length, so every bond of a matched molecule stays recognisable.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

DEFAULT_RMSD_THRESHOLD = 0.5


def kabsch_rotation(source: Tensor, target: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Find the proper rotation and translation that best map `source` onto `target`.

    Args:
        source, target: (batch, atoms, 3) point sets in corresponding order.
        mask: optional (batch, atoms) bool of points that count; all of them when None.

    Returns:
        rotation (batch, 3, 3), source centroid (batch, 1, 3) and target centroid
        (batch, 1, 3), such that `(source - source_centroid) @ rotation.T + target_centroid`
        is the aligned source.
    """
    if source.shape != target.shape or source.ndim != 3 or source.shape[-1] != 3:
        raise ValueError(f"source and target must both be (batch, atoms, 3), got {tuple(source.shape)} and {tuple(target.shape)}")
    if mask is None:
        mask = torch.ones(source.shape[:2], dtype=torch.bool, device=source.device)
    # SVD in float64: float32 loses the rotation of near-degenerate (linear) molecules.
    weights = mask.to(torch.float64).unsqueeze(-1)
    source64, target64 = source.to(torch.float64), target.to(torch.float64)
    count = weights.sum(dim=1, keepdim=True).clamp(min=1.0)
    source_centroid = (source64 * weights).sum(dim=1, keepdim=True) / count
    target_centroid = (target64 * weights).sum(dim=1, keepdim=True) / count
    covariance = ((target64 - target_centroid) * weights).transpose(1, 2) @ ((source64 - source_centroid) * weights)

    u, _, vh = torch.linalg.svd(covariance)
    # Flip the last singular direction where needed so det(rotation) = +1.
    sign = torch.sign(torch.linalg.det(u @ vh))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    correction = torch.diag_embed(torch.stack([torch.ones_like(sign), torch.ones_like(sign), sign], dim=-1))
    rotation = u @ correction @ vh
    return rotation.to(source.dtype), source_centroid.to(source.dtype), target_centroid.to(source.dtype)


def aligned_rmsd(prediction: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Return the RMSD (batch,) in the input's units after Kabsch alignment.

    Args:
        prediction, target: (batch, atoms, 3) positions in corresponding order.
        mask: optional (batch, atoms) bool of the atoms that count (the target's real
            atoms); a molecule without atoms gets RMSD 0.
    """
    if mask is None:
        mask = torch.ones(prediction.shape[:2], dtype=torch.bool, device=prediction.device)
    rotation, prediction_centroid, target_centroid = kabsch_rotation(prediction, target, mask)
    aligned = (prediction - prediction_centroid) @ rotation.transpose(1, 2) + target_centroid
    squared = ((aligned - target) ** 2).sum(dim=-1) * mask
    return (squared.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).sqrt()


def reconstruction_match(
    predicted_elements: Tensor,
    predicted_positions: Tensor,
    target_elements: Tensor,
    target_positions: Tensor,
    target_mask: Tensor,
    rmsd_threshold: float = DEFAULT_RMSD_THRESHOLD,
) -> tuple[Tensor, Tensor, Tensor]:
    """Compare decoded molecules with their inputs slot by slot.

    Args:
        predicted_elements: (batch, max_atoms) int element indices, the padding index
            included (argmax of the decoder's logits).
        predicted_positions: (batch, max_atoms, 3) positions in angstrom.
        target_elements: (batch, max_atoms) int element indices of the input, padding
            index on empty slots.
        target_positions: (batch, max_atoms, 3) input positions in angstrom.
        target_mask: (batch, max_atoms) bool of the input's real atoms.
        rmsd_threshold: largest RMSD, in angstrom, that still counts as a match.

    Returns:
        matched (batch,) bool, elements_equal (batch,) bool and rmsd (batch,) in
        angstrom over the input's real atoms.
    """
    if predicted_elements.shape != target_elements.shape:
        raise ValueError(
            f"predicted_elements {tuple(predicted_elements.shape)} and target_elements "
            f"{tuple(target_elements.shape)} must have the same shape"
        )
    elements_equal = (predicted_elements == target_elements).all(dim=1)
    rmsd = aligned_rmsd(predicted_positions, target_positions, target_mask)
    return elements_equal & (rmsd < rmsd_threshold), elements_equal, rmsd


class MoleculeReconstruction(Metric):
    """Accumulates reconstruction match rate and RMSD over batches and ranks.

    `compute` returns `match_rate` (fraction of matched molecules), `rmsd` (mean RMSD
    over matched molecules, in angstrom, as ADiT reports it; NaN without matches),
    `rmsd_all` (mean over all molecules) and `element_match_rate` (fraction whose
    elements and atom count are exact, whatever the RMSD).

    Args:
        rmsd_threshold: match threshold in angstrom.
    """

    full_state_update = False

    def __init__(self, rmsd_threshold: float = DEFAULT_RMSD_THRESHOLD, **kwargs):
        super().__init__(**kwargs)
        if rmsd_threshold <= 0:
            raise ValueError(f"rmsd_threshold must be positive (angstrom), got {rmsd_threshold}")
        self.rmsd_threshold = rmsd_threshold
        self.add_state("matched", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("elements_equal", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("matched_rmsd_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("rmsd_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self,
        predicted_elements: Tensor,
        predicted_positions: Tensor,
        target_elements: Tensor,
        target_positions: Tensor,
        target_mask: Tensor,
    ) -> None:
        matched, elements_equal, rmsd = reconstruction_match(
            predicted_elements, predicted_positions, target_elements, target_positions, target_mask, self.rmsd_threshold
        )
        rmsd = rmsd.to(torch.float64)
        self.matched += matched.sum()
        self.elements_equal += elements_equal.sum()
        self.matched_rmsd_sum += (rmsd * matched).sum()
        self.rmsd_sum += rmsd.sum()
        self.total += matched.numel()

    def compute(self) -> dict[str, Tensor]:
        total = self.total.clamp(min=1.0)
        nan = torch.full_like(self.total, float("nan"))
        return {
            "match_rate": torch.where(self.total > 0, self.matched / total, nan),
            "rmsd": torch.where(self.matched > 0, self.matched_rmsd_sum / self.matched.clamp(min=1.0), nan),
            "rmsd_all": torch.where(self.total > 0, self.rmsd_sum / total, nan),
            "element_match_rate": torch.where(self.total > 0, self.elements_equal / total, nan),
        }
