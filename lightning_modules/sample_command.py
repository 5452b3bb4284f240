"""`unisep sample`: class-conditional samples from a UNITE checkpoint.

Writes an `.npz` with `images` uint8 (N, H, W, C) and `labels` int64 (N,), and a PNG
grid with one row per class.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from rich.progress import track


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `unisep fit`")
    parser.add_argument("--out", default="samples.npz", help="output .npz path (a .png grid is written beside it)")
    parser.add_argument("--per-class", type=int, default=50, help="samples per class")
    parser.add_argument("--classes", type=int, nargs="*", help="class labels (default: all, at most --max-classes)")
    parser.add_argument("--max-classes", type=int, default=1000, help="cap on the number of classes sampled")
    parser.add_argument("--solver", choices=["euler", "heun", "dopri5"], help="ODE solver (default: the checkpoint's)")
    parser.add_argument("--steps", type=int, help="solver steps (Euler and Heun)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale (1 = none)")
    parser.add_argument("--batch-size", type=int, default=256, help="samples per generation batch")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--no-ema", action="store_true", help="use the trained weights instead of the EMA")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")


def run(args: argparse.Namespace) -> int:
    from unisep.callbacks.image_grid import make_grid, save_png, to_uint8
    from unisep.lightning_modules.unite import UNITE

    checkpoint = Path(args.ckpt)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}. `unisep fit` writes them under <run folder>/checkpoints/.")
    model = UNITE.load_from_checkpoint(checkpoint, map_location=args.device, weights_only=False)
    model.eval()

    classes = args.classes if args.classes else list(range(min(model.num_classes, args.max_classes)))
    bad = [c for c in classes if not 0 <= c < model.num_classes]
    if bad:
        raise ValueError(f"class labels {bad} are outside 0..{model.num_classes - 1}")
    labels = torch.tensor(classes).repeat_interleave(args.per_class)
    generator = torch.Generator(device="cpu").manual_seed(args.seed)

    chunks = []
    for start in track(range(0, len(labels), args.batch_size), description="Generating"):
        images = model.generate(
            labels[start : start + args.batch_size],
            solver=args.solver,
            steps=args.steps,
            guidance_scale=args.guidance,
            generator=generator,
            use_ema=not args.no_ema,
        )
        chunks.append(to_uint8(images))
    images = np.concatenate(chunks)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, images=images, labels=labels.numpy())
    shown = images.reshape(len(classes), args.per_class, *images.shape[1:])[:, :10]
    grid_path = save_png(make_grid(shown.reshape(-1, *images.shape[1:]), rows=len(classes)), out.with_suffix(".png"))
    print(f"Wrote {len(images)} samples to {out} and a grid to {grid_path}")
    return 0
