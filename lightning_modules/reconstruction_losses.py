"""The default reconstruction loss of each modality, chosen by the modality's name."""

from __future__ import annotations

from torch import nn

from unisep.networks.modality import Modality


def default_reconstruction_loss(
    modality: Modality,
    lpips_weight: float = 0.0,
    lpips_vgg_path: str | None = None,
    lpips_head_path: str | None = None,
) -> nn.Module:
    """Build the reconstruction loss for `modality` (images: L1 + LPIPS)."""
    if modality.name == "image":
        from unisep.lightning_modules.losses_image import ImageReconstructionLoss

        return ImageReconstructionLoss(lpips_weight, lpips_vgg_path, lpips_head_path)
    if modality.name == "molecule":
        from unisep.lightning_modules.losses_molecule import MoleculeReconstructionLoss

        return MoleculeReconstructionLoss.from_modality(modality)
    raise ValueError(
        f"no default reconstruction loss for modality {modality.name!r}; "
        "add one to unisep/lightning_modules/reconstruction_losses.py"
    )
