"""The generation side of FID: a named protocol, its labels and seeds, and the sampling loop.

A protocol fixes everything that changes the score of a given model: the sample count,
the ODE solver and its steps, the guidance scale and interval, and the seed. Labels are
class balanced (`arange(num_samples) % num_classes`, so counts differ by at most one).
Samples are drawn in batches of `batch_size`; batch k has its own seed derived from
(seed, k) and runs on rank k % world_size. The sample set is therefore the same for any
number of processes, and FID under DDP matches a single process up to the floating-point
differences of the device.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from unisep.flow.solvers import SolverName
from unisep.metrics.fid import FIDMetric
from unisep.metrics.fid_images import images_to_uint8

# Checked when a protocol is built, so that a typo fails before training, not at its end.
SOLVERS = tuple(name.value for name in SolverName)


class ConditionalGenerator(Protocol):
    """Interface that the sampling loop calls on a model (UNITE's LightningModule implements it)."""

    def generate(
        self,
        labels: torch.Tensor,
        *,
        solver: str,
        steps: int,
        guidance_scale: float,
        guidance_interval: tuple[float, float],
        generator: torch.Generator | None,
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class FIDProtocol:
    """Settings of a generation FID evaluation.

    Attributes:
        num_samples: generated images in total over all ranks (50,000 for the standard
            protocol; a smaller count is allowed and appears in the metric's name).
        solver: ODE solver name, one of `SOLVERS`.
        steps: solver steps (ignored by the adaptive "dopri5").
        guidance_scale: classifier-free guidance scale; 1 disables guidance.
        guidance_interval: (low, high) range of t in [0, 1] where guidance is applied.
        seed: base seed of the initial noise.
        batch_size: images per `generate` call on one rank.
    """

    num_samples: int = 50_000
    solver: str = "heun"
    steps: int = 50
    guidance_scale: float = 1.0
    guidance_interval: tuple[float, float] = (0.1, 1.0)
    seed: int = 0
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.num_samples < 2:
            raise ValueError(f"num_samples must be at least 2 for a covariance, got {self.num_samples}.")
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; choose one of {', '.join(SOLVERS)}.")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be positive, got steps={self.steps}, batch_size={self.batch_size}.")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be non-negative, got {self.guidance_scale}.")
        low, high = self.guidance_interval
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"guidance_interval must satisfy 0 <= low <= high <= 1, got {self.guidance_interval}.")
        object.__setattr__(self, "guidance_interval", (float(low), float(high)))

    @property
    def name(self) -> str:
        """Short tag for metric names, e.g. `heun50_cfg1.5_n500`."""
        solver = self.solver if self.solver == "dopri5" else f"{self.solver}{self.steps}"
        return f"{solver}_cfg{self.guidance_scale:g}_n{self.num_samples}"

    @property
    def num_batches(self) -> int:
        """Number of `generate` calls over all ranks."""
        return math.ceil(self.num_samples / self.batch_size)

    def as_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-compatible dict."""
        settings = asdict(self)
        settings["guidance_interval"] = list(self.guidance_interval)
        return settings


def class_balanced_labels(num_samples: int, num_classes: int) -> torch.Tensor:
    """Return (num_samples,) int64 labels cycling through the classes, counts within one of each other."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}.")
    return torch.arange(num_samples, dtype=torch.int64) % num_classes


def batch_seed(seed: int, batch_index: int) -> int:
    """Derive a 63-bit seed for one batch from the protocol seed, independent of the rank."""
    return int(np.random.SeedSequence([seed, batch_index]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def batches_for_rank(num_batches: int, rank: int, world_size: int, lockstep: bool = False) -> list[int | None]:
    """List the batch indices that one rank generates, in order.

    Batch k goes to rank k % world_size. With `lockstep`, ranks that run out of batches
    get `None` entries (a discarded batch) so every rank makes the same number of
    `generate` calls, which sharded models (FSDP) need because their forward pass is a
    collective operation.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}.")
    mine: list[int | None] = list(range(rank, num_batches, world_size))
    if lockstep:
        rounds = math.ceil(num_batches / world_size)
        mine += [None] * (rounds - len(mine))
    return mine


@contextlib.contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[None]:
    """Put a module in eval mode without gradients, and restore its mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def generate_into_metric(
    model: ConditionalGenerator,
    metric: FIDMetric,
    protocol: FIDProtocol,
    *,
    num_classes: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    lockstep: bool = False,
    progress: bool = False,
) -> int:
    """Generate this rank's share of the protocol's samples and add them to the metric's generated side.

    Args:
        model: object with `generate(labels, *, solver, steps, guidance_scale,
            guidance_interval, generator)` returning images (batch, C, H, W) in [-1, 1].
        metric: FID metric; only its generated side is updated.
        protocol: the settings.
        num_classes: number of classes of the conditional model.
        device: device of the labels and of the noise generator.
        rank: this process's rank.
        world_size: number of processes.
        lockstep: make the same number of `generate` calls on every rank (see `batches_for_rank`).
        progress: show a progress bar.

    Returns:
        The number of images this rank added.
    """
    labels = class_balanced_labels(protocol.num_samples, num_classes)
    added = 0
    schedule = batches_for_rank(protocol.num_batches, rank, world_size, lockstep)
    context = evaluation_mode(model) if isinstance(model, nn.Module) else torch.no_grad()
    with context:
        for batch_index in tqdm(schedule, desc=f"FID {protocol.name}", unit="batch", disable=not progress):
            index = 0 if batch_index is None else batch_index
            batch_labels = labels[index * protocol.batch_size : (index + 1) * protocol.batch_size].to(device)
            generator = torch.Generator(device=device).manual_seed(batch_seed(protocol.seed, index))
            images = model.generate(
                batch_labels,
                solver=protocol.solver,
                steps=protocol.steps,
                guidance_scale=protocol.guidance_scale,
                guidance_interval=protocol.guidance_interval,
                generator=generator,
            )
            if batch_index is None:
                continue
            if images.ndim != 4 or images.shape[0] != batch_labels.shape[0]:
                raise ValueError(
                    f"generate() returned shape {tuple(images.shape)} for {batch_labels.shape[0]} labels; "
                    "expected (batch, channels, height, width)."
                )
            metric.update(images_to_uint8(images).to(metric.device), real=False)
            added += images.shape[0]
    return added
