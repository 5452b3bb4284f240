"""Automatic resume: a run folder that survives requeues, and the newest complete checkpoint in it.

A SLURM job keeps its job id when it is requeued, so a logger version derived from the
id (`slurm-<job id>`) names the same run folder on every restart, and the restarted
job finds the checkpoints of its earlier attempts there. Lightning's requeue handler
writes `hpc_ckpt_<n>.ckpt` into `trainer.default_root_dir`; the CLI points that at the
run folder too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment

logger = logging.getLogger(__name__)

SLURM_VERSION_PREFIX = "slurm-"
HPC_CHECKPOINT_PATTERN = "hpc_ckpt_*.ckpt"
# Files of a sharded (distributed) checkpoint folder: torch.distributed.checkpoint
# writes `.metadata` after every rank has written its shard, and Lightning writes
# `meta.pt` (loops, callbacks, hyper-parameters) after that.
SHARDED_CHECKPOINT_FILES = (".metadata", "meta.pt")


@dataclass(frozen=True)
class ResumeCheckpoint:
    """A checkpoint chosen for resuming.

    Attributes:
        path: Checkpoint file, or folder of a sharded checkpoint.
        global_step: Optimizer steps the checkpoint was written after.
        candidates: Complete checkpoints that were compared.
    """

    path: Path
    global_step: int
    candidates: int


def slurm_run_version(environ: Mapping[str, str] | None = None) -> str | None:
    """Return a logger version that stays the same across requeues of a SLURM job.

    Returns:
        ``"slurm-<job id>"`` (``"slurm-<array job id>_<task id>"`` for array jobs) when
        Lightning would treat the process as a SLURM-managed job, else None. Interactive
        allocations (job name ``bash`` or ``interactive``) get None, so separate runs
        started in one allocation do not share a folder.
    """
    environ = os.environ if environ is None else environ
    if environ is os.environ:
        managed = SLURMEnvironment.detect()
    else:
        managed = "SLURM_NTASKS" in environ and environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")
    if not managed:
        return None
    array_job, array_task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{SLURM_VERSION_PREFIX}{array_job}_{array_task}"
    job = environ.get("SLURM_JOB_ID")
    return f"{SLURM_VERSION_PREFIX}{job}" if job else None


def is_complete_checkpoint(path: Path) -> bool:
    """Tell whether ``path`` is a non-empty checkpoint file or a finished sharded checkpoint folder."""
    if path.is_file():
        return path.stat().st_size > 0
    if path.is_dir():
        return all((path / name).is_file() for name in SHARDED_CHECKPOINT_FILES)
    return False


def checkpoint_global_step(path: Path) -> int:
    """Read ``global_step`` from a checkpoint file or sharded checkpoint folder.

    The file is memory-mapped, so the tensors are not read from disk.

    Raises:
        Whatever ``torch.load`` raises for an unreadable file; ``KeyError`` when the
        checkpoint has no ``global_step``.
    """
    source = path / "meta.pt" if path.is_dir() else path
    # weights_only=False: Lightning checkpoints hold hyper-parameters and loop states
    # that are not plain tensors. These are the run's own files, as when resuming.
    checkpoint = torch.load(source, map_location="cpu", mmap=True, weights_only=False)
    return int(checkpoint["global_step"])


def find_resume_checkpoint(
    folders: Iterable[str | os.PathLike[str]], hpc_folders: Iterable[str | os.PathLike[str]] = ()
) -> ResumeCheckpoint | None:
    """Return the checkpoint with the highest global step in ``folders``, or None.

    Args:
        folders: Folders whose ``*.ckpt`` files and sharded ``*.ckpt`` folders are candidates.
        hpc_folders: Folders whose ``hpc_ckpt_*.ckpt`` files (Lightning's requeue
            checkpoints) are candidates.

    Hidden names (temporary files of `AtomicCheckpointIO` and of sharded writes) and
    incomplete sharded folders are ignored, and an unreadable file is skipped with a
    warning. Ties in global step go to the most recently modified checkpoint.
    """
    paths: dict[Path, Path] = {}
    searches = [(Path(folder), "*.ckpt") for folder in folders]
    searches += [(Path(folder), HPC_CHECKPOINT_PATTERN) for folder in hpc_folders]
    for folder, pattern in searches:
        if not folder.is_dir():
            continue
        for path in folder.glob(pattern):
            if not path.name.startswith(".") and is_complete_checkpoint(path):
                # `last.ckpt` may be a link to a step checkpoint; compare each target once.
                paths.setdefault(path.resolve(), path)

    ranked = []
    for path in paths.values():
        try:
            step = checkpoint_global_step(path)
        except Exception as error:  # noqa: BLE001 - any unreadable file is skipped, not fatal
            logger.warning("Skipping checkpoint %s for resume: it cannot be read (%r)", path, error)
            continue
        modified = (path / "meta.pt" if path.is_dir() else path).stat().st_mtime_ns
        ranked.append((step, modified, path))
    if not ranked:
        return None
    step, _, path = max(ranked)
    return ResumeCheckpoint(path=path, global_step=step, candidates=len(ranked))
