"""Named sizes of the UNITE networks.

A preset fixes the transformer shapes and the latent shape; the data shape (image
size, patch size, atom vocabulary) belongs to the modality. Register a new size by
adding an entry to `UNITE_PRESETS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from unisep.networks.modality import DecoderSize


@dataclass(frozen=True)
class UniteSize:
    """Shapes of a UNITE model.

    Attributes:
        width, depth, heads: Generative Encoder size.
        decoder: latent decoder size.
        latent_tokens: K, the number of latent register tokens.
        latent_channels: C, channels per latent token.
        mlp_ratio: GE MLP width as a multiple of `width` (SwiGLU uses 2/3 of it).
        num_class_tokens: in-context class tokens of the GE.
        class_token_start: first GE block that receives the class tokens.
    """

    width: int
    depth: int
    heads: int
    decoder: DecoderSize
    latent_tokens: int = 256
    latent_channels: int = 32
    mlp_ratio: float = 4.0
    num_class_tokens: int = 32
    class_token_start: int = 4
    extra: dict[str, Any] = field(default_factory=dict)


BASE_DECODER = DecoderSize(width=768, depth=12, heads=12)

UNITE_PRESETS: dict[str, UniteSize] = {
    # ImageNet 256 recipes: K = 256 tokens x 32 channels, patch 16.
    "unite_base": UniteSize(width=768, depth=12, heads=12, decoder=BASE_DECODER),
    "unite_large": UniteSize(width=1024, depth=24, heads=16, decoder=BASE_DECODER),
    # NOTE: the XL decoder size is not stated with the recipe; the Base decoder is used.
    "unite_xl": UniteSize(width=1152, depth=28, heads=16, decoder=BASE_DECODER),
    # About 2M parameters; trains on 16 x 16 digits on a laptop CPU in minutes.
    "unite_tiny": UniteSize(
        width=128,
        depth=4,
        heads=4,
        decoder=DecoderSize(width=128, depth=2, heads=4),
        latent_tokens=16,
        latent_channels=8,
        num_class_tokens=4,
        class_token_start=2,
    ),
    # About 8M parameters; a step up from unite_tiny for 32 x 32 images.
    "unite_small": UniteSize(
        width=256,
        depth=6,
        heads=4,
        decoder=DecoderSize(width=256, depth=4, heads=4),
        latent_tokens=64,
        latent_channels=16,
        num_class_tokens=8,
        class_token_start=2,
    ),
    # QM9 molecules, one latent token of 16 channels per atom slot (29 with hydrogens).
    # The GE has the DiT-S shape, 32.6M parameters (UNITE-S is given as about 33M);
    # with the decoder the network has 36.2M.
    # NOTE: the decoder size of UNITE-S is not stated; 2 layers of width 384 is a guess.
    "unite_small_qm9": UniteSize(
        width=384,
        depth=12,
        heads=6,
        decoder=DecoderSize(width=384, depth=2, heads=6),
        latent_tokens=29,
        latent_channels=16,
    ),
    # About 1.7M parameters; the CPU demo on QM9 (configs/demo/unite_qm9.yaml).
    "unite_tiny_qm9": UniteSize(
        width=128,
        depth=4,
        heads=4,
        decoder=DecoderSize(width=128, depth=2, heads=4),
        latent_tokens=29,
        latent_channels=8,
        num_class_tokens=4,
        class_token_start=2,
    ),
}


def unite_preset(name: str, **overrides: Any) -> UniteSize:
    """Look up a preset by name, optionally replacing some fields.

    `overrides` may contain any `UniteSize` field; `decoder` may be a dict of
    `DecoderSize` fields.
    """
    if name not in UNITE_PRESETS:
        raise ValueError(f"unknown UNITE preset {name!r}; available: {', '.join(sorted(UNITE_PRESETS))}")
    size = UNITE_PRESETS[name]
    if isinstance(overrides.get("decoder"), dict):
        overrides["decoder"] = replace(size.decoder, **overrides["decoder"])
    unknown = set(overrides) - set(UniteSize.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown preset override(s) {sorted(unknown)}; valid: {sorted(UniteSize.__dataclass_fields__)}")
    return replace(size, **overrides)
