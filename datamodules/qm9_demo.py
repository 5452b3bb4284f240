"""Demo molecule shards: a small random subset of the real QM9 molecules in qm9pack.

The subset is drawn from the standard splits (see `qm9_split_rows`). Training takes
the first `num_train` molecules of the permuted training split, and validation the
first `num_val` of the validation split, so the two never share a molecule. Writing a
few thousand molecules takes a few seconds, most of it reading the 225 MB of CSV
tables.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from unisep.datamodules.demo_shards import ensure_demo_splits
from unisep.datamodules.molecule_sources import QM9_SPLIT_SIZES, load_qm9pack_table, read_qm9pack
from unisep.datamodules.molecule_writer import write_molecule_records

logger = logging.getLogger(__name__)

DEMO_SHARD_SIZE = 2000


def ensure_qm9_demo_shards(root: str | os.PathLike[str] = "data", num_train: int = 4000, num_val: int = 500) -> dict[str, Path]:
    """Write the QM9 demo shards on first use and return their folders.

    Later calls find the finished shards and return at once. Concurrent calls (one per
    DDP rank) are safe because each writes into its own temporary folder and renames
    it into place. The first rename wins and the others delete their copy.

    Args:
        root: parent folder; the shards go to ``root/qm9-demo-<num_train>-<num_val>/``.
        num_train: training molecules, at most 100,000.
        num_val: validation molecules, at most 17,748.

    Returns:
        ``{"train": folder, "val": folder}``, each with tars and an ``index.json``.

    Raises:
        ValueError: a size is out of range.
        FileExistsError: the target folder exists but is incomplete; delete it.
    """
    if not 1 <= num_train <= QM9_SPLIT_SIZES["train"]:
        raise ValueError(f"num_train must be in [1, {QM9_SPLIT_SIZES['train']}], got {num_train}")
    if not 1 <= num_val <= QM9_SPLIT_SIZES["val"]:
        raise ValueError(f"num_val must be in [1, {QM9_SPLIT_SIZES['val']}], got {num_val}")
    expected = {"train": num_train, "val": num_val}

    def write(staging: Path) -> None:
        table = load_qm9pack_table()
        for name, count in expected.items():
            write_molecule_records(
                read_qm9pack(name, limit=count, table=table),
                staging / name,
                settings={"source": "qm9pack", "split": name, "limit": count, "demo": True},
                max_samples_per_shard=DEMO_SHARD_SIZE,
                progress=False,
                prefix=name,
            )

    # Every QM9 molecule fits the default vocabulary and size, so nothing is skipped and
    # each split contains exactly the requested count.
    return ensure_demo_splits(
        Path(root) / f"qm9-demo-{num_train}-{num_val}",
        write,
        num_samples=expected,
        description=f"the QM9 demo shards ({num_train} train, {num_val} val)",
        log=logger,
    )
