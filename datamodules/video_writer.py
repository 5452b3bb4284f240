"""Write videos (MP4 files or `.npy` frame arrays) as WebDataset shards.

Each sample contains `npy`, the frames as uint8 (T, H, W, C) after an ADM centre crop
to `image_size`, and `actions.npy`, one int64 action per frame, when the source has them.
A long video can be cut into segments of a fixed length, one sample each.

Sources are MP4 (or any container PyAV decodes) and `.npy` arrays of frames, uint8
(T, H, W), (T, H, W, C) or float in [0, 1]. Actions of `clip.npy` or `clip.mp4` are read
from `clip.actions.npy` beside it, if present. An unreadable file or a video shorter
than `min_frames` is skipped, logged with its name and reason, and counted in the
index under `skipped`.

Command line (the `unisep data videos` sub-command)::

    unisep data videos ~/ucf101/train data/ucf64/train --image-size 64 --channels 3
"""

from __future__ import annotations

import argparse
import io
import logging
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image
from rich.progress import track

from unisep.datamodules.image_transforms import CHANNEL_MODES, adm_center_crop
from unisep.datamodules.shards import ShardIndex, ShardSetWriter
from unisep.datamodules.writer_command import add_output_arguments, describe_skipped, run_writer, writer_main

logger = logging.getLogger(__name__)

WRITE_COMMAND = "unisep data videos SRC OUT"
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm"})
ARRAY_EXTENSION = ".npy"
ACTIONS_SUFFIX = ".actions.npy"

_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


class UnreadableVideoError(ValueError):
    """A source file could not be decoded into frames."""


@dataclass(frozen=True)
class VideoSample:
    """One video ready to be written.

    Attributes:
        key: sample key (no dots).
        frames: uint8 (T, H, W, C).
        actions: int64 (T,), or None.
    """

    key: str
    frames: np.ndarray
    actions: np.ndarray | None = None


@dataclass(frozen=True)
class SkippedInput:
    """A source that was not written, with the reason the index counts.

    Attributes:
        name: file path or sample id, for the log.
        reason: category counted in the index, e.g. "unreadable video".
        detail: extra text for the log, e.g. the decoder's message.
    """

    name: str
    reason: str
    detail: str = ""


def resize_frames(frames: np.ndarray, image_size: int, channels: int) -> np.ndarray:
    """ADM centre-crop every frame to `image_size` and convert it to `channels`.

    Args:
        frames: uint8 (T, H, W) or (T, H, W, C) with C in {1, 3}.

    Returns:
        uint8 (T, image_size, image_size, channels).
    """
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3):
        raise ValueError(f"frames must be (T, H, W) or (T, H, W, C) with C in (1, 3), got shape {frames.shape}")
    out = np.empty((len(frames), image_size, image_size, channels), dtype=np.uint8)
    for index, frame in enumerate(frames):
        image = Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame)
        image = adm_center_crop(image.convert(CHANNEL_MODES[channels]), image_size)
        out[index] = np.asarray(image).reshape(image_size, image_size, channels)
    return out


def decode_video_file(path: Path, image_size: int, channels: int, max_frames: int | None = None) -> np.ndarray:
    """Decode a video file with PyAV into uint8 (T, image_size, image_size, channels).

    Raises:
        UnreadableVideoError: PyAV cannot open or decode the file, or it has no video frames.
    """
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UnreadableVideoError("the file has no video stream")
            for frame in container.decode(video=0):
                image = adm_center_crop(frame.to_image().convert(CHANNEL_MODES[channels]), image_size)
                frames.append(np.asarray(image).reshape(image_size, image_size, channels))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except (av.error.FFmpegError, OSError, ValueError) as error:
        if isinstance(error, UnreadableVideoError):
            raise
        raise UnreadableVideoError(f"PyAV failed to decode it: {error}") from error
    if not frames:
        raise UnreadableVideoError("no frames could be decoded")
    return np.stack(frames)


def load_frame_array(path: Path, image_size: int, channels: int) -> np.ndarray:
    """Load a `.npy` frame array and bring it to uint8 (T, image_size, image_size, channels).

    Float arrays are read as values in [0, 1].

    Raises:
        UnreadableVideoError: the file is not a readable array of frames.
    """
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UnreadableVideoError(f"numpy failed to load it: {error}") from error
    if np.issubdtype(array.dtype, np.floating):
        array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise UnreadableVideoError(f"frames must be uint8 or float in [0, 1], got dtype {array.dtype}")
    try:
        return resize_frames(array, image_size, channels)
    except ValueError as error:
        raise UnreadableVideoError(str(error)) from error


def list_video_sources(src: Path) -> list[Path]:
    """List video and `.npy` files under `src` (or `src` itself), sorted; action files excluded."""
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise FileNotFoundError(f"video source {src} does not exist")
    files = [
        path
        for path in src.rglob("*")
        if path.is_file()
        and not path.name.endswith(ACTIONS_SUFFIX)
        and (path.suffix.lower() in VIDEO_EXTENSIONS or path.suffix.lower() == ARRAY_EXTENSION)
    ]
    return sorted(files, key=lambda p: p.relative_to(src).as_posix())


def segment_video(sample: VideoSample, segment_length: int | None) -> Iterator[VideoSample]:
    """Cut a video into consecutive segments of `segment_length` frames (None: keep whole).

    A remainder shorter than a segment is dropped.
    """
    if segment_length is None or len(sample.frames) <= segment_length:
        yield sample
        return
    for number, start in enumerate(range(0, len(sample.frames) - segment_length + 1, segment_length)):
        end = start + segment_length
        actions = None if sample.actions is None else sample.actions[start:end]
        yield VideoSample(f"{sample.key}_s{number:04d}", sample.frames[start:end], actions)


def encode_npy(array: np.ndarray) -> bytes:
    """Serialise an array in `.npy` format."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_video_samples(
    samples: Iterable[VideoSample | SkippedInput],
    out_folder: str | Path,
    *,
    settings: dict[str, Any],
    min_frames: int = 2,
    max_samples_per_shard: int = 100,
    overwrite: bool = False,
) -> ShardIndex:
    """Write prepared videos as shards; shared by the command and the demo builders.

    Args:
        samples: videos in write order, and `SkippedInput` records of sources that
            could not be read, which are logged and counted in the index.
        out_folder: output folder of the tars and `index.json`.
        settings: writer settings stored in the index (image_size, channels, source).
        min_frames: videos with fewer frames are skipped as "too short".
        max_samples_per_shard: samples per tar.
        overwrite: replace an existing shard set.

    Returns:
        The index of the written set.
    """
    with ShardSetWriter(
        out_folder,
        modality="video",
        prefix=Path(out_folder).name or "videos",
        max_samples_per_shard=max_samples_per_shard,
        settings=dict(settings, min_frames=min_frames),
        overwrite=overwrite,
    ) as writer:
        for sample in samples:
            if isinstance(sample, SkippedInput):
                writer.skip(sample.name, sample.reason, sample.detail)
                continue
            if len(sample.frames) < min_frames:
                writer.skip(sample.key, "too short", f"{len(sample.frames)} frames < min_frames={min_frames}")
                continue
            member = {"__key__": sample.key, "npy": encode_npy(sample.frames)}
            if sample.actions is not None:
                member["actions.npy"] = encode_npy(sample.actions.astype(np.int64))
            writer.write(member)
    assert writer.index is not None
    return writer.index


def _read_source(path: Path, image_size: int, channels: int) -> VideoSample:
    if path.suffix.lower() == ARRAY_EXTENSION:
        frames = load_frame_array(path, image_size, channels)
    else:
        frames = decode_video_file(path, image_size, channels)
    actions_file = path.with_name(path.name[: -len(path.suffix)] + ACTIONS_SUFFIX)
    actions = None
    if actions_file.is_file():
        actions = np.load(actions_file, allow_pickle=False).astype(np.int64).reshape(-1)
        if len(actions) != len(frames):
            raise UnreadableVideoError(
                f"invalid {actions_file.name}: it contains {len(actions)} actions for {len(frames)} frames"
            )
    key = _UNSAFE_KEY_CHARS.sub("_", path.stem).strip("_") or "video"
    return VideoSample(key, frames, actions)


def write_video_shards(
    src: str | Path,
    out_folder: str | Path,
    *,
    image_size: int = 64,
    channels: int = 3,
    segment_length: int | None = None,
    min_frames: int = 2,
    max_samples_per_shard: int = 100,
    overwrite: bool = False,
    progress: bool = True,
) -> ShardIndex:
    """Decode every video under `src` and write it as shards in `out_folder`.

    Unreadable files are skipped with their name and reason; the index counts them.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if channels not in CHANNEL_MODES:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if segment_length is not None and segment_length < 1:
        raise ValueError(f"segment_length must be >= 1 or None, got {segment_length}")
    sources = list_video_sources(Path(src))
    if not sources:
        raise ValueError(f"no video ({', '.join(sorted(VIDEO_EXTENSIONS))}) or .npy files under {src}")
    used_keys: set[str] = set()

    def samples() -> Iterator[VideoSample | SkippedInput]:
        iterator = track(sources, description="Writing video shards") if progress else sources
        for path in iterator:
            try:
                sample = _read_source(path, image_size, channels)
            except UnreadableVideoError as error:
                yield SkippedInput(str(path), "unreadable video", str(error))
                continue
            key, suffix = sample.key, 1
            while key in used_keys:  # a.mp4 and a.npy, or equal names in sub-folders
                key, suffix = f"{sample.key}_{suffix}", suffix + 1
            used_keys.add(key)
            yield from segment_video(VideoSample(key, sample.frames, sample.actions), segment_length)

    settings = {
        "source": str(src),
        "image_size": image_size,
        "channels": channels,
        "segment_length": segment_length,
        "crop": "adm_center_crop",
    }
    return write_video_samples(
        samples(),
        out_folder,
        settings=settings,
        min_frames=min_frames,
        max_samples_per_shard=max_samples_per_shard,
        overwrite=overwrite,
    )


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `unisep data videos` options to `parser` and return it."""
    parser.add_argument("src", type=Path, help="a video or .npy file, or a folder searched recursively for them")
    parser.add_argument("out", type=Path, help="output folder for the tar shards and index.json")
    parser.add_argument("--image-size", type=int, default=64, help="side of the square output frames in pixels (default: 64)")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=3, help="1 for grayscale, 3 for RGB (default: 3)")
    parser.add_argument(
        "--segment-length", type=int, default=None, help="cut videos into samples of this many frames (default: whole videos)"
    )
    parser.add_argument("--min-frames", type=int, default=2, help="skip videos with fewer frames (default: 2)")
    parser.add_argument("--shard-size", type=int, default=100, help="samples per tar shard (default: 100)")
    add_output_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run `unisep data videos` with parsed arguments; return the exit status."""

    def write() -> None:
        index = write_video_shards(
            args.src,
            args.out,
            image_size=args.image_size,
            channels=args.channels,
            segment_length=args.segment_length,
            min_frames=args.min_frames,
            max_samples_per_shard=args.shard_size,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
        skipped = describe_skipped(index.skipped, "inputs skipped")
        print(f"wrote {index.num_samples} samples (videos or segments) in {len(index.shards)} shards to {args.out} ({skipped})")

    return run_writer(write)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: `python -m unisep.datamodules.video_writer SRC OUT`."""
    return writer_main(argv, prog="unisep data videos", doc=__doc__, add_arguments=add_arguments, run=run)


if __name__ == "__main__":
    sys.exit(main())
