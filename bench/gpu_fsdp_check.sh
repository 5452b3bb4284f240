#!/usr/bin/env bash
# FSDP check for a GPU node: the parts of configs/unite_large_fsdp.yaml and
# configs/scd_fsdp.yaml that the CPU tests cannot reach (NCCL, bf16 parameters, fused
# AdamW on sharded parameters).
#
# Runs on the digits demos, on every visible GPU (at least 2 for real sharding):
#   1. UNITE, DDP and FSDP in fp32 for 20 steps: the consolidated FSDP weights must match
#      the DDP weights (same tolerance as tests/test_scale_distributed.py);
#   2. UNITE, FSDP with the shipped bf16 settings: finishes, consolidates, and the
#      consolidated checkpoint samples with `unisep sample`;
#   3. SCD, FSDP with the shipped bf16 settings: finishes and consolidates.
# Prints PASS or FAIL per check and exits non-zero on any failure. Logs and configs go
# to bench/results/gpu_fsdp_check/.
#
#   bash bench/gpu_fsdp_check.sh            # all visible GPUs
#   GPUS=2 bash bench/gpu_fsdp_check.sh     # the first 2
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
UNISEP=${UNISEP:-.venv/bin/unisep}
OUT=bench/results/gpu_fsdp_check
GPUS=${GPUS:-$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")}
if [ "${GPUS}" -lt 1 ]; then
    echo "No CUDA device is visible; run this on a GPU node." >&2
    exit 2
fi
rm -rf "${OUT}" && mkdir -p "${OUT}"
echo "GPU FSDP check on ${GPUS} GPU(s): $(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)"

# Write the run configs from the demo recipes and the shipped FSDP strategies.
"$PYTHON" - "${OUT}" "${GPUS}" <<'EOF'
import sys
from pathlib import Path

import yaml

out, gpus = Path(sys.argv[1]), int(sys.argv[2])
rank_zero_samplers = ("SampleGrid", "RunSummary", "VideoRollout", "GenerationLatency")


def config(demo, fsdp_config, name, strategy_dtypes, val_shards):
    cfg = yaml.safe_load(Path(demo).read_text())
    trainer = cfg["trainer"]
    # Validation needs a shard per rank; the demo sets have 2 (digits) and 1 (videos).
    trainer.update(accelerator="gpu", devices=gpus, max_steps=20, check_val_every_n_epoch=1)
    trainer["limit_val_batches"] = 1 if val_shards >= gpus else 0
    trainer["logger"]["init_args"].update(save_dir=str(out / "runs"), name=name, version="run")
    trainer["callbacks"] = [c for c in trainer["callbacks"] if not c["class_path"].endswith(rank_zero_samplers)]
    for callback in trainer["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"].update(save_last=True, every_n_train_steps=10)
    cfg["data"]["init_args"].update(batches_per_epoch=10, val_num_workers=1, demo_root=str(out / "data"))
    if fsdp_config is None:
        trainer["strategy"] = "ddp"
    else:
        strategy = yaml.safe_load(Path(fsdp_config).read_text())["trainer"]["strategy"]
        if strategy_dtypes == "fp32":
            strategy["init_args"].update(param_dtype=None, reduce_dtype=None)
        trainer["strategy"] = strategy
    if strategy_dtypes == "bf16":
        trainer["plugins"] = [{"class_path": "unisep.training.precision.BF16MixedPrecision", "init_args": {"device": "cuda"}}]
    (out / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


config("configs/demo/unite_digits.yaml", None, "unite_ddp_fp32", "fp32", val_shards=2)
config("configs/demo/unite_digits.yaml", "configs/unite_large_fsdp.yaml", "unite_fsdp_fp32", "fp32", val_shards=2)
config("configs/demo/unite_digits.yaml", "configs/unite_large_fsdp.yaml", "unite_fsdp_bf16", "bf16", val_shards=2)
config("configs/demo/scd_digits.yaml", "configs/scd_fsdp.yaml", "scd_fsdp_bf16", "bf16", val_shards=1)
EOF

failures=0
report() {  # report NAME STATUS DETAIL
    if [ "$2" -eq 0 ]; then echo "PASS $1"; else echo "FAIL $1 ($3)"; failures=$((failures + 1)); fi
}
fit() {  # fit NAME: train, keep the log, print the throughput line
    "$UNISEP" fit --config "${OUT}/$1.yaml" --auto_resume false > "${OUT}/$1.log" 2>&1
    local status=$?
    grep -h "Throughput:" "${OUT}/$1.log" | tail -n 1 | sed "s/^/  $1: /"
    return $status
}
checkpoint() {  # checkpoint NAME: the last checkpoint of a run
    echo "${OUT}/runs/$1/run/checkpoints/last.ckpt"
}

fit unite_ddp_fp32; report "UNITE DDP fp32 fit" $? "see ${OUT}/unite_ddp_fp32.log"
fit unite_fsdp_fp32; report "UNITE FSDP fp32 fit" $? "see ${OUT}/unite_fsdp_fp32.log"
"$UNISEP" checkpoint consolidate "$(checkpoint unite_fsdp_fp32)" "${OUT}/unite_fsdp_fp32.ckpt" > /dev/null 2>&1
report "UNITE FSDP fp32 consolidate" $? "consolidation failed"
"$PYTHON" - "$(checkpoint unite_ddp_fp32)" "${OUT}/unite_fsdp_fp32.ckpt" <<'EOF'
import sys

import torch

ddp = torch.load(sys.argv[1], map_location="cpu", weights_only=False)["state_dict"]
fsdp = torch.load(sys.argv[2], map_location="cpu", weights_only=False)["state_dict"]
worst = max(
    ((fsdp[name].float() - value.float()).abs().max().item(), name)
    for name, value in ddp.items()
    # The key bias without qk-norm has zero gradient and drifts with rounding noise.
    if value.is_floating_point() and not name.endswith("attn.qkv.bias")
)
print(f"  largest |FSDP - DDP| weight difference: {worst[0]:.3g} ({worst[1]})")
sys.exit(0 if worst[0] <= 1e-4 else 1)
EOF
report "UNITE FSDP fp32 matches DDP" $? "weights differ by more than 1e-4"

fit unite_fsdp_bf16; report "UNITE FSDP bf16 fit" $? "see ${OUT}/unite_fsdp_bf16.log"
"$UNISEP" checkpoint consolidate "$(checkpoint unite_fsdp_bf16)" "${OUT}/unite_fsdp_bf16.ckpt" > /dev/null 2>&1
report "UNITE FSDP bf16 consolidate" $? "consolidation failed"
"$UNISEP" sample --ckpt "${OUT}/unite_fsdp_bf16.ckpt" --per-class 2 --steps 4 --out "${OUT}/unite_samples.npz" > "${OUT}/sample.log" 2>&1
report "UNITE sample from consolidated checkpoint" $? "see ${OUT}/sample.log"

fit scd_fsdp_bf16; report "SCD FSDP bf16 fit" $? "see ${OUT}/scd_fsdp_bf16.log"
"$UNISEP" checkpoint consolidate "$(checkpoint scd_fsdp_bf16)" "${OUT}/scd_fsdp_bf16.ckpt" > /dev/null 2>&1
report "SCD FSDP bf16 consolidate" $? "consolidation failed"

echo "${failures} check(s) failed; logs in ${OUT}"
exit $((failures > 0))
