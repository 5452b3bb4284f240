"""Reference statistics files: round trips, ADM batches, and the cache's reuse and invalidation."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from unisep.metrics.feature_statistics import FeatureStatistics, load_statistics, save_statistics
from unisep.metrics.reference_stats import (
    cache_key,
    cached_reference_statistics,
    check_extractor_matches,
    describe_changes,
    fingerprint_path,
)


def make_statistics(seed: int = 0, dim: int = 6) -> FeatureStatistics:
    features = np.random.default_rng(seed).standard_normal((20, dim))
    return FeatureStatistics(features.mean(axis=0), np.cov(features, rowvar=False), 20, {"note": "test"})


FIELDS = {
    "format": "unisep-fid-reference/1",
    "extractor_sha256": "a" * 64,
    "preprocessing": {"resize": "tensorflow1-bilinear to 299x299"},
    "dataset": {"path": "/data/val"},
    "max_samples": None,
}


class CountingCompute:
    """Returns fixed statistics and counts how often the cache asked for them."""

    def __init__(self, seed: int = 0) -> None:
        self.calls = 0
        self.seed = seed

    def __call__(self) -> FeatureStatistics:
        self.calls += 1
        return make_statistics(self.seed)


def test_save_load_round_trip(tmp_path):
    statistics = make_statistics()

    loaded = load_statistics(save_statistics(tmp_path / "stats.npz", statistics))

    np.testing.assert_array_equal(loaded.mu, statistics.mu)
    np.testing.assert_array_equal(loaded.sigma, statistics.sigma)
    assert loaded.num_samples == 20
    assert loaded.metadata == {"note": "test"}
    assert not list(tmp_path.glob(".*.tmp"))


def test_loads_adm_reference_batch(tmp_path):
    # ADM's reference batches hold the images and spatial statistics beside mu and sigma.
    statistics = make_statistics()
    path = tmp_path / "VIRTUAL_imagenet256_labeled.npz"
    np.savez(path, arr_0=np.zeros((2, 4, 4, 3), np.uint8), mu=statistics.mu, sigma=statistics.sigma, mu_s=np.zeros(3), sigma_s=np.eye(3))

    loaded = load_statistics(path)

    np.testing.assert_array_equal(loaded.mu, statistics.mu)
    assert loaded.num_samples is None
    assert loaded.metadata["source"] == "adm-reference-batch"


def test_load_without_mu_lists_arrays(tmp_path):
    path = tmp_path / "images.npz"
    np.savez(path, images=np.zeros((2, 4, 4, 3), np.uint8))

    with pytest.raises(ValueError, match=r"no 'mu' and 'sigma' arrays \(found \['images'\]\)"):
        load_statistics(path)


def test_load_missing_file_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="--save-ref"):
        load_statistics(tmp_path / "absent.npz")


def test_cache_is_computed_once_then_reused(tmp_path, caplog):
    path = tmp_path / "ref.npz"
    compute = CountingCompute()

    first = cached_reference_statistics(path, FIELDS, compute)
    with caplog.at_level(logging.INFO, logger="unisep.metrics.reference_stats"):
        second = cached_reference_statistics(path, FIELDS, compute)

    assert compute.calls == 1
    np.testing.assert_array_equal(first.sigma, second.sigma)
    assert second.metadata["cache_key"] == cache_key(FIELDS)
    assert "Reusing FID reference statistics" in caplog.text


@pytest.mark.parametrize(
    ("changed", "reason"),
    [
        ({"extractor_sha256": "b" * 64}, "extractor_sha256"),
        ({"max_samples": 100}, "max_samples: None -> 100"),
        ({"preprocessing": {"resize": "torch-bilinear"}}, "preprocessing.resize"),
        ({"dataset": {"path": "/data/other"}}, "dataset.path"),
    ],
)
def test_cache_invalidated_by_changed_field(tmp_path, caplog, changed, reason):
    path = tmp_path / "ref.npz"
    compute = CountingCompute()
    cached_reference_statistics(path, FIELDS, compute)

    with caplog.at_level(logging.INFO, logger="unisep.metrics.reference_stats"):
        recomputed = cached_reference_statistics(path, {**FIELDS, **changed}, compute)

    assert compute.calls == 2
    assert recomputed.metadata["key_fields"] == {**FIELDS, **changed}
    assert "settings changed" in caplog.text
    assert reason in caplog.text


def test_cache_recomputes_unreadable_file(tmp_path):
    path = tmp_path / "ref.npz"
    path.write_bytes(b"not an npz")
    compute = CountingCompute()

    cached_reference_statistics(path, FIELDS, compute)

    assert compute.calls == 1
    assert load_statistics(path).metadata["cache_key"] == cache_key(FIELDS)


def test_extractor_mismatch_is_rejected(tmp_path):
    path = tmp_path / "ref.npz"
    statistics = cached_reference_statistics(path, FIELDS, CountingCompute())

    check_extractor_matches(statistics, "a" * 64, path)
    with pytest.raises(ValueError, match="not comparable"):
        check_extractor_matches(statistics, "c" * 64, path)


def test_fingerprint_follows_shard_index(tmp_path):
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"num_samples": 10}))
    before = fingerprint_path(tmp_path)

    index.write_text(json.dumps({"num_samples": 11}))

    assert fingerprint_path(tmp_path)["index_sha256"] != before["index_sha256"]


def test_fingerprint_of_image_folder_counts_files(tmp_path):
    (tmp_path / "a.png").write_bytes(b"12345")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.png").write_bytes(b"123")

    fingerprint = fingerprint_path(tmp_path)

    assert fingerprint["num_files"] == 2
    assert fingerprint["total_bytes"] == 8


def test_describe_changes_lists_nested_fields():
    changes = describe_changes({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 4})

    assert changes == ["a.c: 2 -> 3", "d: '<absent>' -> 4"]
