"""WebDataset DataModules and the shard writers that feed them."""

from unisep.datamodules.images import ImageDataModule

__all__ = ["ImageDataModule"]
