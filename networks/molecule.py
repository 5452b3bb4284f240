"""Molecule modality: atoms as tokens, following the All-atom Diffusion Transformer (ADiT).

A molecule is `max_atoms` atom slots. Each slot contains an element index into the
vocabulary, or the padding index `len(elements)` ("no atom"), and a 3-D position in
angstrom. The front end embeds every atom as

    element embedding + linear projection of its centred position + slot position,

and hides empty slots from attention. The decoder maps the K latent tokens to
per-slot element logits (vocabulary plus "no atom") and positions, so the decoded
molecule's atom count is the number of slots not predicted as "no atom".

With K equal to `max_atoms` (the presets for QM9), latent token i decodes atom slot i,
one latent per atom as in ADiT. Otherwise `max_atoms` learned slot queries join the
latent tokens in the decoder and the outputs are read at the queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unisep.networks.layers import sincos_1d
from unisep.networks.modality import DecoderSize, FrontEnd, Modality
from unisep.networks.vit_block import ViTBlock

#: QM9's elements, the default vocabulary.
QM9_ELEMENTS = ("H", "C", "N", "O", "F")


def centre_positions(positions: Tensor, mask: Tensor) -> Tensor:
    """Subtract the centre of geometry of the real atoms; zero the empty slots.

    Args:
        positions: (batch, atoms, 3).
        mask: (batch, atoms) bool of real atoms.

    Returns:
        (batch, atoms, 3) positions whose real atoms have mean 0.
    """
    weights = mask.to(positions.dtype).unsqueeze(-1)
    centre = (positions * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True).clamp(min=1.0)
    return (positions - centre) * weights


class AtomFrontEnd(FrontEnd):
    """Embed atom slots into `width`-wide data tokens.

    Args:
        num_elements: vocabulary size; the embedding table has one more row for "no atom".
        max_atoms: atom slots per molecule.
        width: token width of the Generative Encoder.
        position_scale: angstrom per unit of the projected coordinates.
    """

    def __init__(self, num_elements: int, max_atoms: int, width: int, position_scale: float):
        super().__init__()
        self.max_atoms = max_atoms
        self.position_scale = position_scale
        self.element_embedding = nn.Embedding(num_elements + 1, width)
        self.position_projection = nn.Linear(3, width)
        self.register_buffer("slot_pos", sincos_1d(width, torch.arange(max_atoms)), persistent=False)
        nn.init.normal_(self.element_embedding.weight, std=0.02)
        nn.init.xavier_uniform_(self.position_projection.weight)
        nn.init.zeros_(self.position_projection.bias)

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Embed `batch["elements"]` (batch, max_atoms) and `batch["positions"]`
        (batch, max_atoms, 3) into tokens (batch, max_atoms, width) and return them
        with `batch["mask"]` (batch, max_atoms) bool."""
        elements, positions, mask = batch["elements"], batch["positions"], batch["mask"].bool()
        if elements.shape[1] != self.max_atoms or positions.shape[:2] != elements.shape:
            raise ValueError(
                f"expected elements (batch, {self.max_atoms}) and positions (batch, {self.max_atoms}, 3), "
                f"got {tuple(elements.shape)} and {tuple(positions.shape)}; set the modality's max_atoms "
                "to the data module's max_atoms"
            )
        # The data stream already centres; doing it again keeps other callers safe.
        coordinates = centre_positions(positions, mask) / self.position_scale
        tokens = self.element_embedding(elements) + self.position_projection(coordinates.to(self.position_projection.weight.dtype))
        return tokens + self.slot_pos.to(tokens.dtype), mask


class AtomDecoder(nn.Module):
    """Transformer decoder from K latent tokens to per-slot element logits and positions.

    Args:
        size: decoder transformer size.
        latent_tokens: K.
        latent_channels: C.
        num_elements: vocabulary size (the logits have one more class, "no atom").
        max_atoms: atom slots per molecule.
        position_scale: angstrom per unit of the position head's output.
    """

    def __init__(
        self,
        size: DecoderSize,
        latent_tokens: int,
        latent_channels: int,
        num_elements: int,
        max_atoms: int,
        position_scale: float,
    ):
        super().__init__()
        self.max_atoms = max_atoms
        self.position_scale = position_scale
        self.latent_proj = nn.Linear(latent_channels, size.width)
        self.register_buffer("latent_pos", sincos_1d(size.width, torch.arange(latent_tokens)), persistent=False)
        self.slot_queries = None
        if latent_tokens != max_atoms:
            self.slot_queries = nn.Parameter(sincos_1d(size.width, torch.arange(max_atoms)))
        self.blocks = nn.ModuleList([ViTBlock(size.width, size.heads, size.mlp_ratio) for _ in range(size.depth)])
        self.norm = nn.LayerNorm(size.width, eps=1e-6)
        self.element_head = nn.Linear(size.width, num_elements + 1)
        self.position_head = nn.Linear(size.width, 3)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, latents: Tensor) -> dict[str, Tensor]:
        """Decode latents (batch, K, C).

        Returns:
            `element_logits` (batch, max_atoms, num_elements + 1) and `positions`
            (batch, max_atoms, 3) in angstrom.
        """
        x = self.latent_proj(latents) + self.latent_pos.to(latents.dtype)
        if self.slot_queries is not None:
            queries = self.slot_queries.to(x.dtype).expand(x.shape[0], -1, -1)
            x = torch.cat([x, queries], dim=1)
        for block in self.blocks:
            x = block(x)
        slots = self.norm(x[:, -self.max_atoms :])
        return {
            "element_logits": self.element_head(slots),
            "positions": self.position_head(slots) * self.position_scale,
        }


class MoleculeModality(Modality):
    """3-D molecules as padded atom sets, batches from `MoleculeDataModule`.

    Args:
        elements: element symbols of the vocabulary, in index order.
        max_atoms: atom slots per molecule, hydrogens included (29 for QM9).
        position_scale: angstrom per network unit. Coordinates are divided by it before
            the front end's projection, and the decoder's positions are multiplied by it.
    """

    name = "molecule"

    def __init__(self, elements: Sequence[str] = QM9_ELEMENTS, max_atoms: int = 29, position_scale: float = 1.0):
        if isinstance(elements, str) or not elements:
            raise ValueError(f"elements must be a non-empty list of element symbols, got {elements!r}")
        if len(set(elements)) != len(elements):
            raise ValueError(f"elements must be distinct, got {list(elements)}")
        if max_atoms < 1:
            raise ValueError(f"max_atoms must be >= 1, got {max_atoms}")
        if position_scale <= 0:
            raise ValueError(f"position_scale must be positive (angstrom per unit), got {position_scale}")
        self.elements = tuple(elements)
        self.max_atoms = max_atoms
        self.position_scale = float(position_scale)
        self.init_args = dict(elements=list(self.elements), max_atoms=max_atoms, position_scale=self.position_scale)

    @property
    def num_elements(self) -> int:
        """Number of elements in the vocabulary."""
        return len(self.elements)

    @property
    def padding_index(self) -> int:
        """Class index of "no atom"."""
        return len(self.elements)

    def build_front_end(self, width: int) -> AtomFrontEnd:
        return AtomFrontEnd(self.num_elements, self.max_atoms, width, self.position_scale)

    def build_decoder(self, size: DecoderSize, latent_tokens: int, latent_channels: int) -> AtomDecoder:
        return AtomDecoder(size, latent_tokens, latent_channels, self.num_elements, self.max_atoms, self.position_scale)

    def postprocess(self, output: dict[str, Tensor]) -> dict[str, Tensor]:
        """Add the decoded molecule to the decoder output.

        Returns:
            The decoder's `element_logits` and `positions` plus `elements`
            (batch, max_atoms) int64 argmax classes, `mask` (batch, max_atoms) bool of
            predicted atoms, and `probabilities` (batch, max_atoms, num_elements + 1).
        """
        elements = output["element_logits"].argmax(dim=-1)
        return {
            **output,
            "elements": elements,
            "mask": elements != self.padding_index,
            "probabilities": F.softmax(output["element_logits"].float(), dim=-1),
        }

    def tokens_per_sample(self) -> int:
        return self.max_atoms
