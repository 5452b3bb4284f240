"""Absolute GPU figures of the paper-size models, in bounded time; `bench/gpu_check.sh` runs it.

Sections, each skipped with a note once the time budget is spent:

1. `unite_b_train`: a UNITE-B training step at 256 x 256 (patch 16, K = 256 x 32,
   N = 3), fp32 against bf16 autocast, alternating: images/s, step time, CUDA peak
   memory and MFU (`UNITE.flops_per_sample` times images/s over the GPU's dense bf16
   peak).
2. `host_sync`: the same bf16 step under `torch.cuda.set_sync_debug_mode("warn")`,
   counting the host-device synchronisations (0 expected), plus the Python-level reads
   of tensor values in the loss forward and backward.
3. `scd_m_train`: SCD-M and the causal DiT of equal size at the reference shape (8 x 8
   tokens x 32 channels per frame, 300-frame clips, batch 2, gradient checkpointing,
   bf16): frames/s, peak memory, MFU.
4. `scd_m_rollout`: seconds per generated frame of SCD-M and the causal DiT after 144
   context frames with 50 Euler steps (the Minecraft protocol), bf16, batch 1.
5. `fid_features`: seconds per 1,000 images of the Inception feature extractor.

FLOPs count 6 (training) or 2 (inference) per weight of the transformer blocks' matrices
per token. Attention scores are left out, so MFU is an estimate from below.

`--dry-run` runs every section on the CPU at tiny sizes in fp32, which checks the
script end to end without a GPU; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from baselines import count_cuda_syncs, count_host_reads
from common import GIB, add_out_argument, alternate, cuda_peak, median, print_table, write_run
from setups import (
    SCD_GRADIENT_CLIP,
    adamw,
    autocast_context,
    build_unite,
    image_batch,
    rollout_frame_times,
    scd_and_causal_dit,
    train_step,
    unite_optimizer,
    unite_train_step,
)
from unisep.callbacks.throughput import peak_bf16_flops
from unisep.lightning_modules.causal_dit_loss import CausalDiTLoss
from unisep.lightning_modules.scd_loss import SCDLoss
from unisep.lightning_modules.video_rollout import causal_dit_rollout, scd_rollout
from unisep.networks.scd_presets import scd_preset

# Sizes of a real run and of the CPU dry run.
FULL = {
    # Batch 32 keeps the fp32 step of UNITE-B (about 1.5 GB of activations per image,
    # an estimate) within one 80 GB GPU.
    "unite": dict(preset="unite_base", image_size=256, patch_size=16, batch_size=32, overrides=None),
    "scd": dict(preset="scd_m", overrides={}, grid=(8, 8), frames=300, batch_size=2),
    "rollout": dict(context=144, frames=3, steps=50),
    "fid": dict(batch_size=100),
    "repeats": 5,
}
DRY = {
    "unite": dict(preset="unite_tiny", image_size=16, patch_size=4, batch_size=4, overrides=None),
    "scd": dict(preset="scd_tiny", overrides={}, grid=(2, 2), frames=4, batch_size=1),
    "rollout": dict(context=2, frames=2, steps=2),
    "fid": dict(batch_size=2),
    "repeats": 1,
}


def block_weights(module: torch.nn.Module) -> int:
    """Count the 2-D weights of transformer blocks, adaLN modulation excluded."""
    return sum(
        p.numel() for name, p in module.named_parameters() if p.ndim == 2 and ".blocks." in f".{name}" and "modulation" not in name
    )


def mfu(flops_per_second: float, peak: float | None) -> float | None:
    """Return the model FLOPs utilisation, or None without a known peak."""
    return None if peak is None else flops_per_second / peak


def unite_train(sizes, device, dtypes, peak) -> list[dict]:
    cfg = sizes["unite"]
    module = build_unite(cfg["preset"], cfg["image_size"], cfg["patch_size"], device, overrides=cfg["overrides"])
    batch = image_batch(cfg["batch_size"], cfg["image_size"], module.num_classes, device)
    optimizer = unite_optimizer(module)
    steps = {dtype: unite_train_step(module, optimizer, batch, lambda dtype=dtype: autocast_context(device, dtype)) for dtype in dtypes}
    times = alternate(steps, sizes["repeats"], device)
    rows = []
    for dtype, step in steps.items():
        peak_gib = cuda_peak(step, device, GIB)
        seconds = median(times[dtype])
        images_per_sec = cfg["batch_size"] / seconds
        rows.append(
            {
                "section": "unite_b_train",
                "setting": f"{cfg['preset']} {cfg['image_size']} px, batch {cfg['batch_size']}, N = 3, {dtype}",
                "sec_per_step": seconds,
                "rate": images_per_sec,
                "unit": "images/s",
                "peak_gib": peak_gib,
                "mfu": mfu(images_per_sec * module.flops_per_sample, peak),
            }
        )
    return rows


def host_sync(sizes, device, dtypes, peak) -> list[dict]:
    cfg = sizes["unite"]
    module = build_unite(cfg["preset"], cfg["image_size"], cfg["patch_size"], device, overrides=cfg["overrides"])
    batch = image_batch(cfg["batch_size"], cfg["image_size"], module.num_classes, device)
    dtype = dtypes[-1]
    step = unite_train_step(module, unite_optimizer(module), batch, lambda: autocast_context(device, dtype))
    step()
    with count_host_reads() as reads:
        with autocast_context(device, dtype):
            loss, _ = module.loss(module.network, batch, step=10_000)
        loss.backward()
    module.network.zero_grad(set_to_none=True)
    syncs = count_cuda_syncs(step, device)
    return [
        {
            "section": "host_sync",
            "setting": f"{cfg['preset']} step ({dtype}): loss, backward, clip, fused AdamW, EMA",
            "python_reads": len(reads),
            "cuda_syncs": syncs,
        }
    ]


def scd_train(sizes, device, dtypes, peak) -> list[dict]:
    cfg = sizes["scd"]
    size = scd_preset(cfg["preset"], **cfg["overrides"])
    grid, channels, frames = cfg["grid"], 32, cfg["frames"]
    tokens_per_frame = grid[0] * grid[1]
    dtype = dtypes[-1]
    scd, causal_dit = scd_and_causal_dit(size, channels, grid, device)
    networks = {"SCD": scd, "causal DiT": causal_dit}
    scd.set_gradient_checkpointing(True)
    causal_dit.gradient_checkpointing = True
    losses = {"SCD": SCDLoss(decoder_passes=2), "causal DiT": CausalDiTLoss()}
    batch = {"tokens": torch.randn(cfg["batch_size"], frames, tokens_per_frame, channels, device=device)}
    # Training FLOPs per clip: SCD runs the encoder over every token and each of its two
    # decoder passes over frames 1.. with the context tokens joined (twice the tokens).
    encoder_w, decoder_w = block_weights(networks["SCD"].encoder), block_weights(networks["SCD"].decoder)
    flops_per_clip = {
        "SCD": 6 * (encoder_w * frames * tokens_per_frame + decoder_w * 2 * (frames - 1) * 2 * tokens_per_frame),
        "causal DiT": 6 * block_weights(networks["causal DiT"]) * frames * tokens_per_frame,
    }

    def make_step(name):
        network, loss_fn = networks[name], losses[name]
        optimizer = adamw(network.parameters(), "fused", lr=1e-4)
        return train_step(
            network, lambda: loss_fn(network, batch), optimizer, SCD_GRADIENT_CLIP, lambda: autocast_context(device, dtype)
        )

    steps = {name: make_step(name) for name in networks}
    times = alternate(steps, max(1, sizes["repeats"] - 2), device)
    rows = []
    for name, step in steps.items():
        peak_gib = cuda_peak(step, device, GIB)
        seconds = median(times[name])
        clips_per_sec = cfg["batch_size"] / seconds
        rows.append(
            {
                "section": "scd_m_train",
                "setting": f"{name} ({cfg['preset']} size), {frames}-frame clips of {tokens_per_frame} tokens, batch {cfg['batch_size']}, checkpointing, {dtype}",
                "sec_per_step": seconds,
                "rate": clips_per_sec * frames,
                "unit": "frames/s",
                "peak_gib": peak_gib,
                "mfu": mfu(clips_per_sec * flops_per_clip[name], peak),
            }
        )
    return rows


def scd_rollout_check(sizes, device, dtypes, peak) -> list[dict]:
    cfg, scd_cfg = sizes["rollout"], sizes["scd"]
    size = scd_preset(scd_cfg["preset"], **scd_cfg["overrides"])
    grid, channels = scd_cfg["grid"], 32
    tokens_per_frame = grid[0] * grid[1]
    dtype = dtypes[-1]
    scd, causal_dit = scd_and_causal_dit(size, channels, grid, device)
    scd.eval()
    causal_dit.eval()
    context = torch.randn(1, cfg["context"], tokens_per_frame, channels, device=device)

    steps = cfg["steps"]
    # Inference FLOPs per frame: SCD = one encoder pass + T decoder passes over 2N tokens;
    # the causal DiT = T + 1 passes of every block (the last one caches the clean frame).
    flops_per_frame = {
        "SCD": 2 * tokens_per_frame * (block_weights(scd.encoder) + steps * 2 * block_weights(scd.decoder)),
        "causal DiT": 2 * tokens_per_frame * (steps + 1) * block_weights(causal_dit),
    }

    rows = []
    for name, rollout, network in (("SCD", scd_rollout, scd), ("causal DiT", causal_dit_rollout, causal_dit)):
        with autocast_context(device, dtype):
            rollout_frame_times(rollout, network, context, 2, steps)
            gaps = rollout_frame_times(rollout, network, context, cfg["frames"] + 1, steps)
        seconds = statistics.median(gaps[1:])
        rows.append(
            {
                "section": "scd_m_rollout",
                "setting": f"{name} ({scd_cfg['preset']} size), {cfg['context']} context frames, {steps} Euler steps, batch 1, {dtype}",
                "sec_per_step": seconds,
                "rate": 1.0 / seconds,
                "unit": "frames/s",
                "first_frame_sec": gaps[0],
                "mfu": mfu(flops_per_frame[name] / seconds, peak),
            }
        )

    scd_row, dit_row = rows
    scd_row["speedup_vs_causal_dit"] = dit_row["sec_per_step"] / scd_row["sec_per_step"]
    return rows


def fid_features(sizes, device, dtypes, peak) -> list[dict]:
    from unisep.metrics.inception import InceptionFeatureExtractor

    batch_size = sizes["fid"]["batch_size"]
    extractor = InceptionFeatureExtractor().to(device)
    images = torch.randint(0, 256, (batch_size, 3, 256, 256), dtype=torch.uint8, device=device)
    times = alternate({"fid": lambda: extractor(images)}, sizes["repeats"], device)
    seconds = median(times["fid"])
    return [
        {
            "section": "fid_features",
            "setting": f"Inception pool3 (TorchScript), batch {batch_size}, 256 px uint8 input, fp32",
            "sec_per_step": seconds,
            "rate": batch_size / seconds,
            "unit": "images/s",
            "sec_per_1000_images": 1000 * seconds / batch_size,
        }
    ]


SECTIONS = {
    "unite_b_train": unite_train,
    "host_sync": host_sync,
    "scd_m_train": scd_train,
    "scd_m_rollout": scd_rollout_check,
    "fid_features": fid_features,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="run every section on the CPU at tiny sizes")
    parser.add_argument("--budget", type=float, default=390.0, help="seconds after which remaining sections are skipped (default: 390)")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS), help="sections to run (default: all)")
    add_out_argument(parser, "gpu_check", "JSON output (default: bench/results/gpu_check.json, or gpu_check_dry_run.json with --dry-run)")
    args = parser.parse_args(argv)

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible; run on a GPU machine, or pass --dry-run to check the script on the CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    sizes = DRY if args.dry_run else FULL
    dtypes = ["fp32"] if args.dry_run else ["fp32", "bf16"]
    if device.type == "cpu":
        torch.set_num_threads(1)
    if device.type == "cuda":
        # TF32 matrix products for the fp32 rows, as a GPU training run would use.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak = peak_bf16_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    torch.manual_seed(0)

    started = time.perf_counter()
    rows, skipped = [], []
    for name in args.only:
        elapsed = time.perf_counter() - started
        if elapsed > args.budget:
            skipped.append(name)
            print(f"gpu_check: skipped {name}, the {args.budget:.0f} s budget is spent", file=sys.stderr)
            continue
        section_start = time.perf_counter()
        rows.extend(SECTIONS[name](sizes, device, dtypes, peak))
        print(f"gpu_check: {name} done in {time.perf_counter() - section_start:.0f} s", file=sys.stderr)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    timed = [row for row in rows if "rate" in row]
    print_table(
        timed,
        [
            ("setting", "setting", "s"),
            ("rate", "rate", ".1f"),
            ("unit", "unit", "s"),
            ("sec_per_step", "s/step", ".4f"),
            ("peak_gib", "peak (GiB)", ".1f"),
            ("mfu", "MFU", ".3f"),
        ],
    )
    for row in rows:
        if row["section"] == "host_sync":
            print(f"host reads in the step: {row['python_reads']} Python reads, CUDA syncs: {row['cuda_syncs']}")
    # A dry run writes beside the GPU record, never over it, so CPU figures cannot pass
    # for a GPU check.
    write_run(
        "gpu_check_dry_run" if args.dry_run else "gpu_check",
        " ".join(["bash", "bench/gpu_check.sh", *(["--dry-run"] if args.dry_run else [])]),
        started,
        {
            "dry_run": args.dry_run,
            "peak_bf16_flops": peak,
            "sizes": {key: value for key, value in sizes.items() if key != "repeats"},
            "skipped": skipped,
        },
        {"rows": rows},
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
