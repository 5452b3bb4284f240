"""Generation latency per frame: SCD against the causal DiT of equal total depth and width.

For each setting (sampling steps, context frames) both models roll out the same number
of frames after the same random context, in one process, alternating SCD and the
causal DiT after an untimed warm-up. A rollout yields frame by frame: the first
frame's latency includes the KV-cache prefill of the context, and the steady-state
time per frame is the median gap between later frames. A setting's figure is the
median over the rounds, and `speedup` is the causal DiT's steady-state time over SCD's.

Weights are random because cost does not depend on their values. Timing stops at the
tokens, so no frame tokenizer decodes to pixels. Batch 1, Euler, no guidance.

    python bench/scd_latency.py                                   # default sweep
    python bench/scd_latency.py --steps 50 --context 144 --repeats 5
    python bench/scd_latency.py --width 1024 --heads 16 --grid 8 8 --repeats 5   # SCD-M shape, GPU
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from common import add_run_arguments, command_line, median, print_table, start_run, write_run
from setups import rollout_frame_times, scd_and_causal_dit, scd_and_causal_dit_sizes
from unisep.lightning_modules.video_rollout import causal_dit_rollout, scd_rollout
from unisep.networks.scd_presets import SCDSize

COLUMNS = (
    ("steps", "steps", "d"),
    ("context_frames", "context", "d"),
    ("scd_sec_per_frame", "SCD s/frame", ".4f"),
    ("causal_dit_sec_per_frame", "causal-DiT s/frame", ".4f"),
    ("speedup", "speedup", ".2f"),
    ("scd_first_frame_sec", "SCD first frame s", ".3f"),
    ("causal_dit_first_frame_sec", "causal-DiT first frame s", ".3f"),
)


def measure_setting(
    models: dict[str, tuple], context: torch.Tensor, steps: int, frames: int, repeats: int
) -> dict[str, object]:
    """Alternate the models for `repeats` rounds after one untimed single-frame rollout each."""
    for rollout, network in models.values():
        rollout_frame_times(rollout, network, context, 1, steps)

    first: dict[str, list[float]] = {name: [] for name in models}
    steady: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, (rollout, network) in models.items():
            times = rollout_frame_times(rollout, network, context, frames + 1, steps)
            first[name].append(times[0])
            steady[name].append(median(times[1:]))

    scd_steady, dit_steady = median(steady["scd"]), median(steady["causal_dit"])
    return {
        "steps": steps,
        "context_frames": context.shape[1],
        "scd_sec_per_frame": scd_steady,
        "causal_dit_sec_per_frame": dit_steady,
        "speedup": dit_steady / scd_steady,
        "scd_first_frame_sec": median(first["scd"]),
        "causal_dit_first_frame_sec": median(first["causal_dit"]),
        "scd_frames_per_sec": 1.0 / scd_steady,
        "causal_dit_frames_per_sec": 1.0 / dit_steady,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 10, 50], help="sampling steps per frame to sweep")
    parser.add_argument("--context", type=int, nargs="+", default=[16, 144], help="context frames to sweep")
    parser.add_argument("--frames", type=int, default=2, help="steady-state frames timed per rollout (default: 2)")
    parser.add_argument("--width", type=int, default=256, help="width of both models (default: 256)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default: 4, 64 channels each)")
    parser.add_argument("--encoder-depth", type=int, default=8, help="SCD encoder blocks (default: 8, as SCD-M)")
    parser.add_argument("--decoder-depth", type=int, default=4, help="SCD decoder blocks (default: 4, as SCD-M)")
    parser.add_argument("--grid", type=int, nargs=2, default=[4, 4], help="token grid of one frame (default: 4 4)")
    parser.add_argument("--token-channels", type=int, default=32, help="channels per frame token (default: 32, as DC-AE)")
    add_run_arguments(parser, "scd_latency", repeats=3)
    args = parser.parse_args(argv)

    device = start_run(args)
    size = SCDSize(width=args.width, heads=args.heads, encoder_depth=args.encoder_depth, decoder_depth=args.decoder_depth)
    grid = (args.grid[0], args.grid[1])
    scd, causal_dit = scd_and_causal_dit(size, args.token_channels, grid, device)
    scd.eval()
    causal_dit.eval()
    models = {"scd": (scd_rollout, scd), "causal_dit": (causal_dit_rollout, causal_dit)}

    started = time.perf_counter()
    rows = []
    for context_frames in args.context:
        context = torch.randn(1, context_frames, grid[0] * grid[1], args.token_channels, device=device)
        for steps in args.steps:
            rows.append(measure_setting(models, context, steps, args.frames, args.repeats))
            print(f"measured steps={steps} context={context_frames} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    print_table(rows, COLUMNS)

    write_run(
        "scd_latency",
        command_line("scd_latency.py", argv),
        started,
        {
            "settings": {
                **scd_and_causal_dit_sizes(size),
                "tokens_per_frame": grid[0] * grid[1],
                "token_channels": args.token_channels,
                "batch_size": 1,
                "solver": "euler",
                "guidance_scale": 1.0,
                "timed_frames": args.frames,
                "repeats": args.repeats,
                "includes_pixel_decoding": False,
                "device": str(device),
            },
        },
        {"rows": rows},
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
