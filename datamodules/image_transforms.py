"""Image preprocessing shared by the shard writer and the image data stream."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# PIL modes for the supported channel counts.
CHANNEL_MODES = {1: "L", 3: "RGB"}


def adm_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize and centre-crop an image to ``size x size`` as ADM (guided-diffusion) does.

    The ADM preprocessing for ImageNet (Dhariwal and Nichol, "Diffusion Models Beat
    GANs on Image Synthesis", 2021) is used by DiT, SiT and later work, so FID numbers
    are comparable only on images prepared the same way:

    1. While the short side is at least ``2 * size``, halve both sides with a BOX
       filter. Averaging 2 x 2 blocks is a cheap anti-aliased downscale.
    2. Resize with BICUBIC so that the short side is exactly ``size``. Images smaller
       than ``size`` are upscaled here.
    3. Crop the centre ``size x size`` square. When the excess is odd, the extra pixel
       stays on the right or bottom.

    Args:
        image: Any PIL image; its mode is kept.
        size: Side of the output square, in pixels.

    Returns:
        A ``size x size`` image.

    Raises:
        ValueError: ``size`` < 1 or the image has a zero side.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if min(image.size) < 1:
        raise ValueError(f"cannot crop an image of size {image.size}")

    while min(image.size) >= 2 * size:
        half = (image.width // 2, image.height // 2)
        image = image.resize(half, resample=Image.Resampling.BOX)

    # The short side is set to `size` exactly instead of by scaling, so that float
    # rounding cannot make it one pixel short of the crop.
    width, height = image.size
    if width <= height:
        scaled = (size, max(size, round(height * size / width)))
    else:
        scaled = (max(size, round(width * size / height)), size)
    image = image.resize(scaled, resample=Image.Resampling.BICUBIC)

    left = (image.width - size) // 2
    top = (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))


def image_to_tensor(image: Image.Image, channels: int) -> torch.Tensor:
    """Convert a PIL image to a float tensor in [-1, 1].

    Args:
        image: PIL image of any mode; it is converted to grayscale (``channels=1``) or
            RGB (``channels=3``).
        channels: 1 or 3.

    Returns:
        ``(channels, height, width)`` float32, where uint8 value ``v`` maps to
        ``v / 127.5 - 1``, so 0 -> -1 and 255 -> 1.

    Raises:
        ValueError: ``channels`` is not 1 or 3.
    """
    if channels not in CHANNEL_MODES:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    mode = CHANNEL_MODES[channels]
    if image.mode != mode:
        image = image.convert(mode)
    array = np.array(image, dtype=np.uint8)  # (H, W) or (H, W, 3)
    if array.ndim == 2:
        array = array[:, :, None]
    tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (C, H, W)
    return tensor.to(torch.float32).div_(127.5).sub_(1.0)
