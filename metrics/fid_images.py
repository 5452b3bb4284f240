"""Image checks and conversions that every FID input goes through.

The FID protocol of the TensorFlow reference code feeds 8-bit RGB images to
Inception-v3. They are resized to 299 x 299 with TensorFlow 1.x bilinear interpolation
and scaled to [-1, 1) by `(x - 128) / 128`; torch-fidelity and the ADM evaluator
reproduce these steps. Generated samples are therefore quantised to uint8 first, exactly as
if they had been saved to PNG, so real and generated images take the same path.
"""

from __future__ import annotations

import torch

INCEPTION_IMAGE_SIZE = 299


def check_fid_images(images: torch.Tensor) -> torch.Tensor:
    """Validate a batch of images for FID feature extraction.

    Accepted inputs are uint8 in [0, 255] or floating point in [0, 1], with 1 (grayscale)
    or 3 (RGB) channels. Model outputs in [-1, 1] must be converted first, for example
    with `images_to_uint8`.

    Args:
        images: (batch, channels, height, width) tensor.

    Returns:
        The same tensor, unchanged.

    Raises:
        ValueError: on a wrong rank, channel count, dtype, or a value outside the range,
            naming the range found.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"FID images must be a torch.Tensor, got {type(images).__name__}.")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            "FID images must have shape (batch, channels, height, width) with 1 or 3 channels, "
            f"got {tuple(images.shape)}; move a trailing channel axis with .permute(0, 3, 1, 2)."
        )
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ValueError(
            f"FID images must be uint8 in [0, 255] or float in [0, 1], got dtype {images.dtype}; "
            "cast integer images in [0, 255] with .to(torch.uint8)."
        )
    if images.numel() == 0:
        return images
    low, high = torch.aminmax(images.detach())
    low, high = float(low), float(high)
    if not (0.0 <= low and high <= 1.0):
        raise ValueError(
            f"float FID images must lie in [0, 1], found values in [{low:.4g}, {high:.4g}] (dtype {images.dtype}); "
            "convert model outputs in [-1, 1] with unisep.metrics.fid_images.images_to_uint8, "
            "and pass 8-bit images as uint8."
        )
    return images


def images_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Quantise model images in [-1, 1] to uint8 in [0, 255].

    Values outside [-1, 1] are clipped, as saving a sample to PNG would clip them, and the
    rounding inverts the data pipeline's `x / 127.5 - 1` exactly on 8-bit data.

    Args:
        images: (batch, channels, height, width) floating-point tensor in [-1, 1].

    Returns:
        (batch, channels, height, width) uint8 tensor on the same device.

    Raises:
        ValueError: if the tensor is not floating point or contains NaN or infinite values.
    """
    if not images.is_floating_point():
        raise ValueError(f"model images must be floating point in [-1, 1], got dtype {images.dtype}.")
    if not torch.isfinite(images).all():
        count = int((~torch.isfinite(images)).sum())
        raise ValueError(
            f"model images contain {count} NaN or infinite values out of {images.numel()}; "
            "the model diverged or its sampler failed, so FID cannot be computed."
        )
    scaled = (images.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5
    return scaled.round().to(torch.uint8)


def _tf1_source_indices(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # TensorFlow 1.x `resize_bilinear` with align_corners=False samples output pixel i at
    # source coordinate i * in_size / out_size: no half-pixel offset and no antialiasing,
    # unlike torch.nn.functional.interpolate(mode="bilinear").
    scale = in_size / out_size
    source = torch.arange(out_size, device=device, dtype=torch.float64) * scale
    lower = source.floor().long().clamp(max=in_size - 1)
    upper = (lower + 1).clamp(max=in_size - 1)
    weight = source - lower.double()
    return lower, upper, weight


def resize_bilinear_tf1(images: torch.Tensor, size: int = INCEPTION_IMAGE_SIZE) -> torch.Tensor:
    """Resize images with TensorFlow 1.x bilinear interpolation (align_corners=False).

    This is the resize of the reference FID code, which torch-fidelity and the ADM
    evaluator reproduce. Torch's own bilinear mode uses half-pixel centres and shifts the
    image by half a source pixel, which changes FID measurably at small source sizes.

    Args:
        images: (batch, channels, height, width) floating-point tensor.
        size: output height and width in pixels.

    Returns:
        (batch, channels, size, size) tensor of the input dtype.
    """
    _, _, height, width = images.shape
    if (height, width) == (size, size):
        return images

    # Interpolate along the width first, then the height, the order TensorFlow uses.
    left, right, weight_x = _tf1_source_indices(width, size, images.device)
    horizontal = images[..., left] + (images[..., right] - images[..., left]) * weight_x.to(images.dtype)

    top, bottom, weight_y = _tf1_source_indices(height, size, images.device)
    weight_y = weight_y.to(images.dtype)[:, None]
    return horizontal[..., top, :] + (horizontal[..., bottom, :] - horizontal[..., top, :]) * weight_y


def to_inception_input(images: torch.Tensor, size: int = INCEPTION_IMAGE_SIZE) -> torch.Tensor:
    """Convert checked FID images into the Inception network's input.

    Args:
        images: (batch, 1 or 3, height, width), uint8 in [0, 255] or float in [0, 1].
        size: the network's input resolution.

    Returns:
        (batch, 3, size, size) float32 in [-1, 1): 8-bit values x map to (x - 128) / 128.
    """
    check_fid_images(images)
    pixels = images.float() if images.dtype == torch.uint8 else images.float() * 255.0
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    pixels = resize_bilinear_tf1(pixels, size)
    return (pixels - 128.0) / 128.0
