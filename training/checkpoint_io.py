"""Checkpoint writes that a killed process cannot leave half-done.

`AtomicCheckpointIO` streams the checkpoint into a temporary file in the target's own
folder, flushes and fsyncs it, and renames it over the target with `os.replace`, which
is atomic on POSIX file systems. It then fsyncs the folder so that the rename survives
a power loss. A process killed at any moment leaves the previous file or the new one
under the target name, never a truncated file.

Lightning 2.6's default `TorchCheckpointIO` serialises the checkpoint into memory,
writes it to a temporary file in the system temp folder and moves it to the target.
When that folder is on another file system, as usual on clusters, the move is a copy
into the target, which a kill can leave truncated; nothing is fsynced.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

logger = logging.getLogger(__name__)

TEMPORARY_MARKER = ".tmp-"


def temporary_path(path: Path) -> Path:
    """Return the hidden temporary name that this process writes ``path`` under."""
    return path.with_name(f".{path.name}{TEMPORARY_MARKER}{os.getpid()}")


def _fsync_folder(folder: Path) -> None:
    # Opening a directory read-only and fsyncing it persists the rename on Linux and
    # macOS; other platforms cannot open directories, and there the rename still holds.
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write ``obj`` with ``torch.save`` so that ``path`` always contains a complete file.

    Args:
        obj: Anything ``torch.save`` accepts.
        path: Local target path; its folder is created if missing.

    Raises:
        Whatever ``torch.save`` or the file system raises; the temporary file is
        removed first, and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A file left by an earlier process killed mid-write has another pid in its name.
    for stale in path.parent.glob(f".{path.name}{TEMPORARY_MARKER}*"):
        with contextlib.suppress(OSError):
            stale.unlink()

    temporary = temporary_path(path)
    try:
        with open(temporary, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        # BaseException: a KeyboardInterrupt or SystemExit mid-write also cleans up.
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _fsync_folder(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local writes go through `atomic_torch_save`.

    Remote paths (``s3://``, ``gs://``, ...) keep Lightning's fsspec write, whose object
    stores publish an object only once it is complete. Loading and removal are
    Lightning's. The unisep CLI installs this plugin unless the config names another
    `CheckpointIO`.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically (local paths) or through fsspec (remote ones).

        Raises:
            TypeError: ``storage_options`` is given; this plugin takes none.
        """
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        if not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, os.fspath(path))
