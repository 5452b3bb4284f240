"""Fréchet distance against an independent SciPy computation, including singular covariances."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from unisep.metrics.frechet import frechet_distance, mean_and_covariance, trace_sqrt_product


def scipy_frechet(mu1, sigma1, mu2, sigma2) -> float:
    """The textbook formula with scipy.linalg.sqrtm, real part taken."""
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    value = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(root)
    return float(np.real(value))


def feature_sets(num_samples: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two correlated, non-negative feature sets, like pooled ReLU activations."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((dim, dim)) * 0.3
    first = np.abs(rng.standard_normal((num_samples, dim)) @ mixing)
    second = np.abs(rng.standard_normal((num_samples, dim)) @ mixing + 0.2)
    return first, second


@pytest.mark.parametrize(
    ("num_samples", "dim"),
    [
        (400, 32),  # full rank
        (40, 64),  # rank 39 < 64: singular covariances
        (12, 128),  # rank 11, far below the dimension
    ],
)
def test_frechet_matches_scipy_sqrtm(num_samples, dim):
    first, second = feature_sets(num_samples, dim, seed=dim)
    mu1, sigma1 = mean_and_covariance(first)
    mu2, sigma2 = mean_and_covariance(second)

    expected = scipy_frechet(mu1, sigma1, mu2, sigma2)
    actual = frechet_distance(mu1, sigma1, mu2, sigma2)

    assert np.linalg.matrix_rank(sigma1) == min(num_samples - 1, dim)
    assert actual == pytest.approx(expected, rel=1e-3)
    assert actual == pytest.approx(expected, rel=1e-6)


def test_frechet_near_singular_product_is_finite():
    # Rank-one covariances make S1 S2 nilpotent-like, where sqrtm is ill-conditioned.
    rng = np.random.default_rng(0)
    direction = rng.standard_normal(16)
    sigma1 = np.outer(direction, direction)
    sigma2 = np.outer(direction, direction) * 4.0
    mu = np.zeros(16)

    value = frechet_distance(mu, sigma1, mu, sigma2)

    # For collinear rank-one covariances the distance is (sqrt(a) - sqrt(b))^2 * |v|^2.
    assert value == pytest.approx((1.0 - 2.0) ** 2 * direction @ direction, rel=1e-9)


def test_frechet_identical_sets_are_zero():
    first, _ = feature_sets(30, 64, seed=1)
    mu, sigma = mean_and_covariance(first)

    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_frechet_mean_shift_only():
    first, _ = feature_sets(200, 8, seed=2)
    mu, sigma = mean_and_covariance(first)
    shift = np.arange(8, dtype=np.float64) * 0.1

    assert frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(float(shift @ shift), abs=1e-9)


def test_frechet_accepts_tensors_and_is_symmetric():
    first, second = feature_sets(100, 16, seed=3)
    mu1, sigma1 = mean_and_covariance(first)
    mu2, sigma2 = mean_and_covariance(second)
    tensors = [torch.from_numpy(array) for array in (mu1, sigma1, mu2, sigma2)]

    forward = frechet_distance(*tensors)
    backward = frechet_distance(mu2, sigma2, mu1, sigma1)

    assert isinstance(forward, float)
    assert forward == pytest.approx(backward, rel=1e-9)


def test_trace_sqrt_product_of_diagonals():
    sigma1 = torch.diag(torch.tensor([1.0, 4.0, 0.0], dtype=torch.float64))
    sigma2 = torch.diag(torch.tensor([9.0, 1.0, 5.0], dtype=torch.float64))

    assert float(trace_sqrt_product(sigma1, sigma2)) == pytest.approx(3.0 + 2.0 + 0.0)


def test_mean_and_covariance_match_numpy():
    features = np.random.default_rng(4).standard_normal((50, 6))

    mu, sigma = mean_and_covariance(torch.from_numpy(features).float())

    np.testing.assert_allclose(mu, features.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), atol=1e-6)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same length"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match=r"shape \(3, 3\)"):
        frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3))


def test_frechet_rejects_asymmetric_covariance():
    sigma = np.eye(3)
    sigma[0, 1] = 0.5

    with pytest.raises(ValueError, match="not symmetric"):
        frechet_distance(np.zeros(3), sigma, np.zeros(3), np.eye(3))


def test_frechet_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([np.nan, 0.0]), np.eye(2), np.zeros(2), np.eye(2))


def test_mean_and_covariance_needs_two_samples():
    with pytest.raises(ValueError, match="num_samples >= 2"):
        mean_and_covariance(np.zeros((1, 4)))
