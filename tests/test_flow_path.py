"""Tests for the linear path and the x-prediction <-> velocity conversions."""

import pytest
import torch

from unisep.flow import (
    broadcast_time,
    interpolate,
    velocity_target,
    velocity_to_x,
    x_to_velocity,
)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("shape", [(5,), (5, 3), (5, 2, 3, 4)])
def test_broadcast_time_shape(shape):
    like = torch.zeros(shape)
    t = torch.linspace(0, 1, 5)

    t_b = broadcast_time(t, like)

    assert t_b.shape == (5,) + (1,) * (len(shape) - 1)
    assert torch.equal(t_b.flatten(), t)


def test_broadcast_time_casts_to_data_dtype():
    like = torch.zeros(3, 4, dtype=torch.bfloat16)
    t = torch.tensor([0.1, 0.5, 0.9])

    assert broadcast_time(t, like).dtype == torch.bfloat16


@pytest.mark.parametrize(
    "t_shape",
    [(4,), (5, 1), (1,), ()],
    ids=["wrong-length", "column", "single", "scalar"],
)
def test_broadcast_time_rejects_bad_t(t_shape):
    like = torch.zeros(5, 3)

    with pytest.raises(ValueError, match=r"t must have shape \(batch,\) = \(5,\)"):
        broadcast_time(torch.zeros(t_shape), like)


def test_broadcast_time_rejects_unbatched_tensor():
    with pytest.raises(ValueError, match="at least one dimension"):
        broadcast_time(torch.zeros(1), torch.tensor(1.0))


def test_interpolate_endpoints(generator):
    x1 = torch.randn(4, 6, 3, generator=generator, dtype=torch.float64)
    noise = torch.randn(4, 6, 3, generator=generator, dtype=torch.float64)

    at_noise = interpolate(x1, noise, torch.zeros(4, dtype=torch.float64))
    at_data = interpolate(x1, noise, torch.ones(4, dtype=torch.float64))

    assert torch.equal(at_noise, noise)
    assert torch.equal(at_data, x1)


def test_interpolate_per_sample_times(generator):
    x1 = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    noise = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    t = torch.tensor([0.0, 0.25, 0.8], dtype=torch.float64)

    x_t = interpolate(x1, noise, t)

    for i in range(3):
        expected = t[i] * x1[i] + (1 - t[i]) * noise[i]
        assert torch.allclose(x_t[i], expected)


def test_velocity_target_is_time_derivative(generator):
    x1 = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    noise = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64, requires_grad=True)

    # The path is linear in t, so d x_t / d t is the same for every t.
    x_t = interpolate(x1, noise, t)
    v = velocity_target(x1, noise)
    (dxt_dt,) = torch.autograd.grad(x_t, t, grad_outputs=torch.ones_like(x_t))

    assert torch.allclose(dxt_dt, v.sum(dim=1))
    assert torch.equal(v, x1 - noise)


def test_interpolate_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"x1 of shape \(2, 3\) and noise of shape \(2, 4\)"):
        interpolate(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2))


def test_x_to_velocity_recovers_target_below_clamp(generator):
    x1 = torch.randn(4, 8, 2, generator=generator, dtype=torch.float64)
    noise = torch.randn(4, 8, 2, generator=generator, dtype=torch.float64)
    t = torch.tensor([0.0, 0.3, 0.7, 0.95], dtype=torch.float64)

    # With 1 - t >= 0.05 the clamp is inactive, so a perfect x-prediction gives x1 - noise.
    v = x_to_velocity(x1, interpolate(x1, noise, t), t)

    assert torch.allclose(v, velocity_target(x1, noise))


def test_x_to_velocity_clamps_near_data():
    x_pred = torch.full((1, 3), 2.0, dtype=torch.float64)
    x_t = torch.full((1, 3), 1.0, dtype=torch.float64)
    t = torch.tensor([0.99], dtype=torch.float64)

    v = x_to_velocity(x_pred, x_t, t, min_one_minus_t=0.05)

    assert torch.allclose(v, torch.full((1, 3), 1.0 / 0.05, dtype=torch.float64))


@pytest.mark.parametrize("min_one_minus_t", [0.05, 0.2, 1.0])
def test_x_velocity_round_trip(generator, min_one_minus_t):
    x_pred = torch.randn(6, 4, 3, generator=generator, dtype=torch.float64)
    x_t = torch.randn(6, 4, 3, generator=generator, dtype=torch.float64)
    # Times on both sides of the clamp threshold, including t = 1.
    t = torch.tensor([0.0, 0.4, 0.9, 0.97, 0.999, 1.0], dtype=torch.float64)

    v = x_to_velocity(x_pred, x_t, t, min_one_minus_t)
    x_back = velocity_to_x(v, x_t, t, min_one_minus_t)
    v_back = x_to_velocity(x_back, x_t, t, min_one_minus_t)

    assert torch.allclose(x_back, x_pred, atol=1e-12)
    assert torch.allclose(v_back, v, atol=1e-9)


def test_x_to_velocity_keeps_bfloat16():
    x = torch.randn(2, 4).to(torch.bfloat16)
    t = torch.tensor([0.2, 0.6])

    assert x_to_velocity(x, x, t).dtype == torch.bfloat16


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_conversions_reject_bad_clamp(bad):
    x = torch.zeros(2, 3)
    t = torch.zeros(2)

    with pytest.raises(ValueError, match=r"min_one_minus_t must be in \(0, 1\]"):
        x_to_velocity(x, x, t, min_one_minus_t=bad)
    with pytest.raises(ValueError, match=r"min_one_minus_t must be in \(0, 1\]"):
        velocity_to_x(x, x, t, min_one_minus_t=bad)


def test_conversions_reject_shape_mismatch():
    t = torch.zeros(2)

    with pytest.raises(ValueError, match="x_pred and x_t must have the same shape"):
        x_to_velocity(torch.zeros(2, 3), torch.zeros(2, 4), t)
    with pytest.raises(ValueError, match="v and x_t must have the same shape"):
        velocity_to_x(torch.zeros(2, 3), torch.zeros(2, 4), t)
