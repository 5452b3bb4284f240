"""Tests for the timestep shift, logit-normal sampling and sampling grids."""

import pytest
import torch

from unisep.flow import (
    sample_logit_normal,
    sample_training_timesteps,
    sampling_grid,
    shift_timesteps,
)

T = torch.linspace(0, 1, 101, dtype=torch.float64)


def test_shift_one_is_identity():
    assert torch.equal(shift_timesteps(T, 1.0), T)


@pytest.mark.parametrize("shift", [0.1, 0.5, 2.0, 7.0])
def test_shift_fixes_endpoints_and_is_monotone(shift):
    warped = shift_timesteps(T, shift)

    assert warped[0] == 0.0
    assert warped[-1] == 1.0
    assert torch.all(warped.diff() > 0)


def test_shift_below_one_moves_mass_to_noise():
    interior = T[1:-1]

    assert torch.all(shift_timesteps(interior, 0.5) < interior)
    assert torch.all(shift_timesteps(interior, 2.0) > interior)
    # shift = 0.5 maps the midpoint to 0.5 * 0.5 / (1 - 0.5 * 0.5) = 1/3.
    assert shift_timesteps(torch.tensor(0.5, dtype=torch.float64), 0.5) == pytest.approx(1 / 3)


@pytest.mark.parametrize("shift", [0.3, 3.0])
def test_shift_inverse_is_reciprocal_shift(shift):
    round_trip = shift_timesteps(shift_timesteps(T, shift), 1.0 / shift)

    assert torch.allclose(round_trip, T, atol=1e-14)


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_shift_rejects_non_positive(bad):
    with pytest.raises(ValueError, match="shift must be > 0"):
        shift_timesteps(T, bad)


def test_logit_normal_moments_in_logit_space():
    generator = torch.Generator().manual_seed(0)
    n = 200_000

    t = sample_logit_normal(n, mean=0.3, std=0.7, dtype=torch.float64, generator=generator)
    logits = torch.logit(t)

    # Standard errors: std / sqrt(n) = 0.0016 for the mean, std / sqrt(2n) = 0.0011 for
    # the std; the tolerances are about five of them.
    assert t.shape == (n,)
    assert torch.all((t > 0) & (t < 1))
    assert logits.mean().item() == pytest.approx(0.3, abs=0.008)
    assert logits.std().item() == pytest.approx(0.7, abs=0.006)


def test_logit_normal_generator_is_reproducible():
    first = sample_logit_normal((3, 4), generator=torch.Generator().manual_seed(5))
    second = sample_logit_normal((3, 4), generator=torch.Generator().manual_seed(5))

    assert first.shape == (3, 4)
    assert torch.equal(first, second)


def test_logit_normal_rejects_bad_std():
    with pytest.raises(ValueError, match="std must be > 0"):
        sample_logit_normal(4, std=0.0)


def test_training_timesteps_median_follows_shift():
    generator = torch.Generator().manual_seed(1)

    t = sample_training_timesteps(100_000, shift=0.5, generator=generator)

    # The logit-normal(0, 1) median is 0.5 and the warp is monotone, so the shifted
    # median is shift_timesteps(0.5, 0.5) = 1/3.
    assert t.shape == (100_000,)
    assert t.dtype == torch.float32
    assert t.median().item() == pytest.approx(1 / 3, abs=0.01)


def test_training_timesteps_reject_bad_arguments():
    with pytest.raises(ValueError, match="shift must be > 0"):
        sample_training_timesteps(4, shift=-0.5)
    with pytest.raises(ValueError, match="batch must be >= 0"):
        sample_training_timesteps(-1)


def test_sampling_grid_uniform():
    grid = sampling_grid(4, dtype=torch.float64)

    assert torch.allclose(grid, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))


@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("interval", [(0.0, 1.0), (0.2, 0.9)])
def test_sampling_grid_endpoints_and_order(shift, interval):
    t_start, t_end = interval

    grid = sampling_grid(10, shift=shift, t_start=t_start, t_end=t_end)

    assert grid.shape == (11,)
    assert grid[0] == torch.tensor(t_start, dtype=torch.float32)
    assert grid[-1] == torch.tensor(t_end, dtype=torch.float32)
    assert torch.all(grid.diff() > 0)


def test_sampling_grid_shift_refines_noise_end():
    grid = sampling_grid(20, shift=0.5, dtype=torch.float64)
    steps = grid.diff()

    assert steps[0] < steps[-1]
    assert torch.allclose(grid, shift_timesteps(torch.linspace(0, 1, 21, dtype=torch.float64), 0.5))


def test_sampling_grid_subinterval_is_piece_of_full_grid():
    full = sampling_grid(20, shift=0.5, dtype=torch.float64)

    piece = sampling_grid(
        10, shift=0.5, t_start=full[5].item(), t_end=full[15].item(), dtype=torch.float64
    )

    assert torch.allclose(piece, full[5:16], atol=1e-12)


@pytest.mark.parametrize("bad_steps", [0, -3, 2.5, True])
def test_sampling_grid_rejects_bad_steps(bad_steps):
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        sampling_grid(bad_steps)


@pytest.mark.parametrize("interval", [(0.5, 0.5), (0.8, 0.2), (-0.1, 1.0), (0.0, 1.1)])
def test_sampling_grid_rejects_bad_interval(interval):
    with pytest.raises(ValueError, match="expected 0 <= t_start < t_end <= 1"):
        sampling_grid(4, t_start=interval[0], t_end=interval[1])
