"""Image modality: patch embedding front end and the ViT pixel decoder."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from unisep.networks.layers import sincos_2d
from unisep.networks.modality import DecoderSize, FrontEnd, Modality
from unisep.networks.vit_block import ViTBlock


class PatchFrontEnd(FrontEnd):
    """MAE-style patch embedding: a strided convolution plus fixed 2-D sin-cos positions."""

    def __init__(self, image_size: int, patch_size: int, channels: int, width: int):
        super().__init__()
        self.grid = image_size // patch_size
        self.proj = nn.Conv2d(channels, width, kernel_size=patch_size, stride=patch_size)
        self.register_buffer("pos", sincos_2d(width, self.grid), persistent=False)
        nn.init.xavier_uniform_(self.proj.weight.view(width, -1))
        nn.init.zeros_(self.proj.bias)

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, None]:
        """Embed `batch["image"]` (batch, C, H, W) into (batch, grid * grid, width)."""
        tokens = rearrange(self.proj(batch["image"]), "b w gh gw -> b (gh gw) w")
        return tokens + self.pos.to(tokens.dtype), None


class PixelDecoder(nn.Module):
    """ViT decoder in the MAE-decoder style, from K latent tokens to an image.

    Each latent token becomes one patch position: latents (batch, K, C) are projected to
    the decoder width, given fixed 2-D sin-cos positions and a learned CLS token, run
    through the transformer, and each patch token is mapped to `patch * patch * channels`
    pixels. When K differs from the patch count the latent sequence is linearly
    interpolated to the patch count first.
    """

    def __init__(self, size: DecoderSize, latent_channels: int, image_size: int, patch_size: int, channels: int):
        super().__init__()
        self.patch_size = patch_size
        self.channels = channels
        self.grid = image_size // patch_size
        self.latent_proj = nn.Linear(latent_channels, size.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, size.width))
        self.register_buffer("pos", sincos_2d(size.width, self.grid), persistent=False)
        self.blocks = nn.ModuleList([ViTBlock(size.width, size.heads, size.mlp_ratio) for _ in range(size.depth)])
        self.norm = nn.LayerNorm(size.width, eps=1e-6)
        self.head = nn.Linear(size.width, patch_size * patch_size * channels)
        nn.init.normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, latents: Tensor) -> Tensor:
        """Decode latents (batch, K, C) into images (batch, channels, H, W), unbounded."""
        num_patches = self.grid * self.grid
        if latents.shape[1] != num_patches:
            latents = F.interpolate(latents.transpose(1, 2), size=num_patches, mode="linear").transpose(1, 2)
        x = self.latent_proj(latents) + self.pos.to(latents.dtype)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        for block in self.blocks:
            x = block(x)
        patches = self.head(self.norm(x)[:, 1:])
        return rearrange(
            patches,
            "b (gh gw) (p q c) -> b c (gh p) (gw q)",
            gh=self.grid,
            p=self.patch_size,
            q=self.patch_size,
        )


class ImageModality(Modality):
    """Images in [-1, 1], shape (batch, channels, image_size, image_size).

    Args:
        image_size: side length in pixels; must be divisible by `patch_size`.
        patch_size: side length of a square patch.
        channels: 3 for RGB, 1 for grayscale.
    """

    name = "image"

    def __init__(
        self,
        image_size: int = 256,
        patch_size: int = 16,
        channels: int = 3,
    ):
        if image_size % patch_size:
            raise ValueError(
                f"image_size {image_size} is not divisible by patch_size {patch_size}; "
                "choose a patch size that tiles the image"
            )
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.channels = channels
        self.init_args = dict(image_size=image_size, patch_size=patch_size, channels=channels)

    @property
    def num_patches(self) -> int:
        """Number of patch tokens per image."""
        return (self.image_size // self.patch_size) ** 2

    def build_front_end(self, width: int) -> PatchFrontEnd:
        return PatchFrontEnd(self.image_size, self.patch_size, self.channels, width)

    def build_decoder(self, size: DecoderSize, latent_tokens: int, latent_channels: int) -> PixelDecoder:
        return PixelDecoder(size, latent_channels, self.image_size, self.patch_size, self.channels)

    def postprocess(self, output: Tensor) -> Tensor:
        return output.clamp(-1.0, 1.0)

    def tokens_per_sample(self) -> int:
        return self.num_patches
