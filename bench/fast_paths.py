"""Fast paths of unisep, each measured against the implementation it replaced, in one run.

Every comparison alternates the "before" and "after" variants in this process after a
warm-up and reports the median time of each and their ratio (before / after, so > 1
means the fast path is faster):

- `sdpa`: `scaled_dot_product_attention` against softmax(Q K^T) V written out, on a
  UNITE training step with 256 image tokens;
- `adamw`: the optimizer step alone, the per-parameter loop and the multi-tensor
  (foreach) AdamW against the fused kernel that `build_optimizer` picks;
- `compile`: `UNITE(compile=True)` against eager (the compile time itself is reported
  apart and excluded);
- `checkpointing`: gradient checkpointing of the GE blocks, a memory option that
  costs time (here "before" is with it, "after" without);
- `batched_passes`: the N = 3 denoising copies in one GE call against one call each;
- `kv_cache`: the preallocated `KVCache` against a cache grown by concatenation, in
  SCD and causal-DiT rollouts after 64 context frames;
- `host_reads`: Python reads of tensor values (each a host-device synchronisation on a
  GPU) inside the UNITE and SCD training steps, counted, not timed;
- `bf16`: bf16 autocast against fp32, on CUDA only.

    python bench/fast_paths.py                   # about 2 minutes on a 2-core CPU
    python bench/fast_paths.py --only compile    # up to 5 minutes, mostly compiling
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from baselines import concatenating_cache, count_cuda_syncs, count_host_reads, explicit_attention
from common import activation_mib, add_run_arguments, alternate, command_line, median, print_table, start_run, time_call, write_run
from setups import (
    adamw,
    autocast_context,
    build_unite,
    image_batch,
    rollout_frame_times,
    scd_and_causal_dit,
    unite_loss_forward,
    unite_optimizer,
    unite_train_step,
)
from unisep.lightning_modules.optim import adamw_kernel
from unisep.lightning_modules.scd_loss import SCDLoss
from unisep.lightning_modules.video_rollout import causal_dit_rollout, scd_rollout
from unisep.networks.scd import SCDNetwork
from unisep.networks.scd_presets import scd_preset

SECTIONS = ("sdpa", "adamw", "compile", "checkpointing", "batched_passes", "kv_cache", "host_reads", "bf16")
# Compiling the UNITE step took 283 s on a 2-core CPU with an empty compile cache, so it runs only on request.
DEFAULT_SECTIONS = tuple(section for section in SECTIONS if section != "compile")


def row(path: str, setting: str, before: str, after: str, times: dict[str, list[float]], default: str, **extra) -> dict:
    """Build a result row from the alternating times of the "before" and "after" variants."""
    before_time, after_time = median(times[before]), median(times[after])
    return {
        "fast_path": path,
        "setting": setting,
        "before": before,
        "after": after,
        "before_ms": 1e3 * before_time,
        "after_ms": 1e3 * after_time,
        "speedup": before_time / after_time,
        "default": default,
        **extra,
    }


def measure_sdpa(args, device) -> list[dict]:
    module = build_unite(args.preset, 32, 2, device, ema_decay=0.999)
    step = unite_train_step(module, unite_optimizer(module), image_batch(8, 32, module.num_classes, device))

    def explicit():
        with explicit_attention():
            step()

    times = alternate({"explicit softmax": explicit, "SDPA": step}, args.repeats, device)
    return [row("sdpa", f"UNITE step, {args.preset}, 32 px / patch 2 (256 + 16 tokens), batch 8", "explicit softmax", "SDPA", times, "SDPA")]


def measure_adamw(args, device) -> list[dict]:
    rows = []
    for preset in (args.preset, "unite_small"):
        module = build_unite(preset, 16, 4, device)
        params = list(module.network.parameters())
        for parameter in params:
            parameter.grad = torch.randn_like(parameter)
        optimizers = {name: adamw(params, name, lr=1e-4) for name in ("loop", "foreach", "fused")}
        times = alternate({name: optimizer.step for name, optimizer in optimizers.items()}, 3 * args.repeats, device)
        chosen = "fused" if adamw_kernel(params).get("fused") else "foreach"
        setting = f"optimizer step, {preset} ({sum(p.numel() for p in params) / 1e6:.1f}M parameters)"
        rows.append(row("adamw", setting, "loop", "fused", times, chosen))
        rows.append(row("adamw", setting, "foreach", "fused", times, chosen))
    return rows


def measure_compile(args, device) -> list[dict]:
    batch = image_batch(args.batch_size, 16, 1000, device)
    eager = build_unite(args.preset, 16, 4, device, ema_decay=0.999)
    compiled = build_unite(args.preset, 16, 4, device, ema_decay=0.999, compile=True)
    compiled.network.load_state_dict(eager.network.state_dict())
    eager_step = unite_train_step(eager, unite_optimizer(eager), batch)
    compiled_step = unite_train_step(compiled, unite_optimizer(compiled), batch)
    compile_seconds = time_call(compiled_step, device)
    times = alternate({"eager": eager_step, "torch.compile": compiled_step}, args.repeats, device)
    return [
        row(
            "compile",
            f"UNITE step, {args.preset}, batch {args.batch_size}",
            "eager",
            "torch.compile",
            times,
            "off (opt in with compile: true)",
            compile_seconds=compile_seconds,
        )
    ]


def measure_checkpointing(args, device) -> list[dict]:
    module = build_unite(args.preset, 16, 4, device, ema_decay=0.999)
    batch = image_batch(args.batch_size, 16, module.num_classes, device)
    step = unite_train_step(module, unite_optimizer(module), batch)
    forward = unite_loss_forward(module, batch)
    memory = {}

    def with_checkpointing():
        module.network.set_gradient_checkpointing(True)
        step()

    def without():
        module.network.set_gradient_checkpointing(False)
        step()

    for name, enabled in (("checkpointing", True), ("no checkpointing", False)):
        module.network.set_gradient_checkpointing(enabled)
        memory[name] = activation_mib(forward)
        module.network.zero_grad(set_to_none=True)
    times = alternate({"checkpointing": with_checkpointing, "no checkpointing": without}, args.repeats, device)
    module.network.set_gradient_checkpointing(False)
    return [
        row(
            "checkpointing",
            f"UNITE step, {args.preset}, batch {args.batch_size}, N = 3",
            "checkpointing",
            "no checkpointing",
            times,
            "off (turn on when activations do not fit)",
            before_activation_mib=memory["checkpointing"],
            after_activation_mib=memory["no checkpointing"],
        )
    ]


def measure_batched_passes(args, device) -> list[dict]:
    module = build_unite(args.preset, 16, 4, device, ema_decay=0.999)
    step = unite_train_step(module, unite_optimizer(module), image_batch(args.batch_size, 16, module.num_classes, device))

    def looped():
        module.loss.chunk_size = 1
        step()

    def batched():
        module.loss.chunk_size = module.loss.denoising_passes
        step()

    times = alternate({"looped": looped, "batched": batched}, args.repeats, device)
    return [row("batched_passes", f"UNITE step, {args.preset}, batch {args.batch_size}, N = 3", "looped", "batched", times, "batched (chunk_size=None)")]


def extension_seconds(network: SCDNetwork, context: torch.Tensor, frames: int, device) -> float:
    """Return the median time of appending one frame to a cache prefilled with `context`."""
    with torch.no_grad():
        cache = network.new_cache(context.shape[0], context.shape[1] + frames)
        network.extend(context, cache)
        frame = context[:, -1:]
        return statistics.median(time_call(lambda: network.extend(frame, cache), device) for _ in range(frames))


def measure_kv_cache(args, device) -> list[dict]:
    grid, channels = (4, 4), 32
    scd, causal_dit = scd_and_causal_dit(scd_preset("scd_tiny", width=128, heads=2), channels, grid, device)
    scd.eval()
    causal_dit.eval()
    context = torch.randn(1, args.context, grid[0] * grid[1], channels, device=device)

    def scd_extension():
        return extension_seconds(scd, context, 8, device)

    measurements = {"SCD encoder pass of one new frame (appends to the cache)": scd_extension}
    for name, rollout, network in (("SCD", scd_rollout, scd), ("causal DiT", causal_dit_rollout, causal_dit)):

        def steady(network=network, rollout=rollout):
            return statistics.median(rollout_frame_times(rollout, network, context, 5, args.rollout_steps)[1:])

        measurements[f"{name} rollout s/frame, {args.rollout_steps} Euler steps"] = steady

    rows = []
    for setting, measure in measurements.items():
        network = scd if setting.startswith("SCD") else causal_dit

        def concatenating(network=network, measure=measure):
            with concatenating_cache(network):
                return measure()

        per_frame = {"concatenating": [], "preallocated": []}
        measure(), concatenating()  # warm-up
        for _ in range(args.repeats):
            per_frame["concatenating"].append(concatenating())
            per_frame["preallocated"].append(measure())
        setting = f"{setting}, {args.context} context frames, width 128, 12 blocks"
        rows.append(row("kv_cache", setting, "concatenating", "preallocated", per_frame, "preallocated"))
    return rows


def measure_host_reads(args, device) -> list[dict]:
    module = build_unite(args.preset, 16, 4, device, ema_decay=0.999)
    batch = image_batch(args.batch_size, 16, module.num_classes, device)
    scd = SCDNetwork(scd_preset("scd_tiny"), 32, (4, 4)).to(device)
    clip = {"tokens": torch.randn(2, 8, 16, 32, device=device)}
    rows = []
    for name, run, parameters in (
        ("UNITE", lambda: module.loss(module.network, batch, step=10_000)[0], module.network.parameters),
        ("SCD", lambda: SCDLoss()(scd, clip)[0], scd.parameters),
    ):

        def backward_and_clip(run=run, parameters=parameters):
            run().backward()
            torch.nn.utils.clip_grad_norm_(list(parameters()), 1.0, foreach=True)

        with count_host_reads() as reads:
            backward_and_clip()
        cuda_syncs = count_cuda_syncs(backward_and_clip, device)
        rows.append(
            {
                "fast_path": "host_reads",
                "setting": f"{name} loss forward + backward + clip_grad_norm",
                "python_reads": len(reads),
                "cuda_syncs": cuda_syncs,
                "default": "no reads in the step; values are read only at logging steps",
            }
        )
    return rows


def measure_bf16(args, device) -> list[dict]:
    if device.type != "cuda":
        return [{"fast_path": "bf16", "setting": "GPU only: run bench/gpu_check.sh on a GPU", "default": "bf16-mixed in the GPU recipes"}]
    module = build_unite(args.preset, 16, 4, device, ema_decay=0.999)
    batch = image_batch(args.batch_size, 16, module.num_classes, device)
    fp32 = unite_train_step(module, unite_optimizer(module), batch)
    bf16 = unite_train_step(module, unite_optimizer(module), batch, lambda: autocast_context(device, "bf16"))
    times = alternate({"fp32": fp32, "bf16 autocast": bf16}, args.repeats, device)
    return [row("bf16", f"UNITE step, {args.preset}, batch {args.batch_size}", "fp32", "bf16 autocast", times, "bf16-mixed")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(DEFAULT_SECTIONS), help="sections to run (default: all but compile)")
    parser.add_argument("--preset", default="unite_tiny", help="UNITE preset of the training-step sections (default: unite_tiny)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per UNITE step (default: 16)")
    parser.add_argument("--context", type=int, default=64, help="context frames of the KV-cache rollouts (default: 64)")
    parser.add_argument("--rollout-steps", type=int, default=10, help="Euler steps per rolled-out frame (default: 10)")
    out_help = "JSON output (default: bench/results/fast_paths.json, or fast_paths_<sections>.json for --only)"
    add_run_arguments(parser, "fast_paths", repeats=4, out_help=out_help)
    args = parser.parse_args(argv)

    device = start_run(args)
    started = time.perf_counter()
    measures = {
        "sdpa": measure_sdpa,
        "adamw": measure_adamw,
        "compile": measure_compile,
        "checkpointing": measure_checkpointing,
        "batched_passes": measure_batched_passes,
        "kv_cache": measure_kv_cache,
        "host_reads": measure_host_reads,
        "bf16": measure_bf16,
    }
    rows = []
    for section in SECTIONS:
        if section in args.only:
            rows.extend(measures[section](args, device))
            print(f"measured {section} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    timed = [r for r in rows if "speedup" in r]
    print_table(
        timed,
        [
            ("fast_path", "fast path", "s"),
            ("setting", "setting", "s"),
            ("before", "before", "s"),
            ("after", "after", "s"),
            ("before_ms", "before (ms)", ".1f"),
            ("after_ms", "after (ms)", ".1f"),
            ("speedup", "before / after", ".2f"),
            ("before_activation_mib", "activations before (MiB)", ".1f"),
            ("after_activation_mib", "after (MiB)", ".1f"),
        ],
    )
    for compiled in (r for r in rows if "compile_seconds" in r):
        print(f"first torch.compile step, compiling included: {compiled['compile_seconds']:.0f} s")
    counted = [r for r in rows if "python_reads" in r]
    if counted:
        print()
        print_table(counted, [("setting", "host reads in", "s"), ("python_reads", "Python reads", "d"), ("cuda_syncs", "CUDA syncs", "d")])
    # A partial run writes its own file, so it never overwrites the full table.
    name = "fast_paths" if set(args.only) == set(DEFAULT_SECTIONS) else "fast_paths_" + "_".join(args.only)
    write_run(
        name,
        command_line("fast_paths.py", argv),
        started,
        {
            "settings": {
                "preset": args.preset,
                "batch_size": args.batch_size,
                "context_frames": args.context,
                "rollout_steps": args.rollout_steps,
                "device": str(device),
                "repeats": args.repeats,
            },
        },
        {"rows": rows},
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
