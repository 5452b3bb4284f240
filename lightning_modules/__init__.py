"""LightningModules, one per recipe, with their losses, EMA and optimizers."""

from unisep.lightning_modules.unite import UNITE

__all__ = ["UNITE"]
