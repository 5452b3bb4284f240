"""Frame tokenizers: the frozen map between video frames and the tokens SCD models.

Every tokenizer maps frames (batch, frames, channels, H, W) in [-1, 1] to tokens
(batch, frames, N, C) laid out row-major on a (rows, columns) grid, and back. Two live
here: `PatchTokenizer` (pixels cut into patches, no weights) and
`TorchScriptTokenizer` (any autoencoder exported with TorchScript). A trained UNITE
model used as a tokenizer is `unisep.lightning_modules.unite_tokenizer.UniteTokenizer`,
kept with the Lightning code because it loads a Lightning checkpoint.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn


class FrameTokenizer(nn.Module):
    """Interface of a frozen frame tokenizer.

    Subclasses set `image_size`, `channels`, `grid` (rows, columns) and
    `token_channels`, and implement `encode_images` and `decode_images`.
    """

    image_size: int
    channels: int
    grid: tuple[int, int]
    token_channels: int
    #: constructor arguments, recorded by subclasses so that checkpoints can rebuild them
    init_args: dict[str, Any]

    def config(self) -> dict[str, Any]:
        """Return `{"class_path", "init_args"}` that rebuilds this tokenizer."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(self.init_args)}

    @property
    def tokens_per_frame(self) -> int:
        """Tokens N of one frame (rows * columns)."""
        return self.grid[0] * self.grid[1]

    def encode_images(self, images: Tensor) -> Tensor:
        """Map images (n, channels, H, W) in [-1, 1] to tokens (n, N, C)."""
        raise NotImplementedError

    def decode_images(self, tokens: Tensor) -> Tensor:
        """Map tokens (n, N, C) to images (n, channels, H, W), roughly in [-1, 1]."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> "FrameTokenizer":
        # Frozen: stays in eval mode (no dropout, fixed norm statistics) while the
        # model around it trains.
        return super().train(False)

    @torch.no_grad()
    def encode(self, frames: Tensor) -> Tensor:
        """Map frames (batch, frames, channels, H, W) in [-1, 1] to tokens (batch, frames, N, C)."""
        self.check_frames(frames)
        batch = frames.shape[0]
        return self.encode_images(frames.flatten(0, 1)).unflatten(0, (batch, -1))

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        """Map tokens (batch, frames, N, C) to frames (batch, frames, channels, H, W)."""
        if tokens.ndim != 4 or tokens.shape[2:] != (self.tokens_per_frame, self.token_channels):
            raise ValueError(
                f"expected tokens (batch, frames, {self.tokens_per_frame}, {self.token_channels}),"
                f" got {tuple(tokens.shape)}"
            )
        batch = tokens.shape[0]
        return self.decode_images(tokens.flatten(0, 1)).unflatten(0, (batch, -1))

    def check_frames(self, frames: Tensor) -> None:
        """Raise a ValueError unless frames are (batch, frames, channels, H, W) of this tokenizer."""
        expected = (self.channels, self.image_size, self.image_size)
        if frames.ndim != 5 or tuple(frames.shape[2:]) != expected:
            raise ValueError(
                f"expected frames (batch, frames, {expected[0]}, {expected[1]}, {expected[2]}),"
                f" got {tuple(frames.shape)}; resize the video or set the tokenizer's image_size and channels"
            )


class PatchTokenizer(FrameTokenizer):
    """Cut each frame into non-overlapping `patch_size` squares; a token is one patch's pixels.

    Args:
        image_size: frame side length in pixels, divisible by `patch_size`.
        channels: colour channels (1 or 3).
        patch_size: side length of a patch.
    """

    def __init__(self, image_size: int = 32, channels: int = 1, patch_size: int = 4):
        super().__init__()
        self.init_args = dict(image_size=image_size, channels=channels, patch_size=patch_size)
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        self.image_size = image_size
        self.channels = channels
        self.patch_size = patch_size
        side = image_size // patch_size
        self.grid = (side, side)
        self.token_channels = patch_size * patch_size * channels

    def encode_images(self, images: Tensor) -> Tensor:
        return rearrange(images, "n c (h p) (w q) -> n (h w) (p q c)", p=self.patch_size, q=self.patch_size)

    def decode_images(self, tokens: Tensor) -> Tensor:
        return rearrange(
            tokens,
            "n (h w) (p q c) -> n c (h p) (w q)",
            h=self.grid[0],
            p=self.patch_size,
            q=self.patch_size,
        )


class TorchScriptTokenizer(FrameTokenizer):
    """An image autoencoder exported with TorchScript, used frozen.

    The scripted module must expose `encode(x) -> z` and `decode(z) -> x`, mapping images
    (n, channels, H, W) in [-1, 1] to latents (n, C, h, w) and back (mark both methods
    with `@torch.jit.export` before `torch.jit.script`, or trace a wrapper). Latents are
    normalised as `(z - shift) * scale`, the usual latent-diffusion scaling, so that they
    have roughly unit variance against the N(0, I) noise of the flow.

    Args:
        path: the `.pt` file written by `torch.jit.save`.
        image_size: frame side length the autoencoder expects.
        channels: colour channels the autoencoder expects.
        scale: multiplier applied to latents after `shift`.
        shift: offset subtracted from latents.
    """

    def __init__(self, path: str, image_size: int, channels: int = 3, scale: float = 1.0, shift: float = 0.0):
        super().__init__()
        self.init_args = dict(path=str(path), image_size=image_size, channels=channels, scale=scale, shift=shift)
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(
                f"frame autoencoder file not found: {file}. Export your autoencoder with"
                " torch.jit.save(torch.jit.script(model), PATH), exposing encode() and decode(),"
                " and set the tokenizer's path to it"
            )
        self.autoencoder = torch.jit.load(str(file), map_location="cpu")
        # ScriptModules do not implement requires_grad_(), so freeze parameter by parameter.
        for parameter in self.autoencoder.parameters():
            parameter.requires_grad_(False)
        self.autoencoder.eval()
        self.image_size = image_size
        self.channels = channels
        self.scale = scale
        self.shift = shift
        with torch.no_grad():
            latent = self.autoencoder.encode(torch.zeros(1, channels, image_size, image_size))
        if latent.ndim != 4:
            raise ValueError(
                f"{file}: encode() must return latents (n, C, h, w), got shape {tuple(latent.shape)}"
            )
        self.grid = (latent.shape[2], latent.shape[3])
        self.token_channels = latent.shape[1]

    def encode_images(self, images: Tensor) -> Tensor:
        latent = self.autoencoder.encode(images)
        return rearrange((latent - self.shift) * self.scale, "n c h w -> n (h w) c")

    def decode_images(self, tokens: Tensor) -> Tensor:
        latent = rearrange(tokens, "n (h w) c -> n c h w", h=self.grid[0]) / self.scale + self.shift
        return self.autoencoder.decode(latent)


def tokenizer_from_config(config: FrameTokenizer | dict[str, Any]) -> FrameTokenizer:
    """Build a tokenizer from `FrameTokenizer.config()` output, as stored in checkpoints."""
    if isinstance(config, FrameTokenizer):
        return config
    if not isinstance(config, dict) or "class_path" not in config:
        raise ValueError(f"a tokenizer config is a dict with class_path and init_args, got {config!r}")
    module_name, _, class_name = config["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, FrameTokenizer)):
        raise ValueError(f"{config['class_path']} is not a FrameTokenizer subclass")
    return cls(**config.get("init_args", {}))
