"""`unisep eval fid` and its image readers: folders, `.npz` arrays, shards, checkpoints."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from unisep.datamodules.shards import ShardSetWriter
from unisep.metrics import fid_eval
from unisep.metrics.feature_statistics import FeatureStatistics, load_statistics, save_statistics
from unisep.metrics.image_sources import count_images, image_batches


def digits_rgb(count: int, offset: int = 0) -> np.ndarray:
    """Real digits as uint8 (count, 16, 16, 3)."""
    images = load_digits().images[offset : offset + count]
    resized = [np.asarray(Image.fromarray(np.round(image * 255 / 16).astype(np.uint8)).resize((16, 16), Image.BICUBIC)) for image in images]
    return np.repeat(np.stack(resized)[..., None], 3, axis=-1)


def write_folder(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{index:03d}.png")
    return folder


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    fid_eval.add_arguments(parser)
    return parser.parse_args([*argv, "--no-progress", "--device", "cpu"])


def test_folder_batches_group_sizes(tmp_path):
    write_folder(tmp_path / "a", digits_rgb(3))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a" / "z_small.png")

    batches = list(image_batches(tmp_path / "a", batch_size=2))

    assert [tuple(batch.shape) for batch in batches] == [(2, 3, 16, 16), (1, 3, 16, 16), (1, 3, 8, 8)]
    assert all(batch.dtype == torch.uint8 for batch in batches)
    assert count_images(tmp_path / "a") == 4


def test_npz_batches_stream_in_order(tmp_path):
    images = digits_rgb(5)
    np.savez_compressed(tmp_path / "samples.npz", images=images, labels=np.arange(5))

    batches = list(image_batches(tmp_path / "samples.npz", batch_size=2))

    restored = torch.cat(batches).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(restored, images)
    assert count_images(tmp_path / "samples.npz") == 5


def test_npz_with_wrong_dtype_is_rejected(tmp_path):
    np.savez(tmp_path / "floats.npz", images=np.zeros((2, 4, 4, 3), np.float32))

    with pytest.raises(ValueError, match="uint8 array of shape"):
        list(image_batches(tmp_path / "floats.npz"))


def test_shard_batches_read_images(tmp_path):
    images = digits_rgb(5)
    with ShardSetWriter(tmp_path / "shards", modality="image", prefix="x", max_samples_per_shard=2, settings={}) as writer:
        for index, image in enumerate(images):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            writer.write({"__key__": f"s{index}", "png": buffer.getvalue(), "cls": "0"})

    batches = list(image_batches(tmp_path / "shards", batch_size=4))

    np.testing.assert_array_equal(torch.cat(batches).permute(0, 2, 3, 1).numpy(), images)
    assert count_images(tmp_path / "shards") == 5


@pytest.mark.slow
def test_identical_images_score_zero(tmp_path):
    images = digits_rgb(6)
    reference_folder = write_folder(tmp_path / "real", images)
    np.savez(tmp_path / "samples.npz", images=images)
    saved = tmp_path / "real_stats.npz"

    fid_eval.run(parse("--images", str(tmp_path / "samples.npz"), "--ref-images", str(reference_folder), "--save-ref", str(saved), "--output", str(tmp_path / "report.json")))

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["fid"] == pytest.approx(0.0, abs=1e-6)
    assert report["num_samples"] == 6
    assert report["metric_name"] == "fid/images_n6"
    assert report["reference"]["num_samples"] == 6
    assert len(report["extractor"]["sha256"]) == 64
    assert load_statistics(saved).metadata["key_fields"]["dataset"]["num_files"] == 6

    before = saved.stat().st_mtime_ns
    fid_eval.run(parse("--ref-images", str(reference_folder), "--save-ref", str(saved), "--output", str(tmp_path / "again.json")))
    assert saved.stat().st_mtime_ns == before


def test_reference_from_other_extractor_is_rejected(tmp_path):
    images = digits_rgb(4)
    np.savez(tmp_path / "samples.npz", images=images)
    statistics = FeatureStatistics(np.zeros(2048), np.eye(2048), 10, {"key_fields": {"extractor_sha256": "0" * 64}})
    save_statistics(tmp_path / "stats.npz", statistics)

    with pytest.raises(ValueError, match="not comparable"):
        fid_eval.run(parse("--images", str(tmp_path / "samples.npz"), "--ref", str(tmp_path / "stats.npz")))


def test_nothing_to_score_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="nothing to score"):
        fid_eval.run(parse("--ref", str(tmp_path / "stats.npz")))
    with pytest.raises(ValueError, match="--save-ref needs --ref-images"):
        fid_eval.run(parse("--images", "x.npz", "--ref", "stats.npz", "--save-ref", "out.npz"))


@pytest.mark.slow
def test_checkpoint_guidance_sweep(tmp_path):
    from lightning import Trainer

    from unisep.lightning_modules.unite import UNITE
    from unisep.networks import ImageModality

    torch.manual_seed(0)
    model = UNITE(ImageModality(16, 4, 3), preset="unite_tiny", num_classes=10)
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "tiny.ckpt")
    reference_folder = write_folder(tmp_path / "real", digits_rgb(6))
    arguments = ["--ckpt", str(tmp_path / "tiny.ckpt"), "--ref-images", str(reference_folder), "--cache-dir", str(tmp_path / "cache")]

    fid_eval.run(parse(*arguments, "--num-samples", "4", "--solver", "euler", "--steps", "1", "--batch-size", "4",
                       "--sweep-guidance", "1.0", "2.0", "1.0", "--output", str(tmp_path / "report.json")))

    report = json.loads((tmp_path / "report.json").read_text())
    assert [point["guidance_scale"] for point in report["sweep"]] == [1.0, 2.0]
    assert report["best_guidance_scale"] in (1.0, 2.0)
    assert report["fid"] == min(point["fid"] for point in report["sweep"])
    assert report["protocol"]["guidance_scale"] == report["best_guidance_scale"]
    assert report["metric_name"] == f"fid/euler1_cfg{report['best_guidance_scale']:g}_n4"
    assert report["weights"] == "ema"
    assert len(list((tmp_path / "cache").glob("reference_real_*.npz"))) == 1
