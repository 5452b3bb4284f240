"""SCD against causal-DiT training throughput (frames/s) at equal total depth and width.

Each variant is one full training step on the same token clips (the frozen frame
tokenizer is identical for both models and left out): the module's loss object, one
backward, gradient clipping at 1.0, AdamW and the EMA update. Variants alternate in one
process after a warm-up; the figure of a variant is the median over the rounds.

- `scd`: causal encoder once over the clip, then the frame decoder twice with fresh
  noise (the reference recipe, `decoder_passes=2`);
- `scd_1pass`: the same with one decoder pass;
- `causal_dit`: the baseline, every layer over the whole clip with the block-causal
  mask.

SCD's decoder sees each frame's noisy tokens and context tokens together (twice the
sequence), so per trained frame it does more work than the encoder alone. Frames/s
counts the frames of the clip, predicted or not.

    python bench/scd_train.py                   # about 1 minute on a 2-core CPU
    python bench/scd_train.py --preset scd_m --grid 8 8 --frames 32 --batch-size 8 --dtype bf16   # GPU
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from common import activation_mib, add_run_arguments, alternate, command_line, cuda_peak, median, print_table, start_run, write_run
from setups import SCD_GRADIENT_CLIP, adamw, autocast_context, scd_and_causal_dit, scd_and_causal_dit_sizes, train_step
from unisep.lightning_modules.causal_dit_loss import CausalDiTLoss
from unisep.lightning_modules.ema import ExponentialMovingAverage
from unisep.lightning_modules.scd_loss import SCDLoss
from unisep.networks.scd_presets import scd_preset


def video_train_step(network, loss_fn, batch, autocast):
    """Return closures of one training step of `network` with `loss_fn` and of its loss forward alone."""
    optimizer = adamw(network.parameters(), "fused" if next(network.parameters()).is_cuda else "foreach", lr=1e-4)
    ema = ExponentialMovingAverage(network, 0.9999)
    step = train_step(network, lambda: loss_fn(network, batch), optimizer, SCD_GRADIENT_CLIP, autocast, ema)

    def forward_only():
        loss, _ = loss_fn(network, batch)
        return loss

    return step, forward_only


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="scd_tiny", help="SCD size preset; the causal DiT matches it (default: scd_tiny)")
    parser.add_argument("--width", type=int, default=128, help="width override, 0 keeps the preset's (default: 128)")
    parser.add_argument("--heads", type=int, default=2, help="heads override, 0 keeps the preset's (default: 2)")
    parser.add_argument("--grid", type=int, nargs=2, default=[4, 4], help="token grid of a frame (default: 4 4)")
    parser.add_argument("--token-channels", type=int, default=32, help="channels per frame token (default: 32)")
    parser.add_argument("--frames", type=int, default=16, help="frames per training clip (default: 16)")
    parser.add_argument("--batch-size", type=int, default=4, help="clips per step (default: 4)")
    add_run_arguments(parser, "scd_train", repeats=4, dtype=True)
    args = parser.parse_args(argv)

    device = start_run(args)
    started = time.perf_counter()
    overrides = {key: value for key, value in (("width", args.width), ("heads", args.heads)) if value}
    size = scd_preset(args.preset, **overrides)
    grid = tuple(args.grid)
    scd, causal_dit = scd_and_causal_dit(size, args.token_channels, grid, device)
    tokens = torch.randn(args.batch_size, args.frames, grid[0] * grid[1], args.token_channels, device=device)
    batch = {"tokens": tokens}
    autocast = lambda: autocast_context(device, args.dtype)  # noqa: E731

    steps = {
        "scd": video_train_step(scd, SCDLoss(decoder_passes=2), batch, autocast),
        "scd_1pass": video_train_step(scd, SCDLoss(decoder_passes=1), batch, autocast),
        "causal_dit": video_train_step(causal_dit, CausalDiTLoss(), batch, autocast),
    }
    times = alternate({name: step for name, (step, _) in steps.items()}, args.repeats, device)
    rows = []
    frames = args.batch_size * args.frames
    for name, (step, forward_only) in steps.items():
        activation = activation_mib(forward_only)
        peak = cuda_peak(step, device)
        seconds = median(times[name])
        network = causal_dit if name == "causal_dit" else scd
        rows.append(
            {
                "model": name,
                "parameters_m": sum(p.numel() for p in network.parameters()) / 1e6,
                "sec_per_step": seconds,
                "frames_per_sec": frames / seconds,
                "activation_mib": activation,
                "peak_mib": peak,
            }
        )
    dit_rate = next(row["frames_per_sec"] for row in rows if row["model"] == "causal_dit")
    for row in rows:
        row["rate_vs_causal_dit"] = row["frames_per_sec"] / dit_rate

    print_table(
        rows,
        [
            ("model", "model", "s"),
            ("parameters_m", "params (M)", ".2f"),
            ("frames_per_sec", "frames/s", ".1f"),
            ("rate_vs_causal_dit", "rate vs causal DiT", ".2f"),
            ("activation_mib", "activations (MiB)", ".1f"),
            ("peak_mib", "CUDA peak (MiB)", ".0f"),
        ],
    )
    write_run(
        "scd_train",
        command_line("scd_train.py", argv),
        started,
        {
            "settings": {
                **scd_and_causal_dit_sizes(size),
                "grid": list(grid),
                "token_channels": args.token_channels,
                "frames": args.frames,
                "batch_size": args.batch_size,
                "dtype": args.dtype,
                "device": str(device),
                "repeats": args.repeats,
                "step": "loss forward + backward + clip_grad_norm + AdamW + EMA update",
            },
        },
        {"rows": rows},
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
