"""UNITE sampling cost: seconds per image for Euler, Heun and dopri5, with and without guidance.

Each variant is one `UNITE.generate` call on the same labels (noise, the probability-flow
ODE on the K latent registers, the shared LayerNorm on every x-prediction, and the pixel
decoder). All variants alternate in one process after a warm-up; the figure of a
variant is the median over the rounds. `evaluations` counts GE calls; with guidance a
call carries the conditional and the null-class batch together, so it costs about
twice as much.

An untrained GE predicts a constant (adaLN-Zero), which an adaptive solver integrates
in a few steps, so the zero-initialised layers are filled with small random values
first (see `setups.randomize_zero_layers`). dopri5's evaluation count still depends
on the trained velocity field; the UNITE paper reports about 108 for its models.

    python bench/unite_sampling.py              # about 2 minutes on a 2-core CPU
    python bench/unite_sampling.py --preset unite_base --image-size 256 --patch-size 16 --batch-size 64
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from common import add_run_arguments, alternate, command_line, median, print_table, start_run, write_run
from setups import build_unite, randomize_zero_layers


def count_calls(network) -> list[int]:
    """Wrap `network.denoise` so that each call adds one to the returned counter."""
    counter = [0]
    denoise = network.denoise

    def counted(*args, **kwargs):
        counter[0] += 1
        return denoise(*args, **kwargs)

    network.denoise = counted
    return counter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="unite_tiny", help="UNITE size preset (default: unite_tiny)")
    parser.add_argument("--image-size", type=int, default=16, help="image side in pixels (default: 16)")
    parser.add_argument("--patch-size", type=int, default=4, help="patch side in pixels (default: 4)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per generate call (default: 8)")
    parser.add_argument("--steps", type=int, default=50, help="steps of Euler and Heun (default: 50)")
    parser.add_argument("--guidance", type=float, default=2.0, help="guidance scale of the guided rows (default: 2.0)")
    add_run_arguments(parser, "unite_sampling", repeats=3)
    args = parser.parse_args(argv)

    device = start_run(args)
    started = time.perf_counter()
    module = build_unite(args.preset, args.image_size, args.patch_size, device).eval()
    randomize_zero_layers(module.network)
    counter = count_calls(module.network)
    labels = torch.arange(args.batch_size, device=device) % module.num_classes

    variants = {}
    for solver in ("euler", "heun", "dopri5"):
        for scale in (1.0, args.guidance):

            def run(solver=solver, scale=scale):
                generator = torch.Generator(device=device).manual_seed(0)
                return module.generate(labels, solver=solver, steps=args.steps, guidance_scale=scale, generator=generator, use_ema=False)

            variants[(solver, scale)] = run

    evaluations = {}
    for key, run in variants.items():
        counter[0] = 0
        run()
        evaluations[key] = counter[0]
    times = alternate(variants, args.repeats, device, warmup=0)

    rows = []
    base = median(times[("euler", 1.0)])
    for (solver, scale), values in times.items():
        seconds = median(values)
        rows.append(
            {
                "solver": solver,
                "steps": None if solver == "dopri5" else args.steps,
                "guidance_scale": scale,
                "evaluations": evaluations[(solver, scale)],
                "sec_per_image": seconds / args.batch_size,
                "ms_per_evaluation_per_image": 1e3 * seconds / args.batch_size / evaluations[(solver, scale)],
                "time_vs_euler": seconds / base,
            }
        )

    print_table(
        rows,
        [
            ("solver", "solver", "s"),
            ("steps", "steps", "d"),
            ("guidance_scale", "guidance", ".1f"),
            ("evaluations", "GE calls", "d"),
            ("sec_per_image", "s/image", ".4f"),
            ("ms_per_evaluation_per_image", "ms/call/image", ".3f"),
            ("time_vs_euler", "time vs Euler", ".2f"),
        ],
    )
    write_run(
        "unite_sampling",
        command_line("unite_sampling.py", argv),
        started,
        {
            "settings": {
                "preset": args.preset,
                "image_size": args.image_size,
                "patch_size": args.patch_size,
                "batch_size": args.batch_size,
                "guidance_interval": list(module.hparams.guidance_interval),
                "timestep_shift": module.hparams.timestep_shift,
                "includes_pixel_decoding": True,
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
