"""Shared pieces of the scale-out tests: uneven shard sets, tiny run configs, a batch recorder.

The recorder is named by `class_path` in run configs (`scale_helpers.BatchRecorder`),
so `unisep fit` subprocesses get this folder on PYTHONPATH.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from lightning.pytorch import Callback
from PIL import Image

from unisep.datamodules.shards import INDEX_FILENAME, ShardIndex, ShardInfo, ShardSetWriter
from unisep.datamodules.video_writer import VideoSample, write_video_samples

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
UNISEP = Path(sys.executable).with_name("unisep")


# ---------------------------------------------------------------- shard sets


def _write_uneven(folder: Path, shard_sizes: list[int], write_part: Callable[[Path, range], ShardIndex]) -> Path:
    """Write one shard per entry of ``shard_sizes`` and index them together in ``folder``.

    ``write_part(part_folder, sample_ids)`` writes the samples of one shard as a one-shard
    set; its tar is then moved into ``folder``.
    """
    folder.mkdir(parents=True)
    shards, total, settings, modality = [], 0, {}, ""
    for number, size in enumerate(shard_sizes):
        part = folder / f"part{number}"
        part_index = write_part(part, range(total, total + size))
        (tar,) = part_index.shards
        name = f"{folder.name}-{number:06d}.tar"
        (part / tar.file).rename(folder / name)
        shutil.rmtree(part)
        shards.append(ShardInfo(name, tar.num_samples))
        total += size
        settings, modality = part_index.writer, part_index.modality
    index = ShardIndex(modality=modality, num_samples=total, shards=tuple(shards), writer=settings, skipped={}, folder=folder)
    (folder / INDEX_FILENAME).write_text(json.dumps(index.to_json()))
    return folder


def write_image_shards(folder: Path, shard_sizes: list[int], size: int = 16) -> Path:
    """Write unique grayscale noise images (labels 0-9), one shard per entry of ``shard_sizes``."""

    def write_part(part: Path, ids: range) -> ShardIndex:
        settings = {"image_size": size, "classes": [str(c) for c in range(10)]}
        with ShardSetWriter(part, modality="image", prefix="part", max_samples_per_shard=len(ids), settings=settings) as writer:
            for sample_id in ids:
                pixels = np.random.default_rng(sample_id).integers(0, 256, size=(size, size), dtype=np.uint8)
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="PNG")
                writer.write({"__key__": f"img{sample_id:05d}", "png": buffer.getvalue(), "cls": str(sample_id % 10)})
        assert writer.index is not None
        return writer.index

    return _write_uneven(folder, shard_sizes, write_part)


def write_video_shards(folder: Path, shard_sizes: list[int], size: int = 16, frames: int = 6) -> Path:
    """Write random grayscale videos, one shard per entry of ``shard_sizes``."""

    def write_part(part: Path, ids: range) -> ShardIndex:
        samples = [
            VideoSample(f"video{i:05d}", np.random.default_rng(i).integers(0, 256, size=(frames, size, size, 1), dtype=np.uint8))
            for i in ids
        ]
        settings = {"image_size": size, "channels": 1}
        return write_video_samples(iter(samples), part, settings=settings, max_samples_per_shard=len(ids))

    return _write_uneven(folder, shard_sizes, write_part)


# ---------------------------------------------------------------- recorder


def sample_ids(batch: dict[str, Any]) -> list[str]:
    """Identify the samples of a batch: video keys, or a hash of each image."""
    if "key" in batch:
        return [key.split("@")[0] for key in batch["key"]]
    images = ((batch["image"].detach().cpu() + 1) * 127.5).round().to(torch.uint8)
    return [hashlib.sha1(image.numpy().tobytes()).hexdigest()[:16] for image in images]


class BatchRecorder(Callback):
    """Write per rank the samples of every training and validation batch to ``out_dir/rank<r>.json``.

    ``out_dir/progress-rank<r>`` contains the global step of the newest training batch, for
    tests that wait for a run to reach a step.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.train: list[dict[str, Any]] = []
        self.val: list[list[str]] = []
        self.start_step = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.start_step = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.train.append({"step": trainer.global_step, "epoch": trainer.current_epoch, "samples": sample_ids(batch)})
        (self.out_dir / f"progress-rank{trainer.global_rank}").write_text(str(trainer.global_step))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self.val.append(sample_ids(batch))

    def on_train_end(self, trainer, pl_module) -> None:
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "start_step": self.start_step,
            "end_step": trainer.global_step,
            "train": self.train,
            "val": self.val,
        }
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def read_records(out_dir: Path, world_size: int) -> list[dict[str, Any]]:
    return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(world_size)]


@contextlib.contextmanager
def preserved_global_rng() -> Iterator[None]:
    """Restore the torch, numpy and `random` global generators on exit.

    Training with `StepSeeding` or `seed_everything` reseeds them, which would change
    what later tests in the same process draw.
    """
    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng():
        yield
    np.random.set_state(numpy_state)
    random.setstate(python_state)


# ---------------------------------------------------------------- configs and runs


def _base_trainer(tmp_path: Path, name: str, record_dir: Path) -> dict[str, Any]:
    return {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": 6,
        "gradient_clip_val": 3.0,
        "log_every_n_steps": 2,
        "check_val_every_n_epoch": 1,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(tmp_path / "runs"), "name": name},
        },
        "callbacks": [
            {"class_path": "unisep.callbacks.torch_threads.TorchThreads", "init_args": {"num_threads": 1}},
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True, "every_n_train_steps": 2}},
            {"class_path": "scale_helpers.BatchRecorder", "init_args": {"out_dir": str(record_dir)}},
        ],
    }


def unite_config(tmp_path: Path, train: Path, val: Path, record_dir: Path, name: str = "unite") -> dict[str, Any]:
    """A 16 x 16 grayscale UNITE run small enough for a few CPU steps per second."""
    demo = yaml.safe_load((REPO / "configs/demo/unite_digits.yaml").read_text())
    model = demo["model"]
    model["init_args"].update(
        preset="unite_tiny",
        preset_overrides={"depth": 2, "width": 64, "heads": 2, "class_token_start": 1, "decoder": {"width": 64, "depth": 1, "heads": 2}},
        denoising_passes=2,
        flow_weight_warmup_steps=0,
        warmup_steps=2,
        sample_steps=2,
    )
    return {
        "seed_everything": 0,
        "trainer": _base_trainer(tmp_path, name, record_dir),
        "model": model,
        "data": {
            "class_path": "unisep.datamodules.ImageDataModule",
            "init_args": {
                "train_shards": str(train),
                "val_shards": str(val),
                "image_size": 16,
                "channels": 1,
                "batch_size": 4,
                "batches_per_epoch": 3,
                "num_workers": 0,
                "val_num_workers": 0,
                "shuffle_buffer": 8,
            },
        },
    }


def scd_config(tmp_path: Path, train: Path, val: Path, record_dir: Path, name: str = "scd") -> dict[str, Any]:
    """A 16 x 16 grayscale SCD run on 4-frame clips."""
    demo = yaml.safe_load((REPO / "configs/demo/scd_digits.yaml").read_text())
    model = demo["model"]
    model["init_args"]["tokenizer"]["init_args"].update(image_size=16, patch_size=8)
    model["init_args"].update(preset="scd_tiny", warmup_steps=2, sample_steps=2)
    return {
        "seed_everything": 0,
        "trainer": _base_trainer(tmp_path, name, record_dir),
        "model": model,
        "data": {
            "class_path": "unisep.datamodules.videos.VideoDataModule",
            "init_args": {
                "train_shards": str(train),
                "val_shards": str(val),
                "image_size": 16,
                "channels": 1,
                "clip_length": 4,
                "batch_size": 2,
                "batches_per_epoch": 3,
                "num_workers": 0,
                "val_num_workers": 0,
                "shuffle_buffer": 4,
            },
        },
    }


def write_config(config: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for `unisep` subprocesses: this folder importable, one thread per process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"))}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def run_unisep(args: list[str], cwd: Path, timeout: float, **env: str) -> subprocess.CompletedProcess:
    """Run `unisep ARGS` to completion and return the result (stdout and stderr combined)."""
    return subprocess.run(
        [str(UNISEP), *args],
        cwd=cwd,
        env=subprocess_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
