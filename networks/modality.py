"""The modality interface: what a data type must provide to be modelled by UNITE.

A modality is a small specification object (not a module) that builds two networks
around the shared Generative Encoder, and reads the fields of its batches:

- a *front end* that embeds a batch into data tokens for the tokenize mode;
- a *decoder* that maps the K latent tokens back to data.

Its reconstruction loss lives with the training code (`lightning_modules/losses_*.py`)
and is chosen by the modality's `name`. A new modality registers its loss under that
name with `unisep.lightning_modules.reconstruction_losses.register_reconstruction_loss`.

Images (`ImageModality`) and molecules (`MoleculeModality`) implement it; a new
modality implements the abstract methods below and is passed to the UNITE module
through the config (`model.modality.class_path`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn


@dataclass(frozen=True)
class DecoderSize:
    """Transformer size of a latent decoder."""

    width: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0


class FrontEnd(nn.Module, ABC):
    """Embeds a batch into data tokens for the tokenize mode of the GE."""

    @abstractmethod
    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        """Return tokens (batch, N, width) and a mask (batch, N) bool of real tokens
        (or None when every token is real)."""


class Modality(ABC):
    """Specification of a data modality for UNITE."""

    #: short name used in logs and file names, e.g. "image"
    name: str = "modality"

    @abstractmethod
    def build_front_end(self, width: int) -> FrontEnd:
        """Build the module that embeds a batch into `width`-wide data tokens."""

    @abstractmethod
    def build_decoder(self, size: DecoderSize, latent_tokens: int, latent_channels: int) -> nn.Module:
        """Build the module mapping latents (batch, K, C) to this modality's data."""

    def batch_size(self, batch: dict[str, Any]) -> int:
        """Number of samples in a batch."""
        return int(batch["label"].shape[0])

    def labels(self, batch: dict[str, Any]) -> Tensor:
        """Class labels (batch,) int64 of a batch."""
        return batch["label"]

    def postprocess(self, output: Any) -> Any:
        """Map decoder output to the data convention (e.g. clamp images to [-1, 1])."""
        return output

    def tokens_per_sample(self) -> int:
        """Data tokens per sample, for throughput logs."""
        return 0

    def config(self) -> dict[str, Any]:
        """Return `{"class_path", "init_args"}` that rebuilds this modality."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(self.init_args)}

    #: constructor arguments, recorded by subclasses so checkpoints can rebuild them
    init_args: dict[str, Any] = {}


def modality_from_config(config: Modality | dict[str, Any]) -> Modality:
    """Rebuild a modality from `Modality.config()` output (as stored in checkpoints)."""
    if isinstance(config, Modality):
        return config
    import importlib

    module_name, _, class_name = config["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**config.get("init_args", {}))
