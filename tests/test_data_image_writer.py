"""Tests for write_image_shards and the `unisep data images` command line."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from unisep.datamodules.image_transforms import adm_center_crop
from unisep.datamodules.image_writer import add_arguments, main, write_image_shards
from unisep.datamodules.shards import ShardSetExistsError, read_shard_index

CLASSES = ["ant", "bee", "cat"]


def _make_folder(src: Path, per_class: int = 3, size: tuple[int, int] = (8, 8)) -> dict[str, np.ndarray]:
    """Write random RGB PNGs to src/<class>/img<i>.png; return pixels by expected sample key."""
    rng = np.random.default_rng(0)
    pixels_by_key = {}
    for class_id, name in enumerate(CLASSES):
        (src / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(src / name / f"img{i}.png")
            pixels_by_key[f"c{class_id}_img{i}"] = pixels
    return pixels_by_key


def _read_samples(folder: Path) -> list[dict]:
    index = read_shard_index(folder)
    return list(wds.DataPipeline(wds.SimpleShardList(index.urls), wds.tarfile_to_samples()))


def test_png_round_trip_is_pixel_exact(tmp_path):
    expected = _make_folder(tmp_path / "src")
    index = write_image_shards(tmp_path / "src", tmp_path / "out", image_size=8, max_samples_per_shard=4, progress=False)
    samples = _read_samples(tmp_path / "out")

    assert index.num_samples == 9
    assert sorted(s["__key__"] for s in samples) == sorted(expected)
    for sample in samples:
        decoded = np.asarray(Image.open(io.BytesIO(sample["png"])))
        np.testing.assert_array_equal(decoded, expected[sample["__key__"]])


def test_labels_follow_sorted_class_folders(tmp_path):
    _make_folder(tmp_path / "src")
    index = write_image_shards(tmp_path / "src", tmp_path / "out", image_size=8, progress=False)
    samples = _read_samples(tmp_path / "out")

    assert index.writer["classes"] == CLASSES
    for sample in samples:
        class_id = int(sample["cls"])
        assert sample["__key__"].startswith(f"c{class_id}_")


def test_images_are_adm_cropped(tmp_path):
    _make_folder(tmp_path / "src", per_class=1, size=(20, 12))
    write_image_shards(tmp_path / "src", tmp_path / "out", image_size=8, progress=False)
    sample = next(s for s in _read_samples(tmp_path / "out") if s["__key__"] == "c0_img0")

    source = Image.open(tmp_path / "src" / "ant" / "img0.png")
    expected = np.asarray(adm_center_crop(source.convert("RGB"), 8))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(sample["png"]))), expected)


def test_skips_non_image_and_truncated_files(tmp_path):
    _make_folder(tmp_path / "src")
    (tmp_path / "src" / "ant" / "README.txt").write_text("not an image")
    good = (tmp_path / "src" / "bee" / "img0.png").read_bytes()
    (tmp_path / "src" / "bee" / "half.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "src" / "cat" / "fake.jpg").write_bytes(b"definitely not a jpeg")

    index = write_image_shards(tmp_path / "src", tmp_path / "out", image_size=8, progress=False)

    assert index.num_samples == 9
    assert index.skipped == {"not an image file": 1, "unreadable image": 2}
    assert read_shard_index(tmp_path / "out").skipped == index.skipped


def test_output_independent_of_worker_count(tmp_path):
    _make_folder(tmp_path / "src", per_class=4)
    serial = write_image_shards(tmp_path / "src", tmp_path / "a", image_size=8, max_samples_per_shard=5, progress=False, prefix="s")
    parallel = write_image_shards(
        tmp_path / "src", tmp_path / "b", image_size=8, max_samples_per_shard=5, progress=False, prefix="s", num_workers=2
    )

    assert len(serial.urls) == len(parallel.urls) == 3
    for url_a, url_b in zip(serial.urls, parallel.urls, strict=True):
        assert Path(url_a).read_bytes() == Path(url_b).read_bytes()


def test_shuffle_mixes_classes_and_none_keeps_order(tmp_path):
    _make_folder(tmp_path / "src", per_class=4)
    write_image_shards(tmp_path / "src", tmp_path / "shuffled", image_size=8, progress=False)
    write_image_shards(tmp_path / "src", tmp_path / "ordered", image_size=8, progress=False, shuffle_seed=None)

    ordered = [s["__key__"] for s in _read_samples(tmp_path / "ordered")]
    shuffled = [s["__key__"] for s in _read_samples(tmp_path / "shuffled")]
    assert ordered == [f"c{c}_img{i}" for c in range(3) for i in range(4)]
    assert shuffled != ordered
    assert sorted(shuffled) == sorted(ordered)


def test_jpg_format(tmp_path):
    _make_folder(tmp_path / "src", per_class=1, size=(30, 20))
    index = write_image_shards(tmp_path / "src", tmp_path / "out", image_size=16, image_format="jpg", quality=90, progress=False)
    samples = _read_samples(tmp_path / "out")

    assert index.writer["image_format"] == "jpg"
    assert index.writer["quality"] == 90
    for sample in samples:
        assert "png" not in sample
        image = Image.open(io.BytesIO(sample["jpg"]))
        assert image.format == "JPEG"
        assert image.size == (16, 16)


def test_duplicate_stems_get_distinct_keys(tmp_path):
    (tmp_path / "src" / "only").mkdir(parents=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "src" / "only" / "a.png")
    Image.new("RGB", (8, 8), (4, 5, 6)).save(tmp_path / "src" / "only" / "a.jpg")
    index = write_image_shards(tmp_path / "src", tmp_path / "out", image_size=8, progress=False)

    assert index.num_samples == 2
    assert sorted(s["__key__"] for s in _read_samples(tmp_path / "out")) == ["c0_a", "c0_a_1"]


def test_refuses_to_overwrite(tmp_path):
    _make_folder(tmp_path / "src", per_class=1)
    write_image_shards(tmp_path / "src", tmp_path / "out", image_size=8, progress=False)

    with pytest.raises(ShardSetExistsError):
        write_image_shards(tmp_path / "src", tmp_path / "out", image_size=8, progress=False)
    index = write_image_shards(tmp_path / "src", tmp_path / "out", image_size=4, progress=False, overwrite=True)
    assert index.writer["image_size"] == 4


def test_bad_inputs_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        write_image_shards(tmp_path / "missing", tmp_path / "out", progress=False)
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match="class sub-folders"):
        write_image_shards(tmp_path / "flat", tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="image_format"):
        write_image_shards(tmp_path / "flat", tmp_path / "out", image_format="gif", progress=False)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="no samples"):
        write_image_shards(tmp_path / "empty", tmp_path / "out2", progress=False)


def test_command_line(tmp_path, capsys):
    _make_folder(tmp_path / "src", per_class=2)
    argv = [str(tmp_path / "src"), str(tmp_path / "out"), "--image-size", "8", "--shard-size", "4", "--no-progress"]

    assert main(argv) == 0
    index = read_shard_index(tmp_path / "out")
    assert index.num_samples == 6
    assert [s.num_samples for s in index.shards] == [4, 2]

    assert main(argv) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--format", "jpg"]) == 0
    assert read_shard_index(tmp_path / "out").writer["image_format"] == "jpg"


def test_add_arguments_defaults():
    import argparse

    args = add_arguments(argparse.ArgumentParser()).parse_args(["a", "b"])

    assert args.image_size == 256
    assert args.shard_size == 1000
    assert args.format == "png"
    assert args.overwrite is False


def test_summary_names_skip_reasons():
    from unisep.datamodules.writer_command import describe_skipped

    assert describe_skipped({}) == "0 skipped"
    summary = describe_skipped({"unreadable image": 1, "not an image file": 2}, "files skipped")
    assert summary == "3 files skipped: 2 not an image file, 1 unreadable image"
    assert describe_skipped({"b": 1, "a": 1}) == "2 skipped: 1 a, 1 b"
