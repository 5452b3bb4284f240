"""The GPU check script: its CPU dry run covers every section end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.sh"
SECTIONS = {"unite_b_train", "host_sync", "scd_m_train", "scd_m_rollout", "fid_features"}


def run_check(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=environment, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu_check.json"
    result = run_check("--dry-run", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["dry_run"] is True
    assert record["skipped"] == []
    assert {row["section"] for row in record["rows"]} == SECTIONS
    assert set(record["hardware"]) >= {"cpu", "cpu_cores", "gpu", "torch"}

    sync = next(row for row in record["rows"] if row["section"] == "host_sync")
    assert sync["python_reads"] == 0
    timed = [row for row in record["rows"] if "rate" in row]
    assert all(row["rate"] > 0 for row in timed)
    rollouts = [row for row in record["rows"] if row["section"] == "scd_m_rollout"]
    assert [row["setting"].split(" (")[0] for row in rollouts] == ["SCD", "causal DiT"]
    assert rollouts[0]["speedup_vs_causal_dit"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on a machine without a GPU")
def test_gpu_check_without_gpu_fails_clearly():
    result = run_check(timeout=120)
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr
    assert "--dry-run" in result.stderr
