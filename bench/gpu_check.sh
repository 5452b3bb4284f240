#!/usr/bin/env bash
# Measure unisep's paper-size models on a GPU in bounded time (under 8 minutes).
#
#   bash bench/gpu_check.sh             on a machine with a CUDA GPU
#   bash bench/gpu_check.sh --dry-run   on any machine: every section at tiny sizes on the CPU
#
# It reports UNITE-B training at 256 x 256 in fp32 and bf16 autocast (images/s, peak
# memory, MFU) and the host-device synchronisations inside that step. It also times SCD-M
# and causal-DiT training and rollout at the reference shape, and FID feature extraction.
# bench/gpu_check.py describes each section. The script installs nothing: it runs the
# project's Python (PYTHON, else .venv/bin/python, else python3) and writes
# bench/results/gpu_check.json (gpu_check_dry_run.json with --dry-run), or the file
# given with --out FILE.
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

if ! "$PYTHON" -c "import unisep, torch" 2>/dev/null; then
    echo "gpu_check: $PYTHON cannot import unisep and torch; install the project first (make setup)" >&2
    exit 2
fi
if [[ " $* " != *" --dry-run "* ]] && ! "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check: no CUDA device is visible; run it on a GPU machine, or pass --dry-run to check it on the CPU" >&2
    exit 2
fi

# The Python script starts no section after its 390 s budget is spent. This limit also
# stops a section that hangs, so the whole check ends within 8 minutes.
LIMIT_SECONDS=470
status=0
timeout --signal=INT --kill-after=10 "$LIMIT_SECONDS" "$PYTHON" bench/gpu_check.py "$@" || status=$?
if [[ $status -eq 124 || $status -eq 130 ]]; then
    echo "gpu_check: stopped after ${LIMIT_SECONDS} s; the sections finished before then are in the log above" >&2
fi
exit $status
