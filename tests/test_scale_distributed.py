"""Two-process CPU runs of `unisep fit`: DDP for UNITE and SCD, FSDP for UNITE.

The shard sets are deliberately uneven (one training shard contains 2 samples next to
shards of 24, and the validation shards are 10 and 3 samples), so a stream that gave
ranks different batch counts would hang the run; each run has a hard timeout.
Runs use `num_workers: 0`: worker splitting is covered in `test_scale_data.py`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from scale_helpers import (
    REPO,
    read_records,
    run_unisep,
    scd_config,
    unite_config,
    write_config,
    write_image_shards,
    write_video_shards,
)
from unisep.training.consolidate import consolidate_checkpoint

pytestmark = pytest.mark.slow

DDP_ARGS = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
RUN_TIMEOUT = 420  # seconds; a rank waiting on a missing batch would hang far longer


def _samples_by_epoch(record: dict, epoch: int) -> list[str]:
    return [sample for batch in record["train"] if batch["epoch"] == epoch for sample in batch["samples"]]


def _check_run_output(result) -> None:
    assert result.returncode == 0, result.stdout[-4000:]


@pytest.fixture(scope="module")
def unite_workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("unite_ddp")
    write_image_shards(root / "train", [24, 24, 24, 24, 2])
    write_image_shards(root / "val", [10, 3])
    return root


@pytest.fixture(scope="module")
def ddp_unite(unite_workspace) -> tuple[Path, list[dict]]:
    root = unite_workspace
    config = unite_config(root, root / "train", root / "val", root / "ddp_record", name="ddp")
    path = write_config(config, root / "ddp.yaml")
    result = run_unisep(["fit", "--config", str(path), *DDP_ARGS], cwd=root, timeout=RUN_TIMEOUT)
    _check_run_output(result)
    return root / "runs" / "ddp" / "version_0", read_records(root / "ddp_record", 2)


def test_ddp_unite_ranks_read_disjoint_samples(ddp_unite):
    _, records = ddp_unite

    for epoch in (0, 1):
        rank0, rank1 = (_samples_by_epoch(record, epoch) for record in records)
        assert len(rank0) == len(rank1) == 3 * 4
        assert set(rank0).isdisjoint(rank1), f"ranks shared samples in epoch {epoch}"


def test_ddp_unite_equal_batches_with_uneven_shards(ddp_unite):
    run, records = ddp_unite

    for record in records:
        assert record["world_size"] == 2
        assert [batch["step"] for batch in record["train"]] == list(range(6))
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_ddp_unite_validation_reads_each_sample_once(ddp_unite):
    _, records = ddp_unite

    # Validation ran after each of the 2 epochs; rank 0 reads the 10-sample shard.
    per_rank = [[sample for batch in record["val"] for sample in batch] for record in records]
    assert len(per_rank[0]) == 2 * 10
    assert len(per_rank[1]) == 2 * 3
    assert set(per_rank[0]).isdisjoint(per_rank[1])
    assert len(set(per_rank[0]) | set(per_rank[1])) == 13


def test_ddp_scd_ranks_read_disjoint_videos(tmp_path):
    # Each rank reads 6 clips plus a 4-clip shuffle buffer. With 4 shards over 2 ranks,
    # each rank opens 2 shards per pass, at least one of 12 videos, so an epoch stays
    # within one pass, where ranks never share a shard.
    write_video_shards(tmp_path / "train", [12, 12, 12, 1])
    write_video_shards(tmp_path / "val", [3, 2])
    config = scd_config(tmp_path, tmp_path / "train", tmp_path / "val", tmp_path / "record")
    path = write_config(config, tmp_path / "scd.yaml")

    result = run_unisep(["fit", "--config", str(path), *DDP_ARGS], cwd=tmp_path, timeout=RUN_TIMEOUT)

    _check_run_output(result)
    records = read_records(tmp_path / "record", 2)
    for record in records:
        assert [batch["step"] for batch in record["train"]] == list(range(6))
    for epoch in (0, 1):
        rank0, rank1 = (_samples_by_epoch(record, epoch) for record in records)
        assert len(rank0) == len(rank1) == 3 * 2
        assert set(rank0).isdisjoint(rank1), f"ranks shared videos in epoch {epoch}"
    val = [{video for batch in record["val"] for video in batch} for record in records]
    assert val[0].isdisjoint(val[1])
    assert len(val[0] | val[1]) == 5


def test_fsdp_unite_matches_ddp_and_consolidates(unite_workspace, ddp_unite):
    root = unite_workspace
    ddp_run, ddp_records = ddp_unite
    config = unite_config(root, root / "train", root / "val", root / "fsdp_record", name="fsdp")
    strategy = yaml.safe_load((REPO / "configs/unite_large_fsdp.yaml").read_text())["trainer"]["strategy"]
    # fp32 compute and reduction, to compare with the fp32 DDP run.
    strategy["init_args"].update(param_dtype=None, reduce_dtype=None)
    config["trainer"].update(strategy=strategy, devices=2, limit_val_batches=1)
    path = write_config(config, root / "fsdp.yaml")

    result = run_unisep(["fit", "--config", str(path)], cwd=root, timeout=RUN_TIMEOUT)

    _check_run_output(result)
    sharded = root / "runs" / "fsdp" / "version_0" / "checkpoints" / "last.ckpt"
    assert sharded.is_dir()
    assert (sharded / ".metadata").is_file()
    assert {p.name for p in sharded.glob("*.distcp")} == {"__0_0.distcp", "__1_0.distcp"}
    # Same seeds and data streams as the DDP run, so the same batches on each rank.
    for fsdp_record, ddp_record in zip(read_records(root / "fsdp_record", 2), ddp_records):
        assert fsdp_record["train"] == ddp_record["train"]

    merged = consolidate_checkpoint(sharded, root / "fsdp_full.ckpt")
    fsdp_state = torch.load(merged, weights_only=False)["state_dict"]
    ddp_state = torch.load(ddp_run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert fsdp_state.keys() == ddp_state.keys()
    assert int(fsdp_state["ema.num_updates"]) == int(ddp_state["ema.num_updates"]) == 6
    lr = config["model"]["init_args"]["lr"]
    for name, expected in ddp_state.items():
        actual = fsdp_state[name]
        if name.endswith("attn.qkv.bias"):
            # Without qk-norm the key bias has zero gradient in exact arithmetic (softmax
            # ignores a shift shared by all scores), and AdamW scales the rounding noise
            # of that gradient up to steps of about lr. Only its drift is bounded.
            (q, k, v), (q_ref, k_ref, v_ref) = actual.chunk(3), expected.chunk(3)
            assert (k - k_ref).abs().max() <= 6 * lr, name
            actual, expected = torch.cat([q, v]), torch.cat([q_ref, v_ref])
        # Reduce-scatter and all-reduce add the two ranks' gradients in a different
        # order; after 6 AdamW steps the weights agree to float32 rounding.
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5, msg=name)
