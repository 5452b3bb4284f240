"""FID input checks, quantisation and the TensorFlow 1.x bilinear resize."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unisep.metrics.fid_images import check_fid_images, images_to_uint8, resize_bilinear_tf1, to_inception_input


def grid_sample_tf1(images: torch.Tensor, size: int) -> torch.Tensor:
    """Independent formulation of TF1 bilinear: sample source point i * in / out with border clamping.

    grid_sample with align_corners=False maps output pixel i to the half-pixel source
    coordinate (i + 0.5) * in / out - 0.5; shifting the affine grid by 1/in - 1/out in
    normalised units removes the half-pixel offsets.
    """
    batch, channels, height, width = images.shape
    theta = torch.zeros(batch, 2, 3, dtype=images.dtype)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / width - 1.0 / size
    theta[:, 1, 2] = 1.0 / height - 1.0 / size
    grid = F.affine_grid(theta, [batch, channels, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


@pytest.mark.parametrize("source_size", [(8, 8), (16, 16), (17, 40), (300, 300)])
def test_resize_matches_grid_sample_formulation(source_size):
    images = torch.rand(2, 3, *source_size, dtype=torch.float64) * 255

    ours = resize_bilinear_tf1(images, 299)
    reference = grid_sample_tf1(images, 299)

    assert ours.shape == (2, 3, 299, 299)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)


def test_resize_differs_from_half_pixel_bilinear():
    images = torch.rand(1, 1, 16, 16, dtype=torch.float64)

    ours = resize_bilinear_tf1(images, 299)
    half_pixel = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)

    assert (ours - half_pixel).abs().max() > 1e-2


def test_resize_keeps_first_pixel_and_constants():
    images = torch.rand(1, 1, 8, 8)
    constant = torch.full((1, 3, 5, 7), 42.0)

    resized = resize_bilinear_tf1(images, 299)

    assert resized[0, 0, 0, 0] == images[0, 0, 0, 0]
    torch.testing.assert_close(resize_bilinear_tf1(constant, 299), torch.full((1, 3, 299, 299), 42.0))


def test_resize_same_size_is_identity():
    images = torch.rand(2, 3, 299, 299)

    assert resize_bilinear_tf1(images, 299) is images


def test_images_to_uint8_inverts_data_scaling():
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    model_range = pixels.float() / 127.5 - 1.0

    assert torch.equal(images_to_uint8(model_range), pixels)


def test_images_to_uint8_clips_outside_range():
    images = torch.tensor([-1.5, -1.0, 0.0, 1.0, 1.2]).reshape(1, 1, 1, 5)

    assert images_to_uint8(images).flatten().tolist() == [0, 0, 128, 255, 255]


def test_images_to_uint8_rejects_nan():
    images = torch.zeros(2, 3, 4, 4)
    images[1, 0, 0, 0] = float("nan")

    with pytest.raises(ValueError, match="1 NaN or infinite values"):
        images_to_uint8(images)


def test_check_accepts_uint8_and_unit_floats():
    check_fid_images(torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8))
    check_fid_images(torch.rand(2, 1, 8, 8))


def test_check_rejects_model_range_with_range_found():
    images = torch.rand(2, 3, 8, 8) * 2 - 1

    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], found values in \[-"):
        check_fid_images(images)


def test_check_rejects_integer_dtype():
    with pytest.raises(ValueError, match="torch.int64"):
        check_fid_images(torch.randint(0, 256, (2, 3, 8, 8)))


@pytest.mark.parametrize("shape", [(3, 8, 8), (2, 4, 8, 8), (2, 8, 8, 3)])
def test_check_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match="1 or 3 channels"):
        check_fid_images(torch.zeros(shape, dtype=torch.uint8))


def test_inception_input_scaling_and_grayscale():
    gray = torch.tensor([0, 128, 255], dtype=torch.uint8).reshape(1, 1, 1, 3).expand(1, 1, 3, 3).contiguous()

    inputs = to_inception_input(gray, size=3)

    assert inputs.shape == (1, 3, 3, 3)
    torch.testing.assert_close(inputs[0, 0], inputs[0, 2])
    assert inputs[0, 0, 0].tolist() == [-1.0, 0.0, 127 / 128]


def test_inception_input_float_equals_uint8():
    pixels = torch.randint(0, 256, (2, 3, 10, 10), dtype=torch.uint8)

    torch.testing.assert_close(to_inception_input(pixels.float() / 255.0), to_inception_input(pixels), atol=1e-5, rtol=0)
