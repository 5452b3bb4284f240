"""Generation protocol: names, labels, per-rank batches and seeds, and the guidance sweep."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from unisep.metrics.feature_statistics import FeatureStatistics
from unisep.metrics.fid import FIDMetric
from unisep.metrics.fid_protocol import (
    FIDProtocol,
    batch_seed,
    batches_for_rank,
    class_balanced_labels,
    generate_into_metric,
)
from unisep.metrics.guidance_sweep import best_point, guidance_scales, sweep_guidance


class PixelFeatures(nn.Module):
    """Average-pooled pixels through a fixed projection: a cheap stand-in for Inception features."""

    num_features = 8

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("projection", torch.randn(16, self.num_features, generator=torch.Generator().manual_seed(0)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.adaptive_avg_pool2d(images.float() / 255.0, 4).mean(dim=1).flatten(1)
        return pooled @ self.projection


@pytest.fixture(scope="module")
def unite():
    from unisep.lightning_modules.unite import UNITE
    from unisep.networks import ImageModality

    torch.manual_seed(0)
    return UNITE(ImageModality(16, 4, 1), preset="unite_tiny", num_classes=10)


def test_protocol_name_carries_settings():
    assert FIDProtocol(500, "heun", 50, guidance_scale=1.5).name == "heun50_cfg1.5_n500"
    assert FIDProtocol(50_000, "euler", 25).name == "euler25_cfg1_n50000"
    assert FIDProtocol(100, "dopri5").name == "dopri5_cfg1_n100"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"solver": "huen"}, "unknown solver 'huen'; choose one of euler, heun, dopri5"),
        ({"num_samples": 1}, "at least 2"),
        ({"steps": 0}, "must be positive"),
        ({"guidance_interval": (0.5, 0.2)}, "0 <= low <= high <= 1"),
        ({"guidance_scale": -1.0}, "non-negative"),
    ],
)
def test_protocol_rejects_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        FIDProtocol(**settings)


def test_protocol_dict_is_json_ready():
    settings = FIDProtocol(10, guidance_interval=(0, 1)).as_dict()

    assert settings["guidance_interval"] == [0.0, 1.0]
    assert settings["num_samples"] == 10


def test_labels_are_class_balanced():
    counts = torch.bincount(class_balanced_labels(1003, 10), minlength=10)

    assert counts.sum() == 1003
    assert counts.max() - counts.min() == 1


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_batches_partition_over_ranks(world_size):
    shares = [batches_for_rank(7, rank, world_size) for rank in range(world_size)]

    assert sorted(index for share in shares for index in share) == list(range(7))


def test_lockstep_pads_short_ranks():
    shares = [batches_for_rank(5, rank, 3, lockstep=True) for rank in range(3)]

    assert shares == [[0, 3], [1, 4], [2, None]]


def test_batch_seeds_deterministic_distinct():
    seeds = {batch_seed(0, index) for index in range(100)} | {batch_seed(1, index) for index in range(100)}

    assert batch_seed(0, 5) == batch_seed(0, 5)
    assert len(seeds) == 200
    assert all(0 <= seed < 2**63 for seed in seeds)


def _sharded_states(unite, protocol: FIDProtocol, world_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Run every rank's share in this process and sum the states, as the DDP reduction does."""
    feature_sum, outer_sum, count = 0, 0, 0
    for rank in range(world_size):
        metric = FIDMetric(PixelFeatures())
        added = generate_into_metric(unite, metric, protocol, num_classes=10, device=torch.device("cpu"), rank=rank, world_size=world_size)
        assert added == int(metric.fake_features_num_samples)
        feature_sum = feature_sum + metric.fake_features_sum
        outer_sum = outer_sum + metric.fake_features_cov_sum
        count += added
    return feature_sum, outer_sum, count


def test_samples_do_not_depend_on_world_size(unite):
    protocol = FIDProtocol(num_samples=7, solver="euler", steps=2, batch_size=3)

    single = _sharded_states(unite, protocol, world_size=1)
    sharded = _sharded_states(unite, protocol, world_size=2)

    assert single[2] == sharded[2] == 7
    torch.testing.assert_close(sharded[0], single[0], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(sharded[1], single[1], rtol=1e-6, atol=1e-9)


def test_generation_restores_training_mode(unite):
    metric = FIDMetric(PixelFeatures())
    unite.train()

    generate_into_metric(unite, metric, FIDProtocol(2, "euler", 1), num_classes=10, device=torch.device("cpu"))

    assert unite.training


def test_guidance_scales_include_both_ends():
    assert guidance_scales() == [round(1.0 + 0.2 * index, 6) for index in range(16)]
    assert guidance_scales(1.0, 2.0, 0.5) == [1.0, 1.5, 2.0]
    with pytest.raises(ValueError, match="step > 0"):
        guidance_scales(2.0, 1.0, 0.2)


def test_guidance_sweep_reports_every_scale(unite):
    metric = FIDMetric(PixelFeatures())
    protocol = FIDProtocol(num_samples=4, solver="euler", steps=2, batch_size=4)
    metric.update(torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8), real=True)
    metric.set_reference(metric.real_statistics())

    points = sweep_guidance(unite, metric, protocol, [1.0, 2.0], num_classes=10, device=torch.device("cpu"))

    assert [point.guidance_scale for point in points] == [1.0, 2.0]
    assert [point.metric_name for point in points] == ["fid/euler2_cfg1_n4", "fid/euler2_cfg2_n4"]
    assert all(np.isfinite(point.fid) for point in points)
    assert best_point(points).fid == min(point.fid for point in points)


def test_guidance_sweep_needs_reference(unite):
    metric = FIDMetric(PixelFeatures())

    with pytest.raises(ValueError, match="set_reference"):
        sweep_guidance(unite, metric, FIDProtocol(4), [1.0], num_classes=10, device=torch.device("cpu"))


def test_bad_generate_output_is_rejected():
    class WrongShape(nn.Module):
        def generate(self, labels, **options):
            return torch.zeros(labels.shape[0] + 1, 1, 8, 8)

    with pytest.raises(ValueError, match="returned shape"):
        generate_into_metric(WrongShape(), FIDMetric(PixelFeatures()), FIDProtocol(2), num_classes=10, device=torch.device("cpu"))


def test_protocol_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        FIDProtocol().steps = 3  # type: ignore[misc]


def test_reference_statistics_dimension():
    statistics = FeatureStatistics(np.zeros(3), np.eye(3), 5)

    assert statistics.dim == 3
