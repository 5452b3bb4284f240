"""A trained UNITE model used as a frozen frame tokenizer for SCD and the causal DiT.

UNITE's Generative Encoder maps an image to K latent tokens of C channels, and its
decoder maps them back, so each video frame becomes K tokens. The tokens carry no
spatial layout of their own. `grid` arranges them as rows x columns only for the
rotary positions of the video models: a square when K is a square number, else one row.

This class lives with the Lightning code, not in `networks/`, because it loads a
Lightning checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path

from torch import Tensor

from unisep.networks.frame_tokenizer import FrameTokenizer


def token_grid(num_tokens: int) -> tuple[int, int]:
    """Arrange `num_tokens` as a square grid when possible, else as one row."""
    side = math.isqrt(num_tokens)
    return (side, side) if side * side == num_tokens else (1, num_tokens)


class UniteTokenizer(FrameTokenizer):
    """Frozen UNITE checkpoint (`unisep fit --config configs/unite*.yaml`) as a frame tokenizer.

    Args:
        checkpoint: path of the UNITE `.ckpt` file.
        use_ema: tokenize with the EMA weights, as UNITE's own evaluation does.
    """

    def __init__(self, checkpoint: str, use_ema: bool = True):
        super().__init__()
        self.init_args = dict(checkpoint=str(checkpoint), use_ema=use_ema)
        file = Path(checkpoint).expanduser()
        if not file.is_file():
            raise FileNotFoundError(
                f"UNITE checkpoint not found: {file}. Train one with `unisep fit --config configs/demo/unite_digits.yaml`"
                " (or a full UNITE config) and pass the .ckpt file from its run folder"
            )
        from unisep.lightning_modules.unite import UNITE

        self.unite = UNITE.load_from_checkpoint(str(file), map_location="cpu")
        self.unite.requires_grad_(False)
        self.unite.eval()
        self.use_ema = use_ema
        modality = self.unite.modality
        if getattr(modality, "name", None) != "image":
            raise ValueError(f"{file} is a UNITE model of modality {modality.name!r}; a frame tokenizer needs images")
        self.image_size = modality.image_size
        self.channels = modality.channels
        self.token_channels = self.unite.size.latent_channels
        self.grid = token_grid(self.unite.size.latent_tokens)

    def encode_images(self, images: Tensor) -> Tensor:
        return self.unite.encode({"image": images}, use_ema=self.use_ema)

    def decode_images(self, tokens: Tensor) -> Tensor:
        return self.unite.decode(tokens, use_ema=self.use_ema)
