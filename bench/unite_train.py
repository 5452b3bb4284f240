"""UNITE training throughput: shared against separate weights, and the cost of N.

Each variant is one full training step (tokenize, decode, N denoising passes, one
backward, gradient clipping, AdamW and the EMA update) on the same batch. All variants
run in one process, alternating, after a warm-up; the figure of a variant is the
median over the rounds, and ratios are taken against a baseline row of the same run.

- `weights`: one shared Generative Encoder (the method) against a separate denoiser
  GE (the two-network baseline), both at the default N.
- `passes`: N = 1, 3, 7, 14 denoising passes per reconstruction pass, each run batched
  (all N noised copies in one GE call, `chunk_size=None`) and looped (one GE call per
  copy, `chunk_size=1`).

Memory: `activation_mib` counts the tensors that autograd keeps for backward (the part
of peak memory that grows with N and the batch); on CUDA `peak_mib` adds the allocator
peak of the whole step.

    python bench/unite_train.py                 # about 2 minutes on a 2-core CPU
    python bench/unite_train.py --preset unite_base --image-size 256 --patch-size 16 \
        --batch-size 32 --dtype bf16            # on a GPU
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from common import activation_mib, add_run_arguments, alternate, command_line, cuda_peak, median, print_table, start_run, write_run
from setups import autocast_context, build_unite, image_batch, unite_loss_forward, unite_optimizer, unite_train_step


def memory_of(module, batch, step_fn, device) -> tuple[float, float | None]:
    """Return (activation MiB, CUDA peak MiB or None) of one step of `module`."""
    activation = activation_mib(unite_loss_forward(module, batch))
    module.network.zero_grad(set_to_none=True)
    return activation, cuda_peak(step_fn, device)


def configure_passes(module, passes: int, batched: bool) -> None:
    """Set N and the chunking of the module's loss in place."""
    module.loss.denoising_passes = passes
    module.loss.chunk_size = passes if batched else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="unite_tiny", help="UNITE size preset (default: unite_tiny, about 2M parameters)")
    parser.add_argument("--image-size", type=int, default=16, help="image side in pixels (default: 16)")
    parser.add_argument("--patch-size", type=int, default=4, help="patch side in pixels (default: 4, so 16 patches)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step (default: 16)")
    parser.add_argument("--passes", type=int, nargs="+", default=[1, 3, 7, 14], help="N values to sweep")
    parser.add_argument("--default-passes", type=int, default=3, help="N of the weights comparison (default: 3)")
    add_run_arguments(parser, "unite_train", repeats=4, dtype=True)
    args = parser.parse_args(argv)

    device = start_run(args)
    started = time.perf_counter()
    autocast = lambda: autocast_context(device, args.dtype)  # noqa: E731
    options = dict(denoising_passes=args.default_passes, ema_decay=0.999)
    shared = build_unite(args.preset, args.image_size, args.patch_size, device, **options)
    separate = build_unite(args.preset, args.image_size, args.patch_size, device, separate_denoiser=True, **options)
    batch = image_batch(args.batch_size, args.image_size, shared.num_classes, device)

    # --- shared against separate weights, at the default N, batched passes.
    steps = {
        "shared": unite_train_step(shared, unite_optimizer(shared), batch, autocast),
        "separate": unite_train_step(separate, unite_optimizer(separate), batch, autocast),
    }
    times = alternate(steps, args.repeats, device)
    weight_rows = []
    for name, module in (("shared", shared), ("separate", separate)):
        activation, peak = memory_of(module, batch, steps[name], device)
        seconds = median(times[name])
        weight_rows.append(
            {
                "variant": name,
                "passes": args.default_passes,
                "parameters_m": sum(p.numel() for p in module.network.parameters()) / 1e6,
                "sec_per_step": seconds,
                "images_per_sec": args.batch_size / seconds,
                "activation_mib": activation,
                "peak_mib": peak,
            }
        )
    base = weight_rows[0]["sec_per_step"]
    for row in weight_rows:
        row["time_vs_shared"] = row["sec_per_step"] / base
    del separate, steps
    print(f"measured shared vs separate ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    # --- N sweep, batched against looped, on the shared model.
    optimizer = unite_optimizer(shared)
    step = unite_train_step(shared, optimizer, batch, autocast)
    variants = {}
    for passes in args.passes:
        for batched in (True, False):
            if passes == 1 and not batched:
                continue  # one copy: batched and looped are the same call

            def run(passes=passes, batched=batched):
                configure_passes(shared, passes, batched)
                return step()

            variants[(passes, batched)] = run
    times = alternate(variants, args.repeats, device)
    pass_rows = []
    for (passes, batched), fn in variants.items():
        configure_passes(shared, passes, batched)
        activation, peak = memory_of(shared, batch, fn, device)
        seconds = median(times[(passes, batched)])
        pass_rows.append(
            {
                "passes": passes,
                "mode": "batched" if batched else "looped",
                "sec_per_step": seconds,
                "images_per_sec": args.batch_size / seconds,
                "activation_mib": activation,
                "peak_mib": peak,
            }
        )
    n1 = next(row["sec_per_step"] for row in pass_rows if row["passes"] == min(args.passes))
    batched_time = {row["passes"]: row["sec_per_step"] for row in pass_rows if row["mode"] == "batched"}
    for row in pass_rows:
        row["time_vs_min_n"] = row["sec_per_step"] / n1
        row["looped_over_batched"] = row["sec_per_step"] / batched_time[row["passes"]] if row["mode"] == "looped" else None

    print_table(
        weight_rows,
        [
            ("variant", "weights", "s"),
            ("parameters_m", "params (M)", ".2f"),
            ("images_per_sec", "images/s", ".1f"),
            ("time_vs_shared", "time vs shared", ".2f"),
            ("activation_mib", "activations (MiB)", ".1f"),
            ("peak_mib", "CUDA peak (MiB)", ".0f"),
        ],
    )
    print()
    print_table(
        pass_rows,
        [
            ("passes", "N", "d"),
            ("mode", "passes", "s"),
            ("images_per_sec", "images/s", ".1f"),
            ("time_vs_min_n", f"time vs N={min(args.passes)}", ".2f"),
            ("looped_over_batched", "looped / batched", ".2f"),
            ("activation_mib", "activations (MiB)", ".1f"),
            ("peak_mib", "CUDA peak (MiB)", ".0f"),
        ],
    )
    write_run(
        "unite_train",
        command_line("unite_train.py", argv),
        started,
        {
            "settings": {
                "preset": args.preset,
                "image_size": args.image_size,
                "patch_size": args.patch_size,
                "batch_size": args.batch_size,
                "dtype": args.dtype,
                "device": str(device),
                "repeats": args.repeats,
                "step": "loss forward + backward + clip_grad_norm + AdamW + EMA update",
            },
        },
        {"weights": weight_rows, "passes": pass_rows},
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
