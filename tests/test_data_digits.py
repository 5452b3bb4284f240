"""Tests for the scikit-learn digits demo shards."""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import stat
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from unisep.datamodules import digits as digits_module
from unisep.datamodules.digits import digits_to_uint8, ensure_digits_shards
from unisep.datamodules.images import ImageDataModule
from unisep.datamodules.shards import read_shard_index


def _labels_and_sizes(folder: Path) -> tuple[Counter, set]:
    index = read_shard_index(folder)
    labels: Counter = Counter()
    sizes = set()
    for sample in wds.DataPipeline(wds.SimpleShardList(index.urls), wds.tarfile_to_samples()):
        labels[int(sample["cls"])] += 1
        image = Image.open(io.BytesIO(sample["png"]))
        sizes.add((image.mode, image.size))
    return labels, sizes


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    ensure_digits_shards(root, image_size=16)
    return root


def test_digits_counts_and_classes(digits_root):
    paths = ensure_digits_shards(digits_root, image_size=16)
    train_labels, train_sizes = _labels_and_sizes(paths["train"])
    val_labels, val_sizes = _labels_and_sizes(paths["val"])

    assert sum(train_labels.values()) == 1497
    assert sum(val_labels.values()) == 300
    assert read_shard_index(paths["train"]).num_samples + read_shard_index(paths["val"]).num_samples == 1797
    assert sorted(train_labels) == list(range(10))
    assert sorted(val_labels) == list(range(10))
    # Stratified: each digit has about 30 of the 300 validation images.
    assert all(29 <= n <= 31 for n in val_labels.values())
    assert train_sizes == val_sizes == {("L", (16, 16))}


def test_digits_reused_on_second_call(digits_root):
    paths = ensure_digits_shards(digits_root, image_size=16)
    index_file = paths["train"] / "index.json"
    before = index_file.stat().st_mtime_ns

    assert ensure_digits_shards(digits_root, image_size=16) == paths
    assert index_file.stat().st_mtime_ns == before
    assert [p.name for p in digits_root.iterdir()] == ["digits-16"]


def test_digits_folder_follows_umask(digits_root):
    umask = os.umask(0)
    os.umask(umask)
    mode = stat.S_IMODE((digits_root / "digits-16").stat().st_mode)

    # Not the 0700 of tempfile.mkdtemp, which would hide the shards from other users.
    assert mode == 0o777 & ~umask


def _ensure_in_subprocess(root: str) -> None:
    ensure_digits_shards(root, image_size=8)


def test_digits_concurrent_writers(tmp_path):
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_ensure_in_subprocess, args=(str(tmp_path),)) for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)

    assert [p.exitcode for p in processes] == [0, 0]
    # The loser of the rename race deletes its staging folder.
    assert [p.name for p in tmp_path.iterdir()] == ["digits-8"]
    assert read_shard_index(tmp_path / "digits-8" / "train").num_samples == 1497


def test_digits_incomplete_folder_raises(tmp_path):
    (tmp_path / "digits-16").mkdir()
    (tmp_path / "digits-16" / "stray.txt").write_text("x")

    with pytest.raises(FileExistsError, match="delete it"):
        ensure_digits_shards(tmp_path, image_size=16)


def test_digits_rejects_small_size(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        ensure_digits_shards(tmp_path, image_size=4)


def test_digits_to_uint8_scales_values():
    images = np.zeros((1, 8, 8))
    images[0, 2, 3] = 16.0
    images[0, 4, 4] = 8.0
    pixels = digits_to_uint8(images, 8)

    assert pixels.dtype == np.uint8
    assert pixels[0, 2, 3] == 255
    assert pixels[0, 4, 4] == 128  # 8 * 255 / 16 = 127.5, rounded half to even
    assert pixels[0, 0, 0] == 0


def test_datamodule_demo_digits(digits_root):
    module = ImageDataModule(demo="digits", demo_root=str(digits_root), image_size=16, channels=1, batch_size=32, num_workers=0)
    module.prepare_data()
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))

    assert module.num_classes == 10
    assert module.classes == [str(d) for d in range(10)]
    assert len(module.train_dataloader()) == 1497 // 32
    assert batch["image"].shape == (32, 1, 16, 16)
    assert sum(len(b["label"]) for b in module.val_dataloader()) == 300


def test_digits_lost_race_uses_winner(tmp_path, monkeypatch, caplog):
    # A nested call stands in for another process that finishes while the outer call is
    # about to write. The outer rename then fails, so the outer call must use its shards.
    real_split = digits_module.train_test_split
    nested_done = []

    def split_after_other_writer(*args, **kwargs):
        if not nested_done:
            nested_done.append(True)
            ensure_digits_shards(tmp_path, image_size=8)
        return real_split(*args, **kwargs)

    monkeypatch.setattr(digits_module, "train_test_split", split_after_other_writer)
    with caplog.at_level(logging.INFO, logger="unisep.datamodules.digits"):
        paths = ensure_digits_shards(tmp_path, image_size=8)
    winner_index = read_shard_index(paths["train"])

    assert nested_done == [True]
    assert [p.name for p in tmp_path.iterdir()] == ["digits-8"]
    assert winner_index.num_samples == 1497
    assert "Another process wrote" in caplog.text
