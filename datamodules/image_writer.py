"""Write an ImageNet-style image folder as WebDataset shards.

Input layout: ``SRC/<class_name>/<image files>`` (sub-folders inside a class folder are
read too). Class ids are the positions of the class folder names in sorted order, and
the class names are stored in the index, under ``writer.classes``.

Each sample has the members ``png`` or ``jpg`` (an RGB image, ADM centre-cropped to
``image_size``) and ``cls`` (the class id as decimal text).

Command line (the ``unisep data images`` sub-command)::

    unisep data images ~/imagenet/train data/imagenet256/train --image-size 256 --workers 8
"""

from __future__ import annotations

import argparse
import io
import logging
import multiprocessing
import random
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from rich.progress import track

from unisep.datamodules.image_transforms import adm_center_crop
from unisep.datamodules.shards import ShardIndex, ShardSetWriter
from unisep.datamodules.writer_command import add_output_arguments, describe_skipped, run_writer, writer_main

logger = logging.getLogger(__name__)

WRITE_COMMAND = "unisep data images SRC OUT"
IMAGE_FORMATS = ("png", "jpg")

# Characters kept from file and folder names when building sample keys. Dots are
# excluded because webdataset splits a member name into key and extension at the first dot.
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class _ImageTask:
    """One source file to convert; picklable for the worker pool."""

    path: Path
    key: str
    label: int
    image_size: int
    image_format: str
    quality: int


@dataclass(frozen=True)
class _ImageResult:
    """The encoded image, or the reason the file was skipped."""

    task: _ImageTask
    data: bytes | None = None
    skip_reason: str | None = None
    detail: str | None = None


def readable_image_extensions() -> frozenset[str]:
    """Return the lower-case file extensions that the installed PIL can open, e.g. ``.jpeg``."""
    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def _safe_key_part(text: str) -> str:
    return _UNSAFE_KEY_CHARS.sub("_", text).strip("_") or "x"


def list_image_folder(src: Path) -> tuple[list[str], list[tuple[Path, int]], list[Path]]:
    """List the classes and files of an image folder in a fixed order.

    Args:
        src: Folder with one sub-folder per class.

    Returns:
        ``(classes, images, others)``: sorted class folder names; ``(path, class_id)``
        for each file with an image extension, sorted by class then relative path;
        files without an image extension.

    Raises:
        FileNotFoundError: ``src`` is not a folder.
        ValueError: ``src`` has no class sub-folders.
    """
    if not src.is_dir():
        raise FileNotFoundError(f"image folder {src} does not exist or is not a folder")
    classes = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(
            f"{src} has no class sub-folders; expected the ImageNet layout SRC/<class_name>/<image files>. "
            "For images without classes, put them in one sub-folder."
        )

    extensions = readable_image_extensions()
    images: list[tuple[Path, int]] = []
    others: list[Path] = []
    for class_id, name in enumerate(classes):
        class_folder = src / name
        files = sorted((p for p in class_folder.rglob("*") if p.is_file()), key=lambda p: p.relative_to(class_folder).as_posix())
        for path in files:
            if path.suffix.lower() in extensions:
                images.append((path, class_id))
            else:
                others.append(path)
    return classes, images, others


def _make_tasks(
    images: list[tuple[Path, int]], image_size: int, image_format: str, quality: int
) -> list[_ImageTask]:
    """Give each image a unique sample key ``c<class id>_<file stem>``."""
    used: set[str] = set()
    tasks = []
    for path, class_id in images:
        base = f"c{class_id}_{_safe_key_part(path.stem)}"
        key, suffix = base, 1
        while key in used:  # e.g. a.png and a.jpg in one class folder
            key, suffix = f"{base}_{suffix}", suffix + 1
        used.add(key)
        tasks.append(_ImageTask(path, key, class_id, image_size, image_format, quality))
    return tasks


def _encode_image(task: _ImageTask) -> _ImageResult:
    """Read, convert to RGB, crop and encode one image, or return why PIL could not read it."""
    try:
        with Image.open(task.path) as opened:
            opened.load()  # decode now, so a truncated file fails here and not later
            image = opened.convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        # PIL raises OSError for unidentified or truncated files, and SyntaxError or
        # EOFError from some format plugins for damaged chunks.
        return _ImageResult(task, skip_reason="unreadable image", detail=repr(error))

    image = adm_center_crop(image, task.image_size)
    buffer = io.BytesIO()
    if task.image_format == "png":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=task.quality)
    return _ImageResult(task, data=buffer.getvalue())


def _encoded_images(tasks: list[_ImageTask], num_workers: int) -> Iterator[_ImageResult]:
    """Yield results in task order, so the shards do not depend on the worker count."""
    if num_workers <= 0:
        yield from map(_encode_image, tasks)
        return
    with multiprocessing.get_context().Pool(num_workers) as pool:
        yield from pool.imap(_encode_image, tasks, chunksize=16)


def write_image_shards(
    src_folder: str | Path,
    out_folder: str | Path,
    *,
    image_size: int = 256,
    max_samples_per_shard: int = 1000,
    image_format: str = "png",
    quality: int = 95,
    overwrite: bool = False,
    progress: bool = True,
    shuffle_seed: int | None = 0,
    num_workers: int = 0,
    prefix: str | None = None,
) -> ShardIndex:
    """Convert an ImageNet-style folder into WebDataset shards with an index.

    Args:
        src_folder: ``src_folder/<class_name>/<image files>``.
        out_folder: Folder for ``<prefix>-000000.tar``, ... and ``index.json``.
        image_size: Side of the square images after the ADM centre crop, in pixels.
        max_samples_per_shard: Samples per tar file.
        image_format: ``"png"`` (lossless) or ``"jpg"``.
        quality: JPEG quality (1-100); ignored for PNG.
        overwrite: Replace an existing shard set in ``out_folder`` instead of raising.
        progress: Show a progress bar.
        shuffle_seed: Seed of the permutation applied to the sorted file list before
            writing. Each shard then mixes classes, so a shuffle buffer of a few
            thousand samples contains many classes. None writes in class order.
        num_workers: Processes that decode and encode images; 0 works in this process.
            The output is the same for any value.
        prefix: Shard file name prefix; defaults to the name of ``out_folder``.

    Returns:
        The index that was written to ``out_folder/index.json``.

    Raises:
        FileNotFoundError: ``src_folder`` does not exist.
        ValueError: A setting is invalid, the folder has no class sub-folders, or no
            image could be read.
        ShardSetExistsError: ``out_folder`` contains shards and ``overwrite`` is False.
    """
    image_format = "jpg" if image_format.lower() == "jpeg" else image_format.lower()
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in [1, 100], got {quality}")

    src = Path(src_folder)
    out = Path(out_folder)
    classes, images, others = list_image_folder(src)
    tasks = _make_tasks(images, image_size, image_format, quality)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(tasks)
    logger.info("Found %d image files in %d classes under %s", len(tasks), len(classes), src)

    settings = {
        "source": str(src.resolve()),
        "image_size": image_size,
        "image_format": image_format,
        "quality": quality if image_format == "jpg" else None,
        "mode": "RGB",
        "crop": "adm_center_crop",
        "shuffle_seed": shuffle_seed,
        "classes": classes,
    }
    with ShardSetWriter(
        out,
        modality="image",
        prefix=prefix or _safe_key_part(out.resolve().name),
        max_samples_per_shard=max_samples_per_shard,
        settings=settings,
        overwrite=overwrite,
    ) as writer:
        for path in others:
            writer.skip(str(path), "not an image file")
        results = _encoded_images(tasks, num_workers)
        for result in track(results, description="Writing shards", total=len(tasks), disable=not progress):
            if result.data is None:
                writer.skip(str(result.task.path), result.skip_reason or "unknown", result.detail)
                continue
            writer.write({"__key__": result.task.key, image_format: result.data, "cls": str(result.task.label)})
    assert writer.index is not None
    return writer.index


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``unisep data images`` options to ``parser`` and return it."""
    parser.add_argument("src", type=Path, help="image folder with one sub-folder per class (ImageNet layout)")
    parser.add_argument("out", type=Path, help="output folder for the tar shards and index.json")
    parser.add_argument("--image-size", type=int, default=256, help="side of the square output images in pixels (default: 256)")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per tar shard (default: 1000)")
    parser.add_argument("--format", choices=IMAGE_FORMATS, default="png", help="image encoding in the shards (default: png, lossless)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality 1-100, used with --format jpg (default: 95)")
    parser.add_argument("--workers", type=int, default=0, help="processes that decode and encode images; 0 runs in this process (default: 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample order shuffle before writing (default: 0)")
    parser.add_argument("--no-shuffle", action="store_true", help="write samples in class order instead of a seeded shuffle")
    parser.add_argument("--prefix", default=None, help="shard file name prefix (default: the output folder name)")
    add_output_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``unisep data images`` with parsed arguments; return the exit status."""

    def write() -> None:
        index = write_image_shards(
            args.src,
            args.out,
            image_size=args.image_size,
            max_samples_per_shard=args.shard_size,
            image_format=args.format,
            quality=args.quality,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            shuffle_seed=None if args.no_shuffle else args.seed,
            num_workers=args.workers,
            prefix=args.prefix,
        )
        skipped = describe_skipped(index.skipped, "files skipped")
        print(f"wrote {index.num_samples} images in {len(index.shards)} shards to {args.out} ({skipped})")

    return run_writer(write)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m unisep.datamodules.image_writer SRC OUT``."""
    return writer_main(argv, prog="unisep data images", doc=__doc__, add_arguments=add_arguments, run=run)


if __name__ == "__main__":
    sys.exit(main())
