"""`unisep checkpoint consolidate SHARDED OUT`: merge a sharded (FSDP) checkpoint into one file.

Runs in a single process with no GPU and no process group: the shards are read with
`torch.distributed.checkpoint.format_utils.dcp_to_torch_save`, which assembles every
sharded tensor in host memory, so the host needs about the checkpoint's full size in
RAM. The result is an ordinary Lightning checkpoint: `Module.load_from_checkpoint`,
`unisep sample`, evaluation, and resuming with DDP or on one device all accept it.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from unisep.training.checkpoint_io import atomic_torch_save
from unisep.training.resume import SHARDED_CHECKPOINT_FILES

logger = logging.getLogger(__name__)

# Lightning's ModelParallelStrategy stores the model under "state_dict" and the
# optimizers under "optimizer_0", "optimizer_1", ... in the sharded files, and
# everything else in meta.pt.
_OPTIMIZER_KEY = re.compile(r"optimizer_(\d+)")


def optimizer_state_by_index(state: dict[str, Any]) -> dict[str, Any]:
    """Turn an optimizer state keyed by parameter name into `Optimizer.state_dict`'s layout.

    `torch.distributed.checkpoint.state_dict.get_optimizer_state_dict` keys the state and
    each group's `params` by parameter name; `torch.optim.Optimizer.load_state_dict`
    expects integer ids that count parameters over the groups in order. The groups keep
    their order, so numbering the names in that order gives the ids.
    """
    groups = []
    ids: dict[str, int] = {}
    for group in state["param_groups"]:
        group = dict(group)
        numbered = []
        for name in group["params"]:
            ids[name] = len(ids)
            numbered.append(ids[name])
        group["params"] = numbered
        groups.append(group)
    return {"state": {ids[name]: value for name, value in state["state"].items()}, "param_groups": groups}


def consolidate_checkpoint(sharded: str | os.PathLike[str], output: str | os.PathLike[str]) -> Path:
    """Write the sharded checkpoint folder ``sharded`` as the single file ``output``.

    Raises:
        FileNotFoundError: ``sharded`` is not a finished sharded checkpoint folder; the
            message names the missing file.
    """
    sharded, output = Path(sharded), Path(output)
    if not sharded.is_dir():
        raise FileNotFoundError(f"{sharded} is not a folder; a sharded checkpoint is a folder with {SHARDED_CHECKPOINT_FILES}")
    for name in SHARDED_CHECKPOINT_FILES:
        if not (sharded / name).is_file():
            raise FileNotFoundError(
                f"{sharded / name} is missing, so {sharded} is not a complete sharded checkpoint "
                "(the write may have been interrupted); pick another checkpoint folder"
            )
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    output.parent.mkdir(parents=True, exist_ok=True)
    merged_path = output.with_name(f".{output.name}.shards")
    try:
        dcp_to_torch_save(sharded, merged_path)
        merged = torch.load(merged_path, map_location="cpu", mmap=True, weights_only=False)
        # weights_only=False: meta.pt contains hyper-parameters and loop states, not only tensors.
        checkpoint = torch.load(sharded / "meta.pt", map_location="cpu", weights_only=False)
        checkpoint["state_dict"] = merged.pop("state_dict")
        indices = sorted(int(match.group(1)) for key in merged if (match := _OPTIMIZER_KEY.fullmatch(key)))
        checkpoint["optimizer_states"] = [optimizer_state_by_index(merged[f"optimizer_{i}"]) for i in indices]
        atomic_torch_save(checkpoint, output)
    finally:
        merged_path.unlink(missing_ok=True)
    logger.info("Wrote %s (%d tensors) from %s", output, len(checkpoint["state_dict"]), sharded)
    return output


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the command-line arguments of `unisep checkpoint consolidate`."""
    parser.add_argument("sharded", type=Path, help="sharded checkpoint folder (contains .metadata and meta.pt)")
    parser.add_argument("out", type=Path, help="output checkpoint file, e.g. runs/x/consolidated.ckpt")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run `unisep checkpoint consolidate`."""
    path = consolidate_checkpoint(args.sharded, args.out)
    print(f"Wrote {path}")
    return 0
