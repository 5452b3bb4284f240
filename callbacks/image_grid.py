"""Image grids as uint8 arrays and PNG files (no torchvision)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def to_uint8(images: Tensor) -> np.ndarray:
    """Convert images (N, C, H, W) in [-1, 1] to uint8 (N, H, W, C)."""
    if images.dim() != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
    scaled = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images: np.ndarray, rows: int, padding: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile uint8 images (N, H, W, C) into (rows, ceil(N / rows)) cells, row-major."""
    count, height, width, channels = images.shape
    columns = -(-count // rows)
    grid = np.full(
        (rows * (height + padding) + padding, columns * (width + padding) + padding, channels),
        pad_value,
        dtype=np.uint8,
    )
    for index in range(count):
        row, column = divmod(index, columns)
        top = padding + row * (height + padding)
        left = padding + column * (width + padding)
        grid[top : top + height, left : left + width] = images[index]
    return grid


def save_png(grid: np.ndarray, path: str | Path, upscale: int = 1) -> Path:
    """Write a uint8 (H, W, C) array as PNG, optionally enlarged by nearest neighbour."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if upscale > 1:
        image = image.resize((image.width * upscale, image.height * upscale), Image.NEAREST)
    image.save(path)
    return path
