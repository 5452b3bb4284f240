"""FIDMetric: torchmetrics states, reference statistics, and agreement with a direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from unisep.metrics.feature_statistics import FeatureStatistics, statistics_from_sums
from unisep.metrics.fid import FIDMetric
from unisep.metrics.frechet import frechet_distance, mean_and_covariance
from unisep.metrics.inception import InceptionFeatureExtractor
from unisep.metrics.reference_stats import statistics_of_images


class PixelFeatures(nn.Module):
    """Small fixed feature map (average-pooled pixels through a random projection) for fast metric tests."""

    num_features = 12

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("projection", torch.randn(3 * 4 * 4, self.num_features, generator=generator))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.float() / 255.0 if images.dtype == torch.uint8 else images
        pooled = nn.functional.adaptive_avg_pool2d(pixels.expand(-1, 3, -1, -1), 4).flatten(1)
        return torch.relu(pooled @ self.projection)


def random_images(count: int, seed: int, low: int = 0, high: int = 256) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (count, 3, 8, 8), generator=generator, dtype=torch.uint8)


def test_statistics_from_sums_match_numpy():
    features = np.random.default_rng(0).standard_normal((30, 5))

    mu, sigma = statistics_from_sums(features.sum(axis=0), features.T @ features, 30)

    np.testing.assert_allclose(mu, features.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), atol=1e-12)


def test_metric_matches_direct_computation():
    module = PixelFeatures()
    real, fake = random_images(40, seed=0), random_images(30, seed=1, low=40)
    metric = FIDMetric(module)

    metric.update(real[:25], real=True)
    metric.update(real[25:], real=True)
    metric.update(fake, real=False)

    mu1, sigma1 = mean_and_covariance(module(real))
    mu2, sigma2 = mean_and_covariance(module(fake))
    assert float(metric.compute()) == pytest.approx(frechet_distance(mu1, sigma1, mu2, sigma2), rel=1e-9)
    assert metric.computed_num_samples == 30


def test_reference_replaces_real_images():
    module = PixelFeatures()
    real, fake = random_images(40, seed=0), random_images(30, seed=1, low=40)
    mu, sigma = mean_and_covariance(module(real))
    with_images, with_reference = FIDMetric(module), FIDMetric(module, reference=FeatureStatistics(mu, sigma, 40))

    with_images.update(real, real=True)
    with_images.update(fake, real=False)
    with_reference.update(fake, real=False)

    assert float(with_reference.compute()) == pytest.approx(float(with_images.compute()), rel=1e-9)


def test_reference_survives_reset():
    module = PixelFeatures()
    fake = random_images(10, seed=2)
    mu, sigma = mean_and_covariance(module(fake))
    metric = FIDMetric(module, reference=FeatureStatistics(mu, sigma, 10))

    metric.update(fake, real=False)
    metric.reset()
    metric.update(fake, real=False)

    assert float(metric.compute()) == pytest.approx(0.0, abs=1e-9)


def test_real_statistics_of_images():
    module = PixelFeatures()
    images = random_images(9, seed=3)
    metric = FIDMetric(module)

    statistics = statistics_of_images(metric, [images[:4], images[4:]], max_samples=7)

    mu, sigma = mean_and_covariance(module(images[:7]))
    assert statistics.num_samples == 7
    np.testing.assert_allclose(statistics.mu, mu, atol=1e-6)
    np.testing.assert_allclose(statistics.sigma, sigma, atol=1e-6)


def test_reference_dimension_mismatch_is_rejected():
    metric = FIDMetric(PixelFeatures())

    with pytest.raises(ValueError, match="dimension 5 but the extractor gives 12"):
        metric.set_reference(FeatureStatistics(np.zeros(5), np.eye(5), 10))


def test_single_sample_is_rejected():
    metric = FIDMetric(PixelFeatures())
    metric.update(random_images(3, seed=4), real=True)
    metric.update(random_images(1, seed=5), real=False)

    with pytest.raises(RuntimeError, match="at least 2 generated samples"):
        metric.compute()


def test_extractor_needs_num_features():
    with pytest.raises(TypeError, match="num_features"):
        FIDMetric(nn.Identity())


@pytest.mark.slow
def test_identical_real_images_give_zero_fid():
    from sklearn.datasets import load_digits

    torch.set_num_threads(2)
    digits = np.round(load_digits().images[:6] * 255.0 / 16.0).astype(np.uint8)
    images = torch.from_numpy(digits)[:, None]
    metric = FIDMetric(InceptionFeatureExtractor())

    metric.update(images, real=True)
    metric.update(images, real=False)

    # Six samples in 2048 dimensions: rank-5 covariances, the near-singular case.
    assert float(metric.compute()) == pytest.approx(0.0, abs=1e-6)
