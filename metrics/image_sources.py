"""Read image sets for FID from disk as uint8 batches: folders, `.npz` arrays and shards.

Every reader yields (batch, 3, height, width) uint8 tensors in [0, 255]; grayscale and
palette images are converted to RGB the way PIL does, which repeats the gray channel.
Consecutive images of the same size share a batch, so a folder of mixed sizes works.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
SHARD_IMAGE_MEMBERS = ("png", "jpg", "jpeg", "webp")
NPZ_IMAGE_KEYS = ("images", "arr_0")  # unisep's samples.npz, and the ADM evaluator's sample batches


def _pil_to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _batched(images: Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    pending: list[torch.Tensor] = []
    for image in images:
        if pending and (len(pending) == batch_size or image.shape != pending[0].shape):
            yield torch.stack(pending)
            pending = []
        pending.append(image)
    if pending:
        yield torch.stack(pending)


def list_image_files(folder: str | Path) -> list[Path]:
    """Return the image files under `folder`, recursively, in sorted order.

    Raises:
        FileNotFoundError: if the folder is missing or contains no image file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist.")
    files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {folder}.")
    return files


def folder_batches(folder: str | Path, batch_size: int) -> Iterator[torch.Tensor]:
    """Yield the images of a folder (recursive, sorted) as uint8 batches."""

    def images() -> Iterator[torch.Tensor]:
        for path in list_image_files(folder):
            with Image.open(path) as image:
                yield _pil_to_tensor(image)

    return _batched(images(), batch_size)


class _NpzImageArray:
    """Streaming reader of the image array inside an `.npz` file.

    Reads the `.npy` header for the shape and then the data in chunks, so a 50,000-image
    sample file (about 10 GB at 256 x 256) never has to fit in memory at once.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"image array file {self.path} does not exist.")
        with zipfile.ZipFile(self.path) as archive:
            names = [name.removesuffix(".npy") for name in archive.namelist()]
        self.key = next((name for name in NPZ_IMAGE_KEYS if name in names), None)
        if self.key is None:
            raise ValueError(f"{self.path} has no image array; expected one of {NPZ_IMAGE_KEYS}, found {names}.")
        with self._open() as (shape, fortran_order, dtype, _):
            self.shape, self.dtype = shape, dtype
        if dtype != np.uint8 or len(shape) != 4 or shape[-1] not in (1, 3) or fortran_order:
            raise ValueError(
                f"{self.path}:{self.key} must be a C-ordered uint8 array of shape (N, H, W, 1 or 3), got {dtype} {shape}; "
                "save generated images rounded to uint8 in [0, 255]."
            )

    @contextlib.contextmanager
    def _open(self) -> Iterator[tuple[tuple[int, ...], bool, np.dtype, IO[bytes]]]:
        with zipfile.ZipFile(self.path) as archive, archive.open(f"{self.key}.npy") as stream:
            version = np.lib.format.read_magic(stream)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read_header(stream)
            yield shape, fortran_order, dtype, stream

    def __len__(self) -> int:
        return int(self.shape[0])

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Yield (batch, H, W, C) uint8 arrays in file order."""
        image_shape = self.shape[1:]
        image_bytes = int(np.prod(image_shape))
        with self._open() as (_, _, _, stream):
            for start in range(0, len(self), batch_size):
                count = min(batch_size, len(self) - start)
                data = stream.read(count * image_bytes)
                yield np.frombuffer(data, dtype=np.uint8).reshape(count, *image_shape)


def npz_batches(path: str | Path, batch_size: int) -> Iterator[torch.Tensor]:
    """Yield the images of an `.npz` file (key `images` or `arr_0`, uint8 (N, H, W, C)) as (batch, C, H, W) batches.

    Raises:
        ValueError: if the file has no such key or the array is not uint8 (N, H, W, 1 or 3).
    """
    array = _NpzImageArray(path)
    for batch in array.batches(batch_size):
        yield torch.from_numpy(batch.copy()).permute(0, 3, 1, 2).contiguous()


def shard_batches(path: str | Path, batch_size: int) -> Iterator[torch.Tensor]:
    """Yield the images of WebDataset image shards (a shard folder or pattern) as uint8 batches."""
    import webdataset as wds

    from unisep.datamodules.shards import resolve_shards

    urls, _ = resolve_shards(path)

    def images() -> Iterator[torch.Tensor]:
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil"):
            member = next((name for name in SHARD_IMAGE_MEMBERS if name in sample), None)
            if member is None:
                raise ValueError(f"shard sample {sample.get('__key__')} has no image member ({', '.join(SHARD_IMAGE_MEMBERS)}).")
            yield _pil_to_tensor(sample[member])

    return _batched(images(), batch_size)


def is_shard_source(path: str | Path) -> bool:
    """Tell whether `path` names WebDataset shards: a folder with `index.json` or `.tar` files, or a `.tar` pattern."""
    text = os.fspath(path)
    folder = Path(text)
    if folder.is_dir():
        return (folder / "index.json").is_file() or any(folder.glob("*.tar"))
    return ".tar" in text


def image_batches(source: str | Path, batch_size: int = 64) -> Iterator[torch.Tensor]:
    """Yield uint8 (batch, 3, H, W) batches from an `.npz` file, WebDataset shards or an image folder.

    Raises:
        FileNotFoundError: if the source does not exist.
    """
    path = Path(source)
    if path.suffix == ".npz":
        return npz_batches(path, batch_size)
    if is_shard_source(source):
        return shard_batches(source, batch_size)
    return folder_batches(path, batch_size)


def count_images(source: str | Path) -> int | None:
    """Return the number of images of a source when cheap to know (folders, `.npz`, indexed shards), else None."""
    path = Path(source)
    if path.suffix == ".npz":
        return len(_NpzImageArray(path))
    if is_shard_source(source):
        from unisep.datamodules.shards import resolve_shards

        _, index = resolve_shards(source)
        return None if index is None else int(index.num_samples)
    return len(list_image_files(path)) if path.is_dir() else None
