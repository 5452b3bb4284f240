"""Tests for the shard index, shard path resolution and ShardSetWriter."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import webdataset as wds

from unisep.datamodules.shards import (
    INDEX_FILENAME,
    ShardIndex,
    ShardSetExistsError,
    ShardSetWriter,
    ShardsNotFoundError,
    read_shard_index,
    resolve_shards,
)

COMMAND = "unisep data images SRC OUT"


def _write_set(folder: Path, num_samples: int, per_shard: int, prefix: str = "part") -> ShardIndex:
    with ShardSetWriter(
        folder, modality="image", prefix=prefix, max_samples_per_shard=per_shard, settings={"note": "test"}
    ) as writer:
        for i in range(num_samples):
            writer.write({"__key__": f"s{i:03d}", "bin": bytes([i % 256]) * (i + 1), "cls": str(i % 3)})
    assert writer.index is not None
    return writer.index


def _read_all(urls: list[str]) -> list[dict]:
    pipeline = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())
    return list(pipeline)


def test_writer_round_trip(tmp_path):
    index = _write_set(tmp_path, num_samples=7, per_shard=3)
    samples = _read_all(index.urls)

    assert [s["__key__"] for s in samples] == [f"s{i:03d}" for i in range(7)]
    for i, sample in enumerate(samples):
        assert sample["bin"] == bytes([i]) * (i + 1)
        assert sample["cls"] == str(i % 3).encode()


def test_writer_rolls_over_shards(tmp_path):
    index = _write_set(tmp_path, num_samples=7, per_shard=3)

    assert [s.file for s in index.shards] == ["part-000000.tar", "part-000001.tar", "part-000002.tar"]
    assert [s.num_samples for s in index.shards] == [3, 3, 1]
    assert index.num_samples == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([INDEX_FILENAME] + [s.file for s in index.shards])


def test_writer_exact_multiple_has_no_empty_shard(tmp_path):
    index = _write_set(tmp_path, num_samples=6, per_shard=3)

    assert [s.num_samples for s in index.shards] == [3, 3]


def test_index_file_contents(tmp_path):
    _write_set(tmp_path, num_samples=4, per_shard=3)
    data = json.loads((tmp_path / INDEX_FILENAME).read_text())

    assert data["format"] == "unisep-shards/1"
    assert data["modality"] == "image"
    assert data["num_samples"] == 4
    assert data["shards"] == [
        {"file": "part-000000.tar", "num_samples": 3},
        {"file": "part-000001.tar", "num_samples": 1},
    ]
    assert data["writer"] == {"note": "test", "max_samples_per_shard": 3}
    assert data["skipped"] == {}


def test_writer_counts_skips_by_reason(tmp_path, caplog):
    with caplog.at_level(logging.WARNING), ShardSetWriter(tmp_path, modality="image") as writer:
        writer.write({"__key__": "a", "bin": b"x"})
        writer.skip("b.txt", "not an image file")
        writer.skip("c.txt", "not an image file")
        writer.skip("d.png", "unreadable image", "truncated")

    assert writer.index is not None
    assert writer.index.skipped == {"not an image file": 2, "unreadable image": 1}
    assert read_shard_index(tmp_path).skipped == {"not an image file": 2, "unreadable image": 1}
    assert "d.png: unreadable image (truncated)" in caplog.text


def test_writer_is_deterministic(tmp_path):
    first = _write_set(tmp_path / "a", num_samples=5, per_shard=2)
    second = _write_set(tmp_path / "b", num_samples=5, per_shard=2)

    for url_a, url_b in zip(first.urls, second.urls, strict=True):
        assert Path(url_a).read_bytes() == Path(url_b).read_bytes()


def test_writer_refuses_existing_set(tmp_path):
    _write_set(tmp_path, num_samples=2, per_shard=2)
    before = (tmp_path / "part-000000.tar").read_bytes()

    with pytest.raises(ShardSetExistsError, match="overwrite"):
        ShardSetWriter(tmp_path, modality="image", prefix="part")
    assert (tmp_path / "part-000000.tar").read_bytes() == before


def test_writer_refuses_leftover_shards_without_index(tmp_path):
    (tmp_path / "part-000000.tar").write_bytes(b"")

    with pytest.raises(ShardSetExistsError, match="part-000000.tar"):
        ShardSetWriter(tmp_path, modality="image", prefix="part")


def test_writer_overwrite_replaces_set(tmp_path):
    _write_set(tmp_path, num_samples=9, per_shard=3)
    index = None
    with ShardSetWriter(tmp_path, modality="image", prefix="part", max_samples_per_shard=3, overwrite=True) as writer:
        writer.write({"__key__": "only", "bin": b"1"})
    index = writer.index

    assert index is not None and index.num_samples == 1
    # Shards 1 and 2 of the old, larger set must be gone.
    assert sorted(p.name for p in tmp_path.iterdir()) == [INDEX_FILENAME, "part-000000.tar"]


def test_writer_error_leaves_no_partial_files(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), ShardSetWriter(
        tmp_path, modality="image", prefix="part", max_samples_per_shard=2
    ) as writer:
        for i in range(3):
            writer.write({"__key__": f"k{i}", "bin": b"x"})
        raise RuntimeError("boom")

    # The finished first shard stays, the open second one is deleted, and no index is written.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-000000.tar"]


def test_writer_without_samples_raises(tmp_path):
    with pytest.raises(ValueError, match="no samples"), ShardSetWriter(tmp_path, modality="image") as writer:
        writer.skip("a.txt", "not an image file")

    assert not (tmp_path / INDEX_FILENAME).exists()


@pytest.mark.parametrize("key", ["", "a.b", None])
def test_writer_rejects_bad_keys(tmp_path, key):
    with ShardSetWriter(tmp_path, modality="image") as writer:
        writer.write({"__key__": "ok", "bin": b"x"})
        with pytest.raises(ValueError, match="key"):
            writer.write({"__key__": key, "bin": b"x"})


def test_writer_rejects_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="max_samples_per_shard"):
        ShardSetWriter(tmp_path, modality="image", max_samples_per_shard=0)
    with pytest.raises(ValueError, match="prefix"):
        ShardSetWriter(tmp_path, modality="image", prefix="a/b")


def test_resolve_folder(tmp_path):
    written = _write_set(tmp_path, num_samples=5, per_shard=2)
    urls, index = resolve_shards(tmp_path, write_command=COMMAND)

    assert urls == written.urls
    assert index is not None
    assert index.num_samples == 5


def test_resolve_brace_pattern_with_index(tmp_path):
    _write_set(tmp_path, num_samples=5, per_shard=2)
    urls, index = resolve_shards(str(tmp_path / "part-{000000..000001}.tar"), write_command=COMMAND)

    assert [Path(u).name for u in urls] == ["part-000000.tar", "part-000001.tar"]
    assert index is not None
    assert index.num_samples == 4


def test_resolve_glob_pattern(tmp_path):
    _write_set(tmp_path, num_samples=5, per_shard=2)
    urls, index = resolve_shards(str(tmp_path / "*.tar"), write_command=COMMAND)

    assert [Path(u).name for u in urls] == ["part-000000.tar", "part-000001.tar", "part-000002.tar"]
    assert index is not None
    assert index.num_samples == 5


def test_resolve_pattern_without_index(tmp_path):
    _write_set(tmp_path, num_samples=3, per_shard=2)
    (tmp_path / INDEX_FILENAME).unlink()
    urls, index = resolve_shards(str(tmp_path / "part-*.tar"), write_command=COMMAND)

    assert len(urls) == 2
    assert index is None


def test_resolve_remote_url_passes_through():
    urls, index = resolve_shards("pipe:cat /data/a-{0..2}.tar", write_command=COMMAND)

    assert urls == ["pipe:cat /data/a-0.tar", "pipe:cat /data/a-1.tar", "pipe:cat /data/a-2.tar"]
    assert index is None


@pytest.mark.parametrize("case", ["missing", "empty folder", "tars without index", "no match", "listed shard missing"])
def test_resolve_errors_name_path_and_command(tmp_path, case):
    if case == "missing":
        path = tmp_path / "nowhere"
    elif case == "empty folder":
        path = tmp_path
    elif case == "tars without index":
        _write_set(tmp_path, num_samples=2, per_shard=1)
        (tmp_path / INDEX_FILENAME).unlink()
        path = tmp_path
    elif case == "no match":
        path = tmp_path / "train-*.tar"
    else:
        _write_set(tmp_path, num_samples=2, per_shard=1)
        (tmp_path / "part-000001.tar").unlink()
        path = tmp_path

    with pytest.raises(ShardsNotFoundError) as info:
        resolve_shards(path, write_command=COMMAND)
    assert str(path) in str(info.value)
    assert COMMAND in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_read_index_rejects_inconsistent_counts(tmp_path):
    _write_set(tmp_path, num_samples=3, per_shard=2)
    data = json.loads((tmp_path / INDEX_FILENAME).read_text())
    data["num_samples"] = 99
    (tmp_path / INDEX_FILENAME).write_text(json.dumps(data))

    with pytest.raises(ValueError, match="99"):
        read_shard_index(tmp_path)


def test_read_index_rejects_unknown_format(tmp_path):
    (tmp_path / INDEX_FILENAME).write_text(json.dumps({"format": "other/9"}))

    with pytest.raises(ValueError, match="other/9"):
        read_shard_index(tmp_path)
