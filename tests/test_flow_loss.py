"""Tests for the x-prediction velocity loss and the masked velocity MSE."""

import pytest
import torch

from unisep.flow import (
    interpolate,
    velocity_mse_loss,
    x_prediction_velocity_loss,
    x_to_velocity,
)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_x_prediction_loss_zero_for_perfect_prediction(generator):
    x1 = torch.randn(4, 16, 8, generator=generator)
    noise = torch.randn(4, 16, 8, generator=generator)
    t = torch.tensor([0.0, 0.3, 0.96, 1.0])

    loss = x_prediction_velocity_loss(x1.clone(), x1, interpolate(x1, noise, t), t)

    assert loss.shape == (4,)
    assert torch.equal(loss, torch.zeros(4))


def test_x_prediction_loss_hand_computed():
    x1 = torch.zeros(2, 3, 4, dtype=torch.float64)
    x_pred = torch.full((2, 3, 4), 0.1, dtype=torch.float64)
    x_t = torch.full((2, 3, 4), 0.7, dtype=torch.float64)
    t = torch.tensor([0.99, 0.5], dtype=torch.float64)

    loss = x_prediction_velocity_loss(x_pred, x1, x_t, t, min_one_minus_t=0.05)

    # t = 0.99: 1 - t = 0.01 is clamped to 0.05, so (0.1 / 0.05)^2 = 4.
    # t = 0.5: (0.1 / 0.5)^2 = 0.04.
    assert loss[0].item() == pytest.approx(4.0, rel=1e-12)
    assert loss[1].item() == pytest.approx(0.04, rel=1e-12)


def test_x_prediction_loss_matches_velocity_definition(generator):
    x1 = torch.randn(5, 7, 3, generator=generator, dtype=torch.float64)
    x_pred = torch.randn(5, 7, 3, generator=generator, dtype=torch.float64)
    noise = torch.randn(5, 7, 3, generator=generator, dtype=torch.float64)
    t = torch.rand(5, generator=generator, dtype=torch.float64)
    x_t = interpolate(x1, noise, t)

    loss = x_prediction_velocity_loss(x_pred, x1, x_t, t)

    velocity_error = x_to_velocity(x_pred, x_t, t) - x_to_velocity(x1, x_t, t)
    assert torch.allclose(loss, velocity_error.square().mean(dim=(1, 2)))


def test_x_prediction_loss_reduce_dims(generator):
    x1 = torch.randn(2, 5, 3, generator=generator)
    x_pred = torch.randn(2, 5, 3, generator=generator)
    t = torch.tensor([0.2, 0.6])

    per_token = x_prediction_velocity_loss(x_pred, x1, x1, t, reduce_dims=(2,))
    per_sample = x_prediction_velocity_loss(x_pred, x1, x1, t)

    assert per_token.shape == (2, 5)
    assert torch.allclose(per_token.mean(dim=1), per_sample)


def test_x_prediction_loss_gradient(generator):
    x1 = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    x_pred = torch.randn(3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.1, 0.5, 0.99], dtype=torch.float64)

    x_prediction_velocity_loss(x_pred, x1, x1, t).sum().backward()

    # d/dx_pred of mean((x_pred - x1)^2 / c^2) over 4 elements is 2 (x_pred - x1) / (4 c^2).
    c = (1 - t).clamp(min=0.05)[:, None]
    expected = 2 * (x_pred.detach() - x1) / (4 * c**2)
    assert torch.allclose(x_pred.grad, expected)


def test_x_prediction_loss_computes_in_float32():
    x = torch.randn(2, 3).to(torch.bfloat16)
    t = torch.tensor([0.2, 0.4])

    assert x_prediction_velocity_loss(x, x, x, t).dtype == torch.float32


def test_x_prediction_loss_rejects_shape_mismatch():
    t = torch.zeros(2)

    with pytest.raises(ValueError, match=r"x_pred of shape \(2, 3, 4\) and x1 of shape \(2, 3, 5\)"):
        x_prediction_velocity_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5), torch.zeros(2, 3, 5), t)


def test_x_prediction_loss_rejects_batch_reduction():
    x = torch.zeros(2, 3)

    with pytest.raises(ValueError, match="must not include the batch dimension"):
        x_prediction_velocity_loss(x, x, x, torch.zeros(2), reduce_dims=(0, 1))


def test_x_prediction_loss_rejects_bad_t():
    x = torch.zeros(2, 3)

    with pytest.raises(ValueError, match=r"t must have shape \(batch,\)"):
        x_prediction_velocity_loss(x, x, x, torch.zeros(3))


def test_velocity_mse_without_mask(generator):
    v_pred = torch.randn(3, 4, 5, generator=generator)
    v_target = torch.randn(3, 4, 5, generator=generator)

    loss = velocity_mse_loss(v_pred, v_target)

    assert loss.shape == ()
    assert torch.allclose(loss, (v_pred - v_target).square().mean())


def test_velocity_mse_per_sample_mask(generator):
    v_pred = torch.randn(4, 6, 2, generator=generator, dtype=torch.float64)
    v_target = torch.randn(4, 6, 2, generator=generator, dtype=torch.float64)
    mask = torch.tensor([True, False, True, False])

    loss = velocity_mse_loss(v_pred, v_target, mask)

    assert torch.allclose(loss, (v_pred[mask] - v_target[mask]).square().mean())


def test_velocity_mse_per_frame_mask(generator):
    # (batch, frames, tokens, channels), with clean frames masked out as in SCD.
    v_pred = torch.randn(2, 5, 3, 4, generator=generator, dtype=torch.float64)
    v_target = torch.randn(2, 5, 3, 4, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]], dtype=torch.float64)

    loss = velocity_mse_loss(v_pred, v_target, mask)

    noised_frames = mask.bool()
    expected = (v_pred[noised_frames] - v_target[noised_frames]).square().mean()
    assert torch.allclose(loss, expected)


def test_velocity_mse_all_zero_mask(generator):
    v_pred = torch.randn(3, 4, generator=generator, requires_grad=True)
    v_target = torch.randn(3, 4, generator=generator)

    loss = velocity_mse_loss(v_pred, v_target, torch.zeros(3))
    loss.backward()

    assert loss.item() == 0.0
    assert loss.requires_grad
    assert torch.isfinite(v_pred.grad).all()
    assert torch.equal(v_pred.grad, torch.zeros_like(v_pred))


def test_velocity_mse_rejects_bad_mask():
    v = torch.zeros(2, 5, 3)

    with pytest.raises(ValueError, match=r"mask shape \(2, 3\) must be a prefix"):
        velocity_mse_loss(v, v, torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"mask shape \(5,\) must be a prefix"):
        velocity_mse_loss(v, v, torch.ones(5))


def test_velocity_mse_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="v_pred and v_target must have the same shape"):
        velocity_mse_loss(torch.zeros(2, 3), torch.zeros(2, 4))
