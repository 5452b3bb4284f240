"""Exact resume (2k steps straight equals k + k), checkpoint discovery and the SLURM run folder."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from scale_helpers import preserved_global_rng, write_image_shards, write_video_shards
from unisep.callbacks.step_seeding import StepSeeding, batch_seed
from unisep.datamodules.images import ImageDataModule
from unisep.datamodules.videos import VideoDataModule
from unisep.lightning_modules import UNITE
from unisep.lightning_modules.scd import SCD
from unisep.networks import ImageModality
from unisep.networks.frame_tokenizer import PatchTokenizer
from unisep.training.checkpoint_io import AtomicCheckpointIO, atomic_torch_save
from unisep.training.resume import find_resume_checkpoint, is_complete_checkpoint, slurm_run_version

STEPS = 10  # 2k
RESUME_AT = 5  # k: batch 2 of the second 3-batch epoch, so the resume lands mid-epoch


@pytest.fixture(autouse=True)
def _restore_global_rng():
    with preserved_global_rng():
        yield


def _unite() -> UNITE:
    return UNITE(
        modality=ImageModality(image_size=16, patch_size=4, channels=1),
        preset="unite_tiny",
        preset_overrides={"depth": 2, "width": 64, "heads": 2, "class_token_start": 1},
        num_classes=10,
        denoising_passes=2,
        lr=2e-3,
        warmup_steps=2,
        ema_decay=0.9,
        ema_warmup=True,
    )


def _scd() -> SCD:
    return SCD(
        tokenizer=PatchTokenizer(image_size=16, channels=1, patch_size=8),
        preset="scd_tiny",
        lr=1e-3,
        warmup_steps=2,
        ema_decay=0.9,
    )


def _image_data(root: Path) -> ImageDataModule:
    return ImageDataModule(
        train_shards=str(root / "images"), image_size=16, channels=1, batch_size=4,
        batches_per_epoch=3, num_workers=1, shuffle_buffer=8,
    )


def _video_data(root: Path) -> VideoDataModule:
    return VideoDataModule(
        train_shards=str(root / "videos"), image_size=16, channels=1, clip_length=4, batch_size=2,
        batches_per_epoch=3, num_workers=1, shuffle_buffer=4,
    )


RECIPES = {"unite": (_unite, _image_data), "scd": (_scd, _video_data)}


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume_data")
    write_image_shards(root / "images", [12, 12, 5])
    write_video_shards(root / "videos", [4, 4, 2])
    return root


def _fit(recipe: str, root: Path, checkpoints: Path, seed: int, ckpt_path: Path | None = None):
    make_model, make_data = RECIPES[recipe]
    seed_everything(seed)
    model = make_model()
    trainer = Trainer(
        accelerator="cpu",
        max_steps=STEPS,
        deterministic=True,
        gradient_clip_val=1.0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        plugins=[AtomicCheckpointIO()],
        callbacks=[
            StepSeeding(seed=0),
            ModelCheckpoint(dirpath=checkpoints, every_n_train_steps=RESUME_AT, save_top_k=-1, filename="{step}"),
        ],
    )
    trainer.fit(model, datamodule=make_data(root), ckpt_path=ckpt_path)
    return model, trainer


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["unite", "scd"])
def test_resume_matches_straight_run_bit_for_bit(recipe, shard_root, tmp_path):
    straight, _ = _fit(recipe, shard_root, tmp_path / "straight", seed=0)
    checkpoint = tmp_path / "straight" / f"step={RESUME_AT}.ckpt"
    # Another global seed: the resumed run must not depend on the RNG state at start-up.
    resumed, trainer = _fit(recipe, shard_root, tmp_path / "resumed", seed=1234, ckpt_path=checkpoint)

    assert trainer.global_step == STEPS
    assert int(resumed.ema.num_updates) == int(straight.ema.num_updates) == STEPS
    assert trainer.datamodule.state_dict()["epoch"] == straight.trainer.datamodule.state_dict()["epoch"]
    straight_state, resumed_state = straight.state_dict(), resumed.state_dict()
    assert straight_state.keys() == resumed_state.keys()
    # Bit for bit: the same CPU kernels run on the same inputs in the same order.
    mismatched = [name for name, value in straight_state.items() if not torch.equal(value, resumed_state[name])]
    assert mismatched == []
    straight_optimizer = straight.trainer.optimizers[0].state_dict()
    resumed_optimizer = trainer.optimizers[0].state_dict()
    assert resumed_optimizer["param_groups"] == straight_optimizer["param_groups"]
    for index, moments in straight_optimizer["state"].items():
        for key, value in moments.items():
            assert torch.equal(value, resumed_optimizer["state"][index][key]), f"optimizer state {index}.{key}"


def test_batch_seed_differs_by_rank_and_batch():
    seeds = {batch_seed(0, rank, batch) for rank in range(4) for batch in range(100)}

    assert len(seeds) == 400
    assert batch_seed(0, 1, 2) == batch_seed(0, 1, 2)
    assert all(0 <= seed < 2**63 for seed in seeds)


def _save(path: Path, step: int) -> Path:
    atomic_torch_save({"global_step": step, "state_dict": {"w": torch.zeros(2)}}, path)
    return path


def test_find_resume_picks_highest_step(tmp_path):
    folder = tmp_path / "checkpoints"
    _save(folder / "step=20.ckpt", 20)
    time.sleep(0.01)
    _save(folder / "step=10.ckpt", 10)  # written later but older in training
    (folder / ".last.ckpt.tmp-123").write_bytes(b"partial")
    (folder / "empty.ckpt").write_bytes(b"")

    found = find_resume_checkpoint([folder])

    assert found is not None
    assert found.path == folder / "step=20.ckpt"
    assert found.global_step == 20
    assert found.candidates == 2


def test_find_resume_prefers_hpc_checkpoint_and_skips_corrupt(tmp_path, caplog):
    run = tmp_path / "run"
    _save(run / "checkpoints" / "last.ckpt", 30)
    _save(run / "hpc_ckpt_1.ckpt", 31)
    (run / "checkpoints" / "step=40.ckpt").write_bytes(b"not a checkpoint")

    found = find_resume_checkpoint([run / "checkpoints"], hpc_folders=[run])

    assert found is not None
    assert found.path == run / "hpc_ckpt_1.ckpt"
    assert "step=40.ckpt" in caplog.text


def test_find_resume_ignores_unfinished_sharded_folder(tmp_path):
    folder = tmp_path / "checkpoints"
    done, unfinished = folder / "step=1.ckpt", folder / "step=2.ckpt"
    for path in (done, unfinished):
        path.mkdir(parents=True)
        (path / "__0_0.distcp").write_bytes(b"shard")
    (done / ".metadata").write_bytes(b"meta")
    torch.save({"global_step": 1}, done / "meta.pt")
    torch.save({"global_step": 2}, unfinished / "meta.pt")  # no .metadata: killed mid-write

    assert is_complete_checkpoint(done)
    assert not is_complete_checkpoint(unfinished)
    assert find_resume_checkpoint([folder]).path == done


def test_find_resume_without_checkpoints(tmp_path):
    assert find_resume_checkpoint([tmp_path / "missing", tmp_path]) is None


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"SLURM_NTASKS": "8", "SLURM_JOB_NAME": "unite", "SLURM_JOB_ID": "123"}, "slurm-123"),
        ({"SLURM_NTASKS": "8", "SLURM_JOB_NAME": "u", "SLURM_JOB_ID": "9", "SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "3"}, "slurm-7_3"),
        ({"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "bash", "SLURM_JOB_ID": "123"}, None),
        ({"SLURM_JOB_ID": "123"}, None),
        ({}, None),
    ],
)
def test_slurm_run_version(environ, expected):
    assert slurm_run_version(environ) == expected


def test_slurm_run_version_reads_process_environment(monkeypatch):
    for name in [name for name in os.environ if name.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    monkeypatch.setenv("SLURM_JOB_ID", "555")

    assert slurm_run_version() == "slurm-555"
