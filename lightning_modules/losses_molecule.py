"""Reconstruction loss of the molecule modality: element cross-entropy plus coordinate MSE.

    loss = element_weight * CE(element_logits, elements)          over all atom slots
         + position_weight * MSE(centred prediction, centred input) over real atoms

The cross-entropy includes the "no atom" class on empty slots, so the decoder learns
the atom count. Coordinates are compared in network units (angstrom divided by the
modality's `position_scale`) after both sets are centred on the input's real atoms.

The coordinate term is not rotation invariant: it compares positions in the input's
frame, so the decoder must reproduce the orientation that the latent encodes. The
data module's random rotations (on by default for training) teach the model to encode
any orientation instead of memorising the frames of the data set.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from unisep.networks.molecule import MoleculeModality, centre_positions


class MoleculeReconstructionLoss(nn.Module):
    """Callable `(prediction, batch) -> (loss, terms)` for molecules.

    Args:
        padding_index: class index of "no atom" (the vocabulary size).
        position_scale: angstrom per network unit; the MSE is in network units.
        element_weight: weight of the element cross-entropy.
        position_weight: weight of the coordinate MSE.
    """

    def __init__(
        self,
        padding_index: int,
        position_scale: float = 1.0,
        element_weight: float = 1.0,
        position_weight: float = 1.0,
    ):
        super().__init__()
        if position_scale <= 0:
            raise ValueError(f"position_scale must be positive, got {position_scale}")
        self.padding_index = padding_index
        self.position_scale = position_scale
        self.element_weight = element_weight
        self.position_weight = position_weight

    @classmethod
    def from_modality(cls, modality: MoleculeModality, **weights: float) -> MoleculeReconstructionLoss:
        """Build the loss that matches `modality`'s vocabulary and position scale."""
        return cls(modality.padding_index, modality.position_scale, **weights)

    def forward(self, prediction: dict[str, Tensor], batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Compare decoder output with the input batch.

        Args:
            prediction: `element_logits` (batch, atoms, classes) and `positions`
                (batch, atoms, 3) in angstrom.
            batch: `elements` (batch, atoms) int64, `positions` (batch, atoms, 3) in
                angstrom and `mask` (batch, atoms) bool.

        Returns:
            The weighted loss and its terms: `element_ce`, `position_mse` (network
            units squared), `element_accuracy` (fraction of slots with the right class)
            and `position_rmse` (angstrom, before alignment).
        """
        logits, predicted = prediction["element_logits"], prediction["positions"]
        elements, target, mask = batch["elements"], batch["positions"], batch["mask"].bool()
        if logits.shape[:2] != elements.shape or predicted.shape != target.shape:
            raise ValueError(
                f"prediction shapes {tuple(logits.shape)} and {tuple(predicted.shape)} do not match "
                f"elements {tuple(elements.shape)} and positions {tuple(target.shape)}"
            )
        if logits.shape[-1] != self.padding_index + 1:
            raise ValueError(
                f"expected {self.padding_index + 1} element classes (vocabulary plus 'no atom'), got {logits.shape[-1]}"
            )

        element_ce = F.cross_entropy(logits.flatten(0, 1).float(), elements.flatten())

        # Centre both on the input's real atoms: the latent then needs no absolute offset.
        weights = mask.to(predicted.dtype).unsqueeze(-1)
        error = (centre_positions(predicted.float(), mask) - centre_positions(target.float(), mask)) * weights
        squared = error.pow(2).sum() / (3 * weights.sum()).clamp(min=1.0)
        position_mse = squared / self.position_scale**2

        loss = self.element_weight * element_ce + self.position_weight * position_mse
        terms = {
            "element_ce": element_ce.detach(),
            "position_mse": position_mse.detach(),
            "element_accuracy": (logits.argmax(dim=-1) == elements).float().mean().detach(),
            "position_rmse": (3 * squared).sqrt().detach(),
        }
        return loss, terms
