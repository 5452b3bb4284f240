"""Tests for the ADM centre crop and the image-to-tensor conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from unisep.datamodules.image_transforms import adm_center_crop, image_to_tensor


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (300, 500),  # portrait
        (500, 300),  # landscape
        (5, 3),  # tiny: upscaled
        (32, 32),  # already the target size
        (1024, 700),  # halved once with BOX before the bicubic resize
        (333, 1000),  # short side where size / short is not exact in floating point
        (1, 40),  # one-pixel-wide strip
    ],
)
@pytest.mark.parametrize("size", [32, 256])
def test_adm_crop_output_size(width, height, size):
    image = Image.new("RGB", (width, height), (10, 20, 30))

    assert adm_center_crop(image, size).size == (size, size)


def test_adm_crop_keeps_mode():
    image = Image.new("L", (40, 60), 7)

    assert adm_center_crop(image, 16).mode == "L"


def test_adm_crop_same_size_is_identity():
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    cropped = adm_center_crop(Image.fromarray(pixels), 16)

    np.testing.assert_array_equal(np.asarray(cropped), pixels)


def test_adm_crop_takes_centre_of_long_side():
    # A 16 x 48 landscape image: left third 0, middle third 255, right third 0. The
    # centre 16 x 16 crop must be the middle third, all 255.
    pixels = np.zeros((16, 48), dtype=np.uint8)
    pixels[:, 16:32] = 255
    cropped = np.asarray(adm_center_crop(Image.fromarray(pixels), 16))

    assert cropped.shape == (16, 16)
    assert (cropped == 255).all()


def test_adm_crop_box_halving_averages():
    # 64 x 64 to 16 px: two BOX halvings of a 2 x 2 checkerboard give its mean, 127 or 128.
    pixels = np.indices((64, 64)).sum(axis=0) % 2 * 255
    cropped = np.asarray(adm_center_crop(Image.fromarray(pixels.astype(np.uint8)), 16))

    assert np.abs(cropped.astype(int) - 127.5).max() <= 1


def test_adm_crop_rejects_bad_size():
    with pytest.raises(ValueError, match="size"):
        adm_center_crop(Image.new("RGB", (8, 8)), 0)


def test_image_to_tensor_rgb():
    pixels = np.zeros((4, 5, 3), dtype=np.uint8)
    pixels[..., 0] = 255
    tensor = image_to_tensor(Image.fromarray(pixels), channels=3)

    assert tensor.shape == (3, 4, 5)
    assert tensor.dtype == torch.float32
    assert torch.all(tensor[0] == 1.0)
    assert torch.all(tensor[1:] == -1.0)


def test_image_to_tensor_grayscale_from_rgb():
    image = Image.new("RGB", (6, 2), (255, 255, 255))
    tensor = image_to_tensor(image, channels=1)

    assert tensor.shape == (1, 2, 6)
    assert torch.all(tensor == 1.0)


def test_image_to_tensor_rejects_bad_channels():
    with pytest.raises(ValueError, match="channels"):
        image_to_tensor(Image.new("RGB", (2, 2)), channels=4)
