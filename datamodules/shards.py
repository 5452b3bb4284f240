"""WebDataset shard sets: the index file, path resolution and the writer.

A shard set is a folder of WebDataset tar files named ``<prefix>-%06d.tar`` plus an
``index.json`` beside them::

    {"format": "unisep-shards/1", "modality": "image", "num_samples": 1797,
     "shards": [{"file": "digits-000000.tar", "num_samples": 250}, ...],
     "writer": {...settings...}, "skipped": {"unreadable image": 2}}

The index lets a data stream know its length and the writer's settings (class names,
image size) without opening every tar. Every modality (images, molecules, video) uses
these helpers, and each passes the command that writes its shards so that errors can
name it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import braceexpand
import webdataset as wds

logger = logging.getLogger(__name__)

SHARD_FORMAT = "unisep-shards/1"
INDEX_FILENAME = "index.json"
PARTIAL_SUFFIX = ".partial"

# Number of skipped inputs logged one by one before the writer only counts them.
_MAX_SKIP_WARNINGS = 20

# Scheme prefixes that webdataset opens itself (gopen), so they are not checked on disk.
_REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://", "ais://")


class ShardsNotFoundError(FileNotFoundError):
    """No usable shards at the path given to a data stream."""


class ShardSetExistsError(FileExistsError):
    """The output folder already contains a shard set and overwrite was not requested."""


@dataclass(frozen=True)
class ShardInfo:
    """One tar file of a shard set.

    Attributes:
        file: File name relative to the folder of ``index.json``.
        num_samples: Number of samples (keys) in the tar.
    """

    file: str
    num_samples: int


@dataclass(frozen=True)
class ShardIndex:
    """Contents of ``index.json``: sample counts and writer settings of a shard set.

    Attributes:
        modality: ``"image"``, ``"molecule"`` or ``"video"``.
        num_samples: Total samples over all shards.
        shards: Shards in write order.
        writer: Settings the writer ran with (image size, class names, ...).
        skipped: Count of inputs the writer skipped, per reason.
        folder: Folder that contains the index and the shards; None for an index built in
            memory that has not been written yet.
        format: Format tag, ``"unisep-shards/1"``.
    """

    modality: str
    num_samples: int
    shards: tuple[ShardInfo, ...]
    writer: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    folder: Path | None = None
    format: str = SHARD_FORMAT

    @property
    def urls(self) -> list[str]:
        """Paths of the shard files, in index order."""
        if self.folder is None:
            raise ValueError("this ShardIndex has no folder, so its shard paths are unknown")
        return [str(self.folder / shard.file) for shard in self.shards]

    def to_json(self) -> dict[str, Any]:
        """Convert to the JSON object stored in ``index.json`` (without the folder)."""
        return {
            "format": self.format,
            "modality": self.modality,
            "num_samples": self.num_samples,
            "shards": [{"file": s.file, "num_samples": s.num_samples} for s in self.shards],
            "writer": self.writer,
            "skipped": self.skipped,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], folder: Path | None = None) -> ShardIndex:
        """Build an index from the JSON object of ``index.json``, checking its fields.

        Raises:
            ValueError: The format tag is unknown, a field is missing, or the per-shard
                counts do not add up to ``num_samples``.
        """
        where = f" in {folder / INDEX_FILENAME}" if folder is not None else ""
        if data.get("format") != SHARD_FORMAT:
            raise ValueError(
                f"unknown shard index format {data.get('format')!r}{where}; "
                f"expected {SHARD_FORMAT!r}. Rewrite the shards with this version of unisep."
            )
        try:
            shards = tuple(ShardInfo(str(s["file"]), int(s["num_samples"])) for s in data["shards"])
            index = cls(
                modality=str(data["modality"]),
                num_samples=int(data["num_samples"]),
                shards=shards,
                writer=dict(data.get("writer", {})),
                skipped={str(k): int(v) for k, v in data.get("skipped", {}).items()},
                folder=folder,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"invalid shard index{where}: {error!r}") from error
        counted = sum(s.num_samples for s in shards)
        if counted != index.num_samples:
            raise ValueError(
                f"invalid shard index{where}: num_samples is {index.num_samples} "
                f"but the shards hold {counted} samples in total"
            )
        return index


def read_shard_index(path: str | os.PathLike[str]) -> ShardIndex:
    """Read and validate ``index.json``.

    Args:
        path: The shard folder or the ``index.json`` file itself.

    Raises:
        FileNotFoundError: There is no index at ``path``.
        ValueError: The index is not valid JSON or not a unisep shard index.
    """
    path = Path(path)
    index_file = path / INDEX_FILENAME if path.is_dir() else path
    text = index_file.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"invalid JSON in shard index {index_file}: {error}") from error
    return ShardIndex.from_json(data, folder=index_file.parent)


def _not_found(path: str, detail: str, write_command: str) -> ShardsNotFoundError:
    return ShardsNotFoundError(f"no shards found at {path!r}: {detail}. Write shards with `{write_command}`.")


def _is_remote(url: str) -> bool:
    return url.startswith(_REMOTE_PREFIXES)


def _index_for_files(files: list[Path]) -> ShardIndex | None:
    """Return the index restricted to ``files`` when one folder's index lists them all."""
    folders = {f.parent for f in files}
    if len(folders) != 1:
        return None
    folder = folders.pop()
    if not (folder / INDEX_FILENAME).is_file():
        return None
    index = read_shard_index(folder)
    by_name = {s.file: s for s in index.shards}
    if any(f.name not in by_name for f in files):
        return None
    shards = tuple(by_name[f.name] for f in files)
    return ShardIndex(
        modality=index.modality,
        num_samples=sum(s.num_samples for s in shards),
        shards=shards,
        writer=index.writer,
        skipped=index.skipped,
        folder=folder,
    )


def resolve_shards(
    path: str | os.PathLike[str],
    *,
    write_command: str = "unisep data images SRC OUT",
) -> tuple[list[str], ShardIndex | None]:
    """Turn a shard folder or pattern into shard URLs and, where known, their index.

    Args:
        path: One of
            - a folder with ``index.json``: the shards it lists, in order;
            - a brace or glob pattern (``data/train-{000000..000099}.tar``,
              ``data/train-*.tar``): the matching files, sorted. The index is returned
              only when the files all sit in one folder whose ``index.json`` lists them;
            - a remote URL or pattern (``pipe:``, ``http://``, ``s3://``, ...): passed
              to webdataset unchecked, without an index.
        write_command: The command that writes this kind of shards, quoted in errors.

    Returns:
        ``(urls, index)``: shard paths or URLs, and the index or None.

    Raises:
        ShardsNotFoundError: The path does not exist, the folder has no index or no
            shards, a shard listed in the index is missing, or the pattern matches
            nothing. The message names the path and ``write_command``.
    """
    text = os.fspath(path)

    if _is_remote(text):
        return list(braceexpand.braceexpand(text)), None

    folder = Path(text)
    if folder.is_dir():
        if not (folder / INDEX_FILENAME).is_file():
            tars = sorted(p.name for p in folder.glob("*.tar"))
            detail = f"the folder has no {INDEX_FILENAME}"
            if tars:
                detail += (
                    f" (it contains {len(tars)} tar files, perhaps from an unfinished write; "
                    f"pass a pattern such as '{folder}/*.tar' to read them without an index)"
                )
            else:
                detail += " and no tar files"
            raise _not_found(text, detail, write_command)
        index = read_shard_index(folder)
        if not index.shards:
            raise _not_found(text, f"{INDEX_FILENAME} lists no shards", write_command)
        missing = [url for url in index.urls if not Path(url).is_file()]
        if missing:
            raise _not_found(
                text, f"{len(missing)} shards listed in {INDEX_FILENAME} are missing, first {missing[0]}", write_command
            )
        return index.urls, index

    files: list[Path] = []
    for expanded in braceexpand.braceexpand(text):
        if glob.has_magic(expanded):
            files.extend(Path(p) for p in sorted(glob.glob(expanded)))
        elif Path(expanded).is_file():
            files.append(Path(expanded))
        else:
            detail = "the path does not exist" if expanded == text else f"{expanded!r} does not exist"
            raise _not_found(text, detail, write_command)
    files = [f for f in files if f.is_file()]
    if not files:
        raise _not_found(text, "the pattern matches no files", write_command)
    return [str(f) for f in files], _index_for_files(files)


class ShardSetWriter:
    """Write samples into numbered WebDataset tars and an ``index.json``.

    Samples are dicts with a ``"__key__"`` and one bytes (or str) value per member,
    e.g. ``{"__key__": "img_0001", "png": b"...", "cls": "3"}``. A new shard starts
    every ``max_samples_per_shard`` samples. Each tar is written under a
    ``.partial`` name and renamed when complete, and ``index.json`` is written last, so
    a crash leaves no half-written file under a final name and no index for an
    unfinished set. Tar member times are fixed at 0, so the same input gives
    byte-identical shards.

    Use as a context manager. On a clean exit it writes the index; when the block
    raises, it deletes the partial shard and writes no index.

    Example:
        >>> with ShardSetWriter("out/train", modality="image", prefix="train") as writer:
        ...     writer.write({"__key__": "a", "png": png_bytes, "cls": "0"})
        ...     writer.skip("notes.txt", "not an image file")
        >>> writer.index.num_samples
        1
    """

    def __init__(
        self,
        out_folder: str | os.PathLike[str],
        *,
        modality: str,
        prefix: str = "shard",
        max_samples_per_shard: int = 1000,
        settings: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        """Prepare the output folder.

        Args:
            out_folder: Folder for the tars and ``index.json``; created if missing.
            modality: Stored in the index (``"image"``, ``"molecule"``, ``"video"``).
            prefix: Shard file names are ``<prefix>-000000.tar``, ``<prefix>-000001.tar``, ...
            max_samples_per_shard: Samples per tar before the writer starts the next one.
            settings: JSON-serialisable writer settings stored in the index under "writer".
            overwrite: Delete an existing shard set in ``out_folder`` instead of raising.

        Raises:
            ValueError: ``max_samples_per_shard`` < 1 or ``prefix`` contains a path separator.
            ShardSetExistsError: ``out_folder`` contains an index.json or ``<prefix>-*.tar``
                files and ``overwrite`` is False.
        """
        if max_samples_per_shard < 1:
            raise ValueError(f"max_samples_per_shard must be >= 1, got {max_samples_per_shard}")
        if not prefix or "/" in prefix or os.sep in prefix:
            raise ValueError(f"prefix must be a plain file name prefix, got {prefix!r}")
        self.out_folder = Path(out_folder)
        self.modality = modality
        self.prefix = prefix
        self.max_samples_per_shard = max_samples_per_shard
        self.settings = dict(settings or {})
        self.settings.setdefault("max_samples_per_shard", max_samples_per_shard)
        self.index: ShardIndex | None = None

        self._shards: list[ShardInfo] = []
        self._skipped: Counter[str] = Counter()
        self._tar: wds.TarWriter | None = None
        self._file = None
        self._count_in_shard = 0
        self._closed = False

        self.out_folder.mkdir(parents=True, exist_ok=True)
        self._clear_existing(overwrite)

    def _existing_files(self) -> list[Path]:
        pattern = re.compile(rf"^{re.escape(self.prefix)}-\d{{6}}\.tar({re.escape(PARTIAL_SUFFIX)})?$")
        files = [p for p in self.out_folder.iterdir() if pattern.match(p.name)]
        index_file = self.out_folder / INDEX_FILENAME
        if index_file.exists():
            files.append(index_file)
        return sorted(files)

    def _clear_existing(self, overwrite: bool) -> None:
        existing = self._existing_files()
        if not existing:
            return
        if not overwrite:
            names = ", ".join(p.name for p in existing[:3]) + (", ..." if len(existing) > 3 else "")
            raise ShardSetExistsError(
                f"{self.out_folder} already contains shard files ({names}); "
                "pass overwrite=True (--overwrite on the command line) to replace them, "
                "or choose another output folder"
            )
        # The index goes first, so a crash during the clean-up never leaves an index
        # that describes deleted or new shards.
        for path in sorted(existing, key=lambda p: p.name != INDEX_FILENAME):
            path.unlink()
        logger.info("Deleted %d files of the previous shard set in %s", len(existing), self.out_folder)

    @property
    def num_samples(self) -> int:
        """Samples written so far, including the open shard."""
        return sum(s.num_samples for s in self._shards) + self._count_in_shard

    @property
    def skipped(self) -> dict[str, int]:
        """Skipped inputs so far, per reason."""
        return dict(self._skipped)

    def _shard_path(self, shard_number: int) -> Path:
        return self.out_folder / f"{self.prefix}-{shard_number:06d}.tar"

    def _open_shard(self) -> None:
        partial = self._shard_path(len(self._shards)).with_suffix(".tar" + PARTIAL_SUFFIX)
        self._file = open(partial, "wb")  # noqa: SIM115, closed in _finish_shard or abort
        # encoder=False: callers pass encoded bytes, so nothing is re-encoded here.
        self._tar = wds.TarWriter(self._file, encoder=False, mtime=0.0)
        self._count_in_shard = 0

    def _finish_shard(self) -> None:
        assert self._tar is not None and self._file is not None
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        final = self._shard_path(len(self._shards))
        os.replace(final.with_suffix(".tar" + PARTIAL_SUFFIX), final)
        self._shards.append(ShardInfo(final.name, self._count_in_shard))
        self._tar, self._file, self._count_in_shard = None, None, 0

    def write(self, sample: dict[str, Any]) -> None:
        """Append one sample, starting a new shard when the current one is full.

        Args:
            sample: ``"__key__"`` (str, no ``.`` so that webdataset can split it from
                the extension) and member values as bytes or str.

        Raises:
            ValueError: The key is missing or contains a dot, or the writer is closed.
        """
        if self._closed:
            raise ValueError("this ShardSetWriter is closed")
        key = sample.get("__key__")
        if not isinstance(key, str) or not key or "." in key:
            raise ValueError(f"sample key must be a non-empty str without '.', got {key!r}")
        if self._tar is None:
            self._open_shard()
        assert self._tar is not None
        # Text members (e.g. "cls") are stored as UTF-8; TarWriter(encoder=False) takes bytes only.
        encoded = {k: v.encode("utf-8") if isinstance(v, str) and k != "__key__" else v for k, v in sample.items()}
        self._tar.write(encoded)
        self._count_in_shard += 1
        if self._count_in_shard >= self.max_samples_per_shard:
            self._finish_shard()

    def skip(self, key: str, reason: str, detail: str | None = None) -> None:
        """Record an input that was not written.

        Args:
            key: Name of the input (file path or sample id), for the log.
            reason: Short category that the index counts, e.g. ``"unreadable image"``.
            detail: Extra text for the log only, e.g. the exception message.
        """
        self._skipped[reason] += 1
        total = sum(self._skipped.values())
        message = f"{key}: {reason}" + (f" ({detail})" if detail else "")
        if total <= _MAX_SKIP_WARNINGS:
            logger.warning("Skipped %s", message)
        else:
            if total == _MAX_SKIP_WARNINGS + 1:
                logger.warning("More than %d inputs skipped; further skips are logged at DEBUG level", _MAX_SKIP_WARNINGS)
            logger.debug("Skipped %s", message)

    def close(self) -> ShardIndex:
        """Finish the open shard, write ``index.json`` and return the index.

        Raises:
            ValueError: No sample was written; the message lists the skip reasons.
        """
        if self._closed:
            assert self.index is not None
            return self.index
        if self._tar is not None and self._count_in_shard > 0:
            self._finish_shard()
        self._closed = True
        if not self._shards:
            raise ValueError(
                f"no samples were written to {self.out_folder}, so no index was written "
                f"(skipped inputs per reason: {dict(self._skipped) or 'none'})"
            )

        index = ShardIndex(
            modality=self.modality,
            num_samples=sum(s.num_samples for s in self._shards),
            shards=tuple(self._shards),
            writer=self.settings,
            skipped=dict(sorted(self._skipped.items())),
            folder=self.out_folder,
        )
        index_file = self.out_folder / INDEX_FILENAME
        partial = index_file.with_name(INDEX_FILENAME + PARTIAL_SUFFIX)
        partial.write_text(json.dumps(index.to_json(), indent=2) + "\n", encoding="utf-8")
        os.replace(partial, index_file)
        self.index = index

        skipped_total = sum(self._skipped.values())
        logger.info(
            "Wrote %d samples in %d shards to %s (%d inputs skipped%s)",
            index.num_samples,
            len(index.shards),
            self.out_folder,
            skipped_total,
            f": {index.skipped}" if skipped_total else "",
        )
        return index

    def abort(self) -> None:
        """Delete the open partial shard and mark the writer closed without an index."""
        if self._tar is not None and self._file is not None:
            # Close the tar stream before its file; otherwise it flushes into a closed file
            # when garbage-collected. The partial file is deleted either way.
            with contextlib.suppress(OSError, ValueError):
                self._tar.close()
            self._file.close()
            self._shard_path(len(self._shards)).with_suffix(".tar" + PARTIAL_SUFFIX).unlink(missing_ok=True)
        self._tar, self._file = None, None
        self._closed = True

    def __enter__(self) -> ShardSetWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
