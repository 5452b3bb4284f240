"""SLURM requeue: SIGUSR1 to a running `unisep fit`, then the requeued job resumes the run.

The job runs as SLURM would start one task (SLURM_* variables set, one process), with a
stand-in `scontrol` first on PATH that records its arguments instead of talking to a
scheduler. The run uses the shipped overlay configs/slurm/requeue.yaml.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from scale_helpers import REPO, UNISEP, read_records, subprocess_env, unite_config, write_config, write_image_shards

pytestmark = pytest.mark.slow

JOB_ID = "4242"


def _slurm_env(bin_dir: Path) -> dict[str, str]:
    return subprocess_env(
        PATH=f"{bin_dir}:{subprocess_env()['PATH']}",
        SLURM_JOB_ID=JOB_ID,
        SLURM_JOB_NAME="unisep-requeue-test",
        SLURM_NTASKS="1",
        SLURM_NTASKS_PER_NODE="1",
        SLURM_NNODES="1",
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
        SLURM_NODEID="0",
        SLURM_NODELIST="127.0.0.1",
    )


def _wait_for(condition, process: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"unisep fit exited with {process.returncode} before {what}:\n{output[-4000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_requeue_signal_saves_and_requeued_job_resumes(tmp_path):
    write_image_shards(tmp_path / "train", [16, 16, 8])
    write_image_shards(tmp_path / "val", [6])
    records = tmp_path / "record"
    config = unite_config(tmp_path, tmp_path / "train", tmp_path / "val", records, name="requeue")
    config["trainer"]["max_steps"] = 10_000  # the first attempt only ends by the requeue
    config["trainer"]["check_val_every_n_epoch"] = 1000
    # No periodic checkpoint, so the requeue checkpoint is the only one to resume from.
    config["trainer"]["callbacks"][1]["init_args"]["every_n_train_steps"] = 1000
    path = write_config(config, tmp_path / "job.yaml")

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol_calls = tmp_path / "scontrol_calls"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {scontrol_calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = _slurm_env(bin_dir)
    command = [str(UNISEP), "fit", "--config", str(path), "--config", str(REPO / "configs/slurm/requeue.yaml")]

    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        progress = records / "progress-rank0"
        _wait_for(lambda: progress.exists() and int(progress.read_text() or 0) >= 3, first, 300, "step 3")
        first.send_signal(signal.SIGUSR1)
        _wait_for(scontrol_calls.exists, first, 120, "the requeue call")
        # SLURM stops a requeued job with SIGTERM.
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()

    assert scontrol_calls.read_text().split() == ["requeue", JOB_ID]
    run = tmp_path / "runs" / "requeue" / f"slurm-{JOB_ID}"
    hpc_checkpoint = run / "hpc_ckpt_1.ckpt"
    assert hpc_checkpoint.is_file(), sorted(p.name for p in run.rglob("*"))
    saved_step = torch.load(hpc_checkpoint, map_location="cpu", weights_only=False)["global_step"]
    assert saved_step >= 3

    # The requeued job runs the same command; it stops 2 steps later to keep the test short.
    second = subprocess.run(
        [*command, "--trainer.max_steps", str(saved_step + 2)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
    )

    assert second.returncode == 0, second.stdout[-4000:]
    assert f"Resuming from {hpc_checkpoint}" in second.stdout
    (record,) = read_records(records, 1)
    assert record["start_step"] == saved_step
    assert [batch["step"] for batch in record["train"]] == [saved_step, saved_step + 1]
    assert sorted(p.name for p in (tmp_path / "runs" / "requeue").iterdir()) == [f"slurm-{JOB_ID}"]
