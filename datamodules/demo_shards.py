"""Demo shard sets written once, on first use, safely under concurrent callers.

A demo set is a folder with one shard set per split (``train/``, ``val/``). It is
written into a temporary folder beside its final place and renamed into place, so
concurrent calls (one per DDP rank) are safe and an interrupted build leaves no
half-written set. The first rename wins and the other callers delete their copy.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from unisep.datamodules.shards import read_shard_index

logger = logging.getLogger(__name__)


def splits_are_complete(folder: Path, num_samples: Mapping[str, int | None]) -> bool:
    """Return True when every split of ``folder`` has an index and all its shard files.

    Args:
        folder: Folder with one shard set per split.
        num_samples: Expected samples per split name, or None where any count is accepted.
    """
    try:
        indexes = {split: read_shard_index(folder / split) for split in num_samples}
    except (FileNotFoundError, ValueError):
        return False
    return all(
        num_samples[split] in (None, index.num_samples) and all(Path(url).is_file() for url in index.urls)
        for split, index in indexes.items()
    )


def ensure_demo_splits(
    folder: Path,
    write: Callable[[Path], None],
    *,
    num_samples: Mapping[str, int | None],
    description: str,
    log: logging.Logger = logger,
) -> dict[str, Path]:
    """Write a demo set with ``write(staging)`` unless ``folder`` already contains it.

    Args:
        folder: Final folder of the set; its parent is created if missing.
        write: Writes every split, as ``staging / <split>``, into the folder it is given.
        num_samples: Expected samples per split (None: any count), for the completeness check.
        description: What the set is, for the log, e.g. ``"the digits demo shards (16 px)"``.
        log: Logger that records the outcome, so that the records name the demo's module.

    Returns:
        ``{split: folder / split}`` for every split in ``num_samples``.

    Raises:
        FileExistsError: ``folder`` exists but does not hold the complete set; delete it.
    """
    paths = {split: folder / split for split in num_samples}
    if splits_are_complete(folder, num_samples):
        return paths
    if folder.exists():
        raise FileExistsError(f"{folder} exists but does not hold a complete shard set; delete it and run again")

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    # mkdtemp creates the folder with mode 0700; give the final folder the usual
    # permissions so that other users of a shared data folder can read it.
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    try:
        write(staging)
        try:
            # rename() of a folder is atomic and fails when the target is a non-empty folder.
            os.rename(staging, folder)
            log.info("Wrote %s to %s", description, folder)
        except OSError:
            if not splits_are_complete(folder, num_samples):
                raise
            log.info("Another process wrote %s first; using its shards", folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return paths
