"""Fréchet distance between two Gaussians, the quantity behind FID.

For N(mu1, S1) and N(mu2, S2):

    d^2 = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2))

The usual implementation (Heusel et al. 2017, "GANs trained by a two time-scale update
rule converge to a local Nash equilibrium") takes `scipy.linalg.sqrtm(S1 @ S2)`, which
is slow for 2048 x 2048 matrices and can return complex or non-finite values when S1 S2
is near singular, for example when fewer samples than feature dimensions were drawn.
Here the trace term uses the identity

    Tr((S1 S2)^(1/2)) = Tr((R S2 R)^(1/2)),   R = S1^(1/2),

which holds because S1 S2 = R (R S2 R) R^(-1) is similar to R S2 R whenever S1 is
invertible, and by continuity when it is not. R S2 R is symmetric positive semi-definite,
so two symmetric eigendecompositions in float64 give the trace without complex arithmetic.
"""

from __future__ import annotations

import numpy as np
import torch

# Covariances from real features are symmetric up to rounding. A larger asymmetry means
# the caller passed something else (a transposed feature matrix, a non-covariance).
_SYMMETRY_RTOL = 1e-6


def _as_float64(name: str, value: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    tensor = torch.as_tensor(value, dtype=torch.float64, device=device)
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or infinite values; check the features it was computed from.")
    return tensor


def _check_covariance(name: str, sigma: torch.Tensor, dim: int) -> torch.Tensor:
    if sigma.shape != (dim, dim):
        raise ValueError(f"{name} must have shape ({dim}, {dim}) to match the mean, got {tuple(sigma.shape)}.")
    asymmetry = (sigma - sigma.T).abs().max()
    scale = sigma.abs().max().clamp(min=torch.finfo(torch.float64).tiny)
    if asymmetry > _SYMMETRY_RTOL * scale:
        raise ValueError(
            f"{name} is not symmetric (max |S - S^T| = {asymmetry.item():.3g}, max |S| = {scale.item():.3g}); "
            "pass a covariance matrix such as numpy.cov(features, rowvar=False)."
        )
    return 0.5 * (sigma + sigma.T)


def _eigenvalue_floor(eigenvalues: torch.Tensor) -> torch.Tensor:
    # Eigenvalues below dim * eps * max|eigenvalue| cannot be distinguished from rounding
    # (the tolerance numpy.linalg.matrix_rank uses). Zeroing them keeps the square roots
    # of rounding noise, about 1e-7 each, from adding up over thousands of null directions.
    dim = eigenvalues.shape[-1]
    tolerance = dim * torch.finfo(torch.float64).eps * eigenvalues.abs().max()
    return torch.where(eigenvalues > tolerance, eigenvalues, torch.zeros_like(eigenvalues))


def trace_sqrt_product(sigma1: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """Compute Tr((S1 S2)^(1/2)) for symmetric positive semi-definite S1, S2.

    Args:
        sigma1: (dim, dim) float64 symmetric matrix.
        sigma2: (dim, dim) float64 symmetric matrix.

    Returns:
        0-d float64 tensor on the inputs' device.
    """
    eigenvalues, eigenvectors = torch.linalg.eigh(sigma1)
    root1 = (eigenvectors * _eigenvalue_floor(eigenvalues).sqrt()) @ eigenvectors.T
    middle = root1 @ sigma2 @ root1
    middle = 0.5 * (middle + middle.T)
    return _eigenvalue_floor(torch.linalg.eigvalsh(middle)).sqrt().sum()


def frechet_distance(
    mu1: np.ndarray | torch.Tensor,
    sigma1: np.ndarray | torch.Tensor,
    mu2: np.ndarray | torch.Tensor,
    sigma2: np.ndarray | torch.Tensor,
) -> float:
    """Compute the squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    All arithmetic is float64 on the device of `mu1` (CPU for numpy input). The result
    agrees with the `scipy.linalg.sqrtm` formula to about 1e-8 relative on full-rank and
    rank-deficient covariances, and is clamped at 0 because rounding can push the
    distance between identical Gaussians slightly below zero.

    Args:
        mu1: (dim,) mean of the first set of features.
        sigma1: (dim, dim) covariance of the first set.
        mu2: (dim,) mean of the second set.
        sigma2: (dim, dim) covariance of the second set.

    Returns:
        The distance as a Python float (FID when the features are Inception pool3).

    Raises:
        ValueError: on mismatched shapes, non-finite values or a non-symmetric covariance.
    """
    device = mu1.device if isinstance(mu1, torch.Tensor) else torch.device("cpu")
    mean1 = _as_float64("mu1", mu1, device)
    mean2 = _as_float64("mu2", mu2, device)
    if mean1.ndim != 1 or mean1.shape != mean2.shape:
        raise ValueError(
            f"mu1 and mu2 must be vectors of the same length, got shapes {tuple(mean1.shape)} and {tuple(mean2.shape)}."
        )
    dim = mean1.shape[0]
    cov1 = _check_covariance("sigma1", _as_float64("sigma1", sigma1, device), dim)
    cov2 = _check_covariance("sigma2", _as_float64("sigma2", sigma2, device), dim)

    mean_term = (mean1 - mean2).square().sum()
    trace_term = cov1.trace() + cov2.trace() - 2.0 * trace_sqrt_product(cov1, cov2)
    return max(float(mean_term + trace_term), 0.0)


def mean_and_covariance(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Compute the mean and unbiased covariance of a feature matrix in float64.

    Args:
        features: (num_samples, dim) features, num_samples >= 2.

    Returns:
        `(mu, sigma)` as numpy float64 arrays of shapes (dim,) and (dim, dim), the same
        as `features.mean(0)` and `numpy.cov(features, rowvar=False)`.
    """
    array = np.asarray(torch.as_tensor(features).detach().cpu(), dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"features must have shape (num_samples >= 2, dim), got {array.shape}.")
    return array.mean(axis=0), np.cov(array, rowvar=False)
