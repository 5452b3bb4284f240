"""The default reconstruction loss of each modality, chosen by the modality's name.

Images and molecules have built-in losses. A new modality registers its loss under its
`name` with `register_reconstruction_loss`, typically at import time of the module that
defines the modality, so that `UNITE(modality=...)` and configs that name the modality
by `class_path` find it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from unisep.networks.modality import Modality

#: Builds the reconstruction loss of a modality, a callable `(prediction, batch) -> (loss, terms)`.
ReconstructionLossFactory = Callable[[Modality], nn.Module]

BUILT_IN_MODALITIES = ("image", "molecule")

_REGISTERED: dict[str, ReconstructionLossFactory] = {}


def register_reconstruction_loss(name: str, factory: ReconstructionLossFactory) -> None:
    """Use `factory(modality)` as the reconstruction loss of modalities named `name`.

    Registering a name again replaces the earlier factory, so re-importing a module is safe.

    Raises:
        ValueError: `name` is a built-in modality ("image", "molecule") or empty.
    """
    if not name or name in BUILT_IN_MODALITIES:
        raise ValueError(f"cannot register a reconstruction loss for {name!r}; built-in names are {BUILT_IN_MODALITIES}")
    _REGISTERED[name] = factory


def default_reconstruction_loss(
    modality: Modality,
    lpips_weight: float = 0.0,
    lpips_vgg_path: str | None = None,
    lpips_head_path: str | None = None,
) -> nn.Module:
    """Build the reconstruction loss for `modality` (images: L1 + LPIPS).

    The LPIPS arguments apply to images only.

    Raises:
        ValueError: no loss is built in or registered for the modality's name.
    """
    if modality.name == "image":
        from unisep.lightning_modules.losses_image import ImageReconstructionLoss

        return ImageReconstructionLoss(lpips_weight, lpips_vgg_path, lpips_head_path)
    if modality.name == "molecule":
        from unisep.lightning_modules.losses_molecule import MoleculeReconstructionLoss

        return MoleculeReconstructionLoss.from_modality(modality)
    if modality.name in _REGISTERED:
        return _REGISTERED[modality.name](modality)
    raise ValueError(
        f"no reconstruction loss for modality {modality.name!r}; register one with "
        "unisep.lightning_modules.reconstruction_losses.register_reconstruction_loss"
        f"({modality.name!r}, factory) where the modality is defined"
    )
