"""Sweep the classifier-free guidance scale for the best FID.

UNITE, like most guided diffusion models, reports FID at the guidance scale that
minimises it, found by a sweep from 1.0 to 4.0 in steps of 0.2. Every scale uses the
same labels and initial noise (the protocol's seeds), so differences between scales are
not blurred by sampling noise.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import torch

from unisep.metrics.fid import FIDMetric
from unisep.metrics.fid_protocol import ConditionalGenerator, FIDProtocol, generate_into_metric

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepPoint:
    """FID at one guidance scale."""

    guidance_scale: float
    fid: float
    metric_name: str


def guidance_scales(start: float = 1.0, stop: float = 4.0, step: float = 0.2) -> list[float]:
    """Return the scales start, start + step, ..., up to and including stop (rounded to 6 decimals)."""
    if step <= 0 or stop < start:
        raise ValueError(f"need step > 0 and stop >= start, got start={start}, stop={stop}, step={step}.")
    count = math.floor((stop - start) / step + 1e-9) + 1
    return [round(start + index * step, 6) for index in range(count)]


def sweep_guidance(
    model: ConditionalGenerator,
    metric: FIDMetric,
    protocol: FIDProtocol,
    scales: list[float],
    *,
    num_classes: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
) -> list[SweepPoint]:
    """Compute FID at each guidance scale with otherwise identical settings.

    Args:
        model: object with `generate(...)` (see `unisep.metrics.fid_protocol`).
        metric: FID metric with its reference statistics set.
        protocol: settings shared by all scales; its own guidance scale is ignored.
        scales: guidance scales to evaluate.
        num_classes: number of classes of the model.
        device: device of the labels and noise.
        rank: this process's rank.
        world_size: number of processes.
        progress: show progress bars.

    Returns:
        One point per scale, in the order given; pick the best with `best_point`.
    """
    if metric.reference is None:
        raise ValueError("set the metric's reference statistics (metric.set_reference) before a guidance sweep.")
    points = []
    for scale in scales:
        settings = dataclasses.replace(protocol, guidance_scale=scale)
        metric.reset()
        generate_into_metric(
            model, metric, settings, num_classes=num_classes, device=device, rank=rank, world_size=world_size, progress=progress
        )
        point = SweepPoint(guidance_scale=scale, fid=float(metric.compute()), metric_name=f"fid/{settings.name}")
        log.info("%s = %.4f", point.metric_name, point.fid)
        points.append(point)
    return points


def best_point(points: list[SweepPoint]) -> SweepPoint:
    """Return the point with the lowest FID (the first one on ties)."""
    if not points:
        raise ValueError("the sweep has no points.")
    return min(points, key=lambda point: point.fid)
