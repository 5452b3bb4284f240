"""FID as a torchmetrics metric, with fixed reference statistics and a float64 distance.

`FIDMetric` is `torchmetrics.image.fid.FrechetInceptionDistance` with three changes:

- real statistics can come from a file (`set_reference`) instead of real images;
- the distance is `unisep.metrics.frechet.frechet_distance` (symmetric eigenvalue
  method in float64) instead of torchmetrics' `eigvals(S1 @ S2)`, which is less accurate
  when the covariances are near singular;
- the synchronised statistics of either side can be read (`real_statistics`,
  `fake_statistics`), which is how reference statistics are computed across ranks.

Its states are feature sums, outer-product sums and counts, all reduced by summation, so
under DDP every rank contributes whatever number of samples it has (zero included) and
`compute()` gives the FID of the union. Every rank must call `compute()`, because the
reduction is a collective operation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from unisep.metrics.feature_statistics import FeatureStatistics, statistics_from_sums
from unisep.metrics.frechet import frechet_distance


class FIDMetric(FrechetInceptionDistance):
    """Fréchet Inception Distance between generated images and a reference set.

    `update(images, real=...)` takes uint8 images in [0, 255] or float in [0, 1] (the
    extractor checks them); convert model outputs in [-1, 1] with
    `unisep.metrics.fid_images.images_to_uint8` first.

    Args:
        extractor: feature module returning (batch, dim) features, with a
            `num_features` attribute, typically `InceptionFeatureExtractor`.
        reference: fixed statistics of the real set; None compares against the images
            passed with `real=True`.
        **kwargs: passed to `torchmetrics.Metric` (`sync_on_compute`, `process_group`, ...).
    """

    def __init__(self, extractor: nn.Module, reference: FeatureStatistics | None = None, **kwargs: Any) -> None:
        if not isinstance(getattr(extractor, "num_features", None), int):
            raise TypeError(f"extractor {type(extractor).__name__} needs an integer `num_features` attribute (the feature dimension).")
        super().__init__(feature=extractor, reset_real_features=True, normalize=False, **kwargs)
        self.reference: FeatureStatistics | None = None
        # Generated samples over all ranks in the last compute(); the states are local again afterwards.
        self.computed_num_samples: int | None = None
        if reference is not None:
            self.set_reference(reference)

    def set_reference(self, reference: FeatureStatistics | None) -> None:
        """Compare against fixed statistics from now on (None: against real images again)."""
        num_features = self.inception.num_features
        if reference is not None and reference.dim != num_features:
            raise ValueError(
                f"reference statistics have dimension {reference.dim} but the extractor gives {num_features} features; "
                "they were computed with another network."
            )
        self.reference = reference
        self._computed = None

    def _side_statistics(self, real: bool) -> FeatureStatistics:
        prefix = "real" if real else "fake"
        count = int(getattr(self, f"{prefix}_features_num_samples"))
        if count < 2:
            raise RuntimeError(
                f"FID needs at least 2 {'real' if real else 'generated'} samples across all ranks, got {count}; "
                "check that the image source is not empty, and raise the sample count."
            )
        mu, sigma = statistics_from_sums(
            getattr(self, f"{prefix}_features_sum").cpu().numpy(),
            getattr(self, f"{prefix}_features_cov_sum").cpu().numpy(),
            count,
        )
        return FeatureStatistics(mu=mu, sigma=sigma, num_samples=count)

    def _synced_statistics(self, real: bool) -> FeatureStatistics:
        # The statistics are read inside the sync context but an error is raised only after
        # it, so that a failure cannot leave the metric holding the summed states of all ranks.
        with self.sync_context(should_sync=self.sync_on_compute):
            try:
                return self._side_statistics(real)
            except RuntimeError as error:
                failure = error
        raise failure

    def real_statistics(self) -> FeatureStatistics:
        """Return the statistics of the `real=True` images of all ranks (a collective call under DDP)."""
        return self._synced_statistics(real=True)

    def fake_statistics(self) -> FeatureStatistics:
        """Return the statistics of the `real=False` images of all ranks (a collective call under DDP)."""
        return self._synced_statistics(real=False)

    def compute(self) -> torch.Tensor:
        """Compute FID; torchmetrics has already summed the states over ranks when this runs.

        Returns:
            0-d float64 tensor.
        """
        fake = self._side_statistics(real=False)
        self.computed_num_samples = fake.num_samples
        real = self.reference if self.reference is not None else self._side_statistics(real=True)
        return torch.tensor(frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma), dtype=torch.float64)
