"""Reference (real-data) FID statistics: computed once, cached, and invalidated on change.

A cache file is an `.npz` written by `unisep.metrics.feature_statistics.save_statistics`.
Its metadata stores the fields that decide whether the statistics still apply (the
extractor's SHA-256, the preprocessing, the data set's identity and the sampling
protocol of the real images) and a key derived from them. A later run with the same
fields reuses the file; any difference recomputes it and logs which fields changed.
Settings of the generated side (solver, steps, guidance) are not part of the key,
because one reference serves every generation protocol.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from unisep.metrics.feature_statistics import FeatureStatistics, load_statistics, save_statistics
from unisep.metrics.fid import FIDMetric

log = logging.getLogger(__name__)

CACHE_FORMAT = "unisep-fid-reference/1"


def cache_key(fields: dict[str, Any]) -> str:
    """Return the SHA-256 of the canonical JSON of `fields` (sorted keys, no whitespace)."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _flatten(fields: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(fields, dict):
        return {prefix: fields}
    flat: dict[str, Any] = {}
    for name, value in fields.items():
        flat.update(_flatten(value, f"{prefix}.{name}" if prefix else str(name)))
    return flat


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """List the fields that differ between two nested dicts, as `name: old -> new` lines."""
    old_flat, new_flat = _flatten(json.loads(json.dumps(old, default=str))), _flatten(json.loads(json.dumps(new, default=str)))
    return [
        f"{name}: {old_flat.get(name, '<absent>')!r} -> {new_flat.get(name, '<absent>')!r}"
        for name in sorted(old_flat.keys() | new_flat.keys())
        if old_flat.get(name) != new_flat.get(name)
    ]


def fingerprint_path(path: str | Path) -> dict[str, Any]:
    """Identify a data set on disk cheaply, so a rebuilt data set invalidates its cache.

    A folder with a shard `index.json` is identified by the index's SHA-256; any other
    folder or file by its absolute path and the count, total size and latest
    modification time of its files. Anything else (a shard brace pattern, a URL) is
    identified by the string alone.
    """
    resolved = Path(path).expanduser()
    if not resolved.exists():
        return {"path": str(path)}
    resolved = resolved.resolve()
    index = resolved / "index.json"
    if index.is_file():
        return {"path": str(resolved), "index_sha256": hashlib.sha256(index.read_bytes()).hexdigest()}
    files = [resolved] if resolved.is_file() else sorted(item for item in resolved.rglob("*") if item.is_file())
    stats = [item.stat() for item in files]
    return {
        "path": str(resolved),
        "num_files": len(files),
        "total_bytes": sum(stat.st_size for stat in stats),
        "latest_mtime_ns": max((stat.st_mtime_ns for stat in stats), default=0),
    }


def check_extractor_matches(statistics: FeatureStatistics, sha256: str, source: str | Path) -> None:
    """Raise if statistics record an extractor checksum other than `sha256`.

    ADM reference batches record none and pass unchecked: they come from the TensorFlow
    graph that the supported weight files reproduce.

    Raises:
        ValueError: naming both checksums and the file.
    """
    stored = statistics.metadata.get("key_fields", {}).get("extractor_sha256")
    if stored is not None and stored != sha256:
        raise ValueError(
            f"reference statistics {source} were computed with an extractor of sha256 {stored[:16]}..., but the current "
            f"one has {sha256[:16]}...; FID across extractors is not comparable, so recompute the statistics."
        )


def _agree_with_rank_zero(value: bool) -> bool:
    # Every rank must take the same branch (reuse or recompute), or the collective
    # reduction of a recomputation would wait forever for the ranks that skipped it.
    if not (dist.is_available() and dist.is_initialized()):
        return value
    decision = [value]
    dist.broadcast_object_list(decision, src=0)
    return bool(decision[0])


def _is_rank_zero() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def load_cached(path: str | Path, fields: dict[str, Any]) -> FeatureStatistics | None:
    """Return the cached statistics at `path` if their key matches `fields`, else None (logging why).

    Under torch.distributed every rank gets rank 0's decision, so all ranks either reuse
    the file or recompute together.
    """
    path = Path(path)
    key = cache_key(fields)
    cached: FeatureStatistics | None = None
    if _is_rank_zero():
        if not path.is_file():
            log.info("No cached FID reference statistics at %s; computing them.", path)
        else:
            try:
                candidate = load_statistics(path)
            except (ValueError, OSError) as error:
                log.warning("Cannot read cached FID reference statistics %s (%s); recomputing them.", path, error)
            else:
                if candidate.metadata.get("cache_key") == key:
                    cached = candidate
                else:
                    changes = describe_changes(candidate.metadata.get("key_fields", {}), fields)
                    log.info("Recomputing FID reference statistics %s because the settings changed: %s", path, "; ".join(changes) or "unknown")
    if not _agree_with_rank_zero(cached is not None):
        return None
    if cached is None:
        cached = load_statistics(path)
    log.info("Reusing FID reference statistics %s (%s samples, key %s).", path, cached.num_samples, key[:12])
    return cached


def store_cached(path: str | Path, statistics: FeatureStatistics, fields: dict[str, Any]) -> FeatureStatistics:
    """Attach `fields` and their key to the statistics' metadata and write them (rank 0 only).

    Returns:
        The statistics with the updated metadata.
    """
    statistics.metadata = {**statistics.metadata, "key_fields": fields, "cache_key": cache_key(fields), "format": CACHE_FORMAT}
    if _is_rank_zero():
        save_statistics(path, statistics)
        log.info("Saved FID reference statistics of %s samples to %s.", statistics.num_samples, path)
    return statistics


def cached_reference_statistics(
    path: str | Path,
    fields: dict[str, Any],
    compute: Callable[[], FeatureStatistics],
) -> FeatureStatistics:
    """Load the statistics cached at `path` if `fields` match, else call `compute` and cache its result.

    Args:
        path: the `.npz` cache file.
        fields: JSON-compatible settings that the statistics depend on.
        compute: returns fresh statistics; under DDP every rank calls it together.

    Returns:
        The reference statistics.
    """
    cached = load_cached(path, fields)
    if cached is not None:
        return cached
    return store_cached(path, compute(), fields)


def statistics_of_images(
    metric: FIDMetric,
    batches: Iterable[torch.Tensor],
    *,
    max_samples: int | None = None,
    progress: bool = False,
    description: str = "FID reference",
) -> FeatureStatistics:
    """Extract features of real image batches and return their statistics over all ranks.

    The metric's real side is reset first and left holding these images.

    Args:
        metric: FID metric whose extractor computes the features.
        batches: iterable of (batch, channels, height, width) images, uint8 in [0, 255] or
            float in [0, 1]; under DDP each rank passes its own part of the data.
        max_samples: stop after this many images on this rank; None reads everything.
        progress: show a progress bar.
        description: progress bar label.

    Returns:
        Statistics of the images of all ranks together.
    """
    metric.reset()
    seen = 0
    with tqdm(total=max_samples, desc=description, unit="img", disable=not progress) as bar:
        for images in batches:
            if max_samples is not None and seen >= max_samples:
                break
            if max_samples is not None:
                images = images[: max_samples - seen]
            metric.update(images.to(metric.device), real=True)
            seen += images.shape[0]
            bar.update(images.shape[0])
    return metric.real_statistics()
