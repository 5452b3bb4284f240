"""Demo image shards built from scikit-learn's handwritten digits.

``sklearn.datasets.load_digits`` ships 1,797 grayscale 8 x 8 digits (values 0..16,
10 classes) inside the package, so the demo recipes train on real data without a
download. The images are upsampled to ``image_size`` and stored as 1-channel PNG
shards in ``<root>/digits-<image_size>/{train,val}``.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from unisep.datamodules.demo_shards import ensure_demo_splits
from unisep.datamodules.shards import ShardSetWriter

logger = logging.getLogger(__name__)

DIGITS_TOTAL = 1797
DIGITS_VAL_SIZE = 300
DIGITS_SPLIT_SEED = 0
DIGITS_SHARD_SIZE = 250
DIGITS_CLASSES = tuple(str(digit) for digit in range(10))
# load_digits stores ink intensity as integers 0..16.
_DIGITS_MAX_VALUE = 16.0


def digits_to_uint8(images: np.ndarray, image_size: int) -> np.ndarray:
    """Upsample digits with bicubic interpolation and quantise them to uint8.

    Args:
        images: ``(n, 8, 8)`` float values in [0, 16].
        image_size: Output side in pixels, >= 8.

    Returns:
        ``(n, image_size, image_size)`` uint8, where 16 maps to 255. Bicubic overshoot
        is clipped to [0, 255].
    """
    out = np.empty((len(images), image_size, image_size), dtype=np.uint8)
    for i, image in enumerate(images):
        scaled = Image.fromarray((image * (255.0 / _DIGITS_MAX_VALUE)).astype(np.float32), mode="F")
        resized = np.asarray(scaled.resize((image_size, image_size), resample=Image.Resampling.BICUBIC))
        out[i] = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    return out


def _write_split(folder: Path, name: str, pixels: np.ndarray, labels: np.ndarray, indices: np.ndarray, image_size: int) -> None:
    settings = {
        "source": "sklearn.datasets.load_digits",
        "split": name,
        "image_size": image_size,
        "image_format": "png",
        "mode": "L",
        "resample": "bicubic",
        "val_size": DIGITS_VAL_SIZE,
        "split_seed": DIGITS_SPLIT_SEED,
        "classes": list(DIGITS_CLASSES),
    }
    with ShardSetWriter(
        folder / name, modality="image", prefix=name, max_samples_per_shard=DIGITS_SHARD_SIZE, settings=settings
    ) as writer:
        for i in indices:
            buffer = io.BytesIO()
            Image.fromarray(pixels[i], mode="L").save(buffer, format="PNG")
            # The key keeps the position in load_digits, so a sample can be traced back.
            writer.write({"__key__": f"digit_{i:04d}", "png": buffer.getvalue(), "cls": str(int(labels[i]))})


def ensure_digits_shards(root: str | os.PathLike[str] = "data", image_size: int = 16) -> dict[str, Path]:
    """Write the digits demo shards on first use and return their folders.

    The split is stratified and fixed: 1,497 training and 300 validation images,
    chosen with seed 0. Later calls find the finished shards and return at once.
    Concurrent calls (e.g. one per DDP rank) are safe because each writes into its own
    temporary folder and renames it into place. The first rename wins and the others
    delete their copy.

    Args:
        root: Parent folder; the shards go to ``root/digits-<image_size>/``.
        image_size: Side of the upsampled images in pixels, >= 8.

    Returns:
        ``{"train": folder, "val": folder}``, each holding tars and an ``index.json``.

    Raises:
        ValueError: ``image_size`` < 8.
        FileExistsError: ``root/digits-<image_size>`` exists but is not a complete
            shard set; delete it and call again.
    """
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8 (the digits are 8 x 8), got {image_size}")

    def write(staging: Path) -> None:
        digits = load_digits()
        labels = digits.target
        pixels = digits_to_uint8(digits.images, image_size)
        train_idx, val_idx = train_test_split(
            np.arange(len(labels)), test_size=DIGITS_VAL_SIZE, stratify=labels, random_state=DIGITS_SPLIT_SEED
        )
        _write_split(staging, "train", pixels, labels, np.sort(train_idx), image_size)
        _write_split(staging, "val", pixels, labels, np.sort(val_idx), image_size)

    return ensure_demo_splits(
        Path(root) / f"digits-{image_size}",
        write,
        num_samples={"train": DIGITS_TOTAL - DIGITS_VAL_SIZE, "val": DIGITS_VAL_SIZE},
        description=f"the digits demo shards ({image_size} px)",
        log=logger,
    )
