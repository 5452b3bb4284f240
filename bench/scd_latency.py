"""Generation latency per frame: SCD against the causal DiT of equal total depth and width.

For each setting (sampling steps, context frames) both models roll out the same number
of frames after the same random context, in one process, alternating SCD and the
causal DiT, after a warm-up. Each rollout yields frame by frame: the first frame's
latency includes the KV-cache prefill of the context, and the steady-state time per
frame is the median gap between later frames. The figure of a setting is the median
over the repeats, and `speedup` is the causal DiT's steady-state time over SCD's.

Weights are random (cost does not depend on their values), and timing stops at the
tokens, so no frame tokenizer decodes to pixels.

    python bench/scd_latency.py                      # default sweep, single-threaded
    python bench/scd_latency.py --steps 50 --context 144 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from unisep.lightning_modules.video_rollout import causal_dit_rollout, scd_rollout
from unisep.networks.causal_dit import CausalDiT
from unisep.networks.scd import SCDNetwork
from unisep.networks.scd_presets import SCDSize, matching_causal_dit

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "scd_latency.json"


def hardware() -> dict[str, object]:
    """Describe the machine: CPU model and cores, GPU name, torch version and threads."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def time_rollout(rollout, network, context: torch.Tensor, frames: int, steps: int, device: torch.device) -> list[float]:
    """Return the wall time of each yielded frame, from the call for the first one."""

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    stamps = [clock()]
    for _frame in rollout(network, context, frames, steps=steps, generator=torch.Generator(device="cpu").manual_seed(0)):
        stamps.append(clock())
    return [later - earlier for earlier, later in zip(stamps, stamps[1:])]


def measure_setting(
    scd: SCDNetwork,
    causal_dit: CausalDiT,
    steps: int,
    context_frames: int,
    frames: int,
    repeats: int,
    tokens_per_frame: int,
    token_channels: int,
    device: torch.device,
) -> dict[str, object]:
    """Alternate the two models `repeats` times after one untimed warm-up each."""
    context = torch.randn(1, context_frames, tokens_per_frame, token_channels, device=device)
    models = {"scd": (scd_rollout, scd), "causal_dit": (causal_dit_rollout, causal_dit)}
    for rollout, network in models.values():
        time_rollout(rollout, network, context, 1, steps, device)

    first: dict[str, list[float]] = {name: [] for name in models}
    steady: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, (rollout, network) in models.items():
            gaps = time_rollout(rollout, network, context, frames + 1, steps, device)
            first[name].append(gaps[0])
            steady[name].append(statistics.median(gaps[1:]))

    scd_steady = statistics.median(steady["scd"])
    dit_steady = statistics.median(steady["causal_dit"])
    return {
        "steps": steps,
        "context_frames": context_frames,
        "scd_sec_per_frame": scd_steady,
        "causal_dit_sec_per_frame": dit_steady,
        "speedup": dit_steady / scd_steady,
        "scd_first_frame_sec": statistics.median(first["scd"]),
        "causal_dit_first_frame_sec": statistics.median(first["causal_dit"]),
        "scd_frames_per_sec": 1.0 / scd_steady,
        "causal_dit_frames_per_sec": 1.0 / dit_steady,
        "repeats": repeats,
        "timed_frames": frames,
    }


def print_table(rows: list[dict[str, object]]) -> None:
    header = f"{'steps':>5} {'context':>7} {'SCD s/frame':>12} {'causal-DiT s/frame':>19} {'speedup':>8} {'SCD 1st':>8} {'DiT 1st':>8}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['steps']:>5} {row['context_frames']:>7} {row['scd_sec_per_frame']:>12.4f}"
            f" {row['causal_dit_sec_per_frame']:>19.4f} {row['speedup']:>7.2f}x"
            f" {row['scd_first_frame_sec']:>8.3f} {row['causal_dit_first_frame_sec']:>8.3f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 10, 50], help="sampling steps per frame to sweep")
    parser.add_argument("--context", type=int, nargs="+", default=[16, 144], help="context frames to sweep")
    parser.add_argument("--frames", type=int, default=2, help="steady-state frames timed per rollout (default: 2)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats per setting (default: 3)")
    parser.add_argument("--width", type=int, default=256, help="model width of both models (default: 256)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default: 4, 64 channels each)")
    parser.add_argument("--encoder-depth", type=int, default=8, help="SCD encoder blocks (default: 8, as SCD-M)")
    parser.add_argument("--decoder-depth", type=int, default=4, help="SCD decoder blocks (default: 4, as SCD-M)")
    parser.add_argument("--grid", type=int, nargs=2, default=[4, 4], help="token grid of a frame (default: 4 4)")
    parser.add_argument("--token-channels", type=int, default=32, help="channels per frame token (default: 32, as DC-AE)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op CPU threads (default: 1; 0 keeps torch's choice)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output file (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)

    # One thread by default: batch-1 rollouts run small matrix products, and spinning
    # OpenMP threads on a CPU shared with other jobs distort the timings badly.
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    size = SCDSize(width=args.width, heads=args.heads, encoder_depth=args.encoder_depth, decoder_depth=args.decoder_depth)
    twin = matching_causal_dit(size)
    grid = tuple(args.grid)
    scd = SCDNetwork(size, args.token_channels, grid).to(device).eval()
    causal_dit = CausalDiT(args.token_channels, grid, twin.width, twin.depth, twin.heads, twin.mlp_ratio).to(device).eval()
    tokens_per_frame = grid[0] * grid[1]

    started = time.perf_counter()
    rows = []
    for context_frames in args.context:
        for steps in args.steps:
            rows.append(
                measure_setting(
                    scd, causal_dit, steps, context_frames, args.frames, args.repeats,
                    tokens_per_frame, args.token_channels, device,
                )
            )
            print(f"measured steps={steps} context={context_frames} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    print_table(rows)

    result = {
        "benchmark": "scd_latency",
        "command": " ".join(["python", "bench/scd_latency.py", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {
            "scd": {"width": size.width, "heads": size.heads, "encoder_depth": size.encoder_depth, "decoder_depth": size.decoder_depth},
            "causal_dit": {"width": twin.width, "heads": twin.heads, "depth": twin.depth},
            "tokens_per_frame": tokens_per_frame,
            "token_channels": args.token_channels,
            "batch_size": 1,
            "solver": "euler",
            "guidance_scale": 1.0,
            "includes_pixel_decoding": False,
            "device": str(device),
        },
        "hardware": hardware(),
        "total_seconds": time.perf_counter() - started,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
