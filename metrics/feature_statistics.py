"""Gaussian statistics of a feature set (mean, covariance, count) and their `.npz` files.

The file layout is the one of the ADM evaluator's reference batches (arrays `mu` and
`sigma`), extended with `num_samples` and a JSON `metadata` string, so one loader reads
both. ADM's files hold more arrays (the images themselves, spatial statistics); those
are ignored.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class FeatureStatistics:
    """Mean and covariance of a feature set.

    Attributes:
        mu: (dim,) float64 mean.
        sigma: (dim, dim) float64 unbiased covariance.
        num_samples: number of feature vectors, None when the file did not record it
            (ADM reference batches).
        metadata: JSON-compatible description: extractor, data set, preprocessing.
    """

    mu: np.ndarray
    sigma: np.ndarray
    num_samples: int | None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mu = np.asarray(self.mu, dtype=np.float64)
        self.sigma = np.asarray(self.sigma, dtype=np.float64)
        if self.mu.ndim != 1 or self.sigma.shape != (self.mu.shape[0], self.mu.shape[0]):
            raise ValueError(f"mu must have shape (dim,) and sigma (dim, dim), got {self.mu.shape} and {self.sigma.shape}.")

    @property
    def dim(self) -> int:
        """Feature dimension."""
        return int(self.mu.shape[0])


def statistics_from_sums(feature_sum: np.ndarray, outer_sum: np.ndarray, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Compute the mean and unbiased covariance from running sums.

    Args:
        feature_sum: (dim,) sum of the feature vectors.
        outer_sum: (dim, dim) sum of their outer products.
        num_samples: number of vectors, at least 2.

    Returns:
        `(mu, sigma)` in float64.
    """
    if num_samples < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {num_samples}.")
    mu = np.asarray(feature_sum, dtype=np.float64) / num_samples
    sigma = (np.asarray(outer_sum, dtype=np.float64) - num_samples * np.outer(mu, mu)) / (num_samples - 1)
    return mu, sigma


def save_statistics(path: str | Path, statistics: FeatureStatistics) -> Path:
    """Write statistics to an `.npz` file atomically (a temporary file, then a rename).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(
                stream,
                mu=statistics.mu,
                sigma=statistics.sigma,
                num_samples=np.int64(-1 if statistics.num_samples is None else statistics.num_samples),
                metadata=np.array(json.dumps(statistics.metadata, sort_keys=True)),
            )
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_statistics(path: str | Path) -> FeatureStatistics:
    """Read statistics written by `save_statistics` or an ADM evaluator reference batch.

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: if the file lacks `mu` or `sigma`, listing the arrays it has.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"FID reference statistics not found at {path}; compute them with "
            "`unisep eval fid --ref-images DIR_OR_SHARDS --save-ref {path}`."
        )
    with np.load(path, allow_pickle=False) as arrays:
        if "mu" not in arrays.files or "sigma" not in arrays.files:
            raise ValueError(f"{path} has no 'mu' and 'sigma' arrays (found {arrays.files}); it is not a FID statistics file.")
        num_samples = int(arrays["num_samples"]) if "num_samples" in arrays.files else -1
        if "metadata" in arrays.files:
            metadata = json.loads(str(arrays["metadata"]))
        else:
            metadata = {"source": "adm-reference-batch", "file": str(path)}
        return FeatureStatistics(
            mu=arrays["mu"],
            sigma=arrays["sigma"],
            num_samples=None if num_samples < 0 else num_samples,
            metadata=metadata,
        )
