"""Models, batches, training steps and rollout timing that the UNITE and SCD benchmarks share.

A training step here is the one Lightning runs: the module's loss object, one backward,
gradient clipping, one optimizer step and the EMA update, with the optimizer that
`configure_optimizers` builds. Weights are random, because cost does not depend on
their values.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from common import synchronize
from unisep.lightning_modules.ema import ExponentialMovingAverage
from unisep.lightning_modules.optim import build_optimizer
from unisep.lightning_modules.unite import UNITE
from unisep.networks.causal_dit import CausalDiT
from unisep.networks.pixel import ImageModality
from unisep.networks.scd import SCDNetwork
from unisep.networks.scd_presets import SCDSize, matching_causal_dit

GRADIENT_CLIP = 3.0  # the UNITE recipe's clip norm
SCD_GRADIENT_CLIP = 1.0  # the SCD recipe's clip norm, also used for the causal DiT


def autocast_context(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """Return bf16 autocast on CUDA when `dtype` is "bf16", else a no-op context.

    Raises:
        ValueError: for bf16 on a device other than CUDA, where it is not a fast path.
    """
    if dtype == "fp32":
        return contextlib.nullcontext()
    if dtype != "bf16":
        raise ValueError(f"dtype must be 'fp32' or 'bf16', got {dtype!r}")
    if device.type != "cuda":
        raise ValueError("bf16 autocast is measured on CUDA only; use --dtype fp32 on CPU")
    return torch.autocast("cuda", dtype=torch.bfloat16)


def build_unite(
    preset: str,
    image_size: int,
    patch_size: int,
    device: torch.device,
    num_classes: int = 1000,
    overrides: dict[str, Any] | None = None,
    **options: Any,
) -> UNITE:
    """Build a UNITE module for RGB images on `device`; `options` go to `UNITE(...)`."""
    modality = ImageModality(image_size=image_size, patch_size=patch_size, channels=3)
    module = UNITE(modality, preset=preset, preset_overrides=overrides, num_classes=num_classes, **options)
    return module.to(device)


def scd_and_causal_dit(
    size: SCDSize, token_channels: int, grid: tuple[int, int], device: torch.device
) -> tuple[SCDNetwork, CausalDiT]:
    """Build an SCD network of `size` and the causal DiT of equal total depth and width on `device`.

    Both take frames of `grid` tokens with `token_channels` channels. The causal DiT's
    size comes from `matching_causal_dit(size)`.
    """
    twin = matching_causal_dit(size)
    scd = SCDNetwork(size, token_channels, grid).to(device)
    causal_dit = CausalDiT(token_channels, grid, twin.width, twin.depth, twin.heads, twin.mlp_ratio).to(device)
    return scd, causal_dit


def scd_and_causal_dit_sizes(size: SCDSize) -> dict[str, dict[str, int]]:
    """Describe the sizes of the pair that `scd_and_causal_dit(size, ...)` builds, for a JSON record."""
    twin = matching_causal_dit(size)
    return {
        "scd": {"width": size.width, "heads": size.heads, "encoder_depth": size.encoder_depth, "decoder_depth": size.decoder_depth},
        "causal_dit": {"width": twin.width, "heads": twin.heads, "depth": twin.depth},
    }


def image_batch(batch_size: int, image_size: int, num_classes: int, device: torch.device, seed: int = 0) -> dict[str, Tensor]:
    """Return a batch of random RGB images in [-1, 1] with random labels."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, 3, image_size, image_size, generator=generator) * 2 - 1
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator)
    return {"image": images.to(device), "label": labels.to(device)}


def unite_optimizer(module: UNITE) -> torch.optim.Optimizer:
    """Build the optimizer that `UNITE.configure_optimizers` builds, without its schedule."""
    hp = module.hparams
    return build_optimizer(module.network.named_parameters(), hp.optimizer, lr=hp.lr, betas=tuple(hp.betas))


def adamw(params, implementation: str, **options: Any) -> torch.optim.AdamW:
    """Build AdamW with the per-parameter loop, the multi-tensor (foreach) or the fused kernel."""
    flags = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    if implementation not in flags:
        raise ValueError(f"AdamW implementation must be one of {sorted(flags)}, got {implementation!r}")
    return torch.optim.AdamW(list(params), **options, **flags[implementation])


def train_step(
    network: nn.Module,
    loss_fn: Callable[[], tuple[Tensor, Any]],
    optimizer: torch.optim.Optimizer,
    clip_norm: float,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ema: ExponentialMovingAverage | None = None,
) -> Callable[[], Tensor]:
    """Return a closure that runs one full training step and returns the detached loss.

    The step is the loss forward under `autocast()`, one backward, gradient clipping
    at `clip_norm`, the optimizer step and, when `ema` is given, the EMA update.

    Args:
        network: the trained network, which is put in training mode.
        loss_fn: computes `(loss, terms)` on the benchmark's batch.
        optimizer: optimizer over `network`'s parameters.
        clip_norm: maximum gradient norm.
        autocast: returns the autocast context of the forward.
        ema: EMA copy of `network` to update after each step, or None.
    """
    network.train()

    def run() -> Tensor:
        with autocast():
            loss, _ = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), clip_norm, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(network)
        return loss.detach()

    return run


def unite_train_step(
    module: UNITE,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Tensor],
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    step: int = 10_000,
) -> Callable[[], Tensor]:
    """Return a closure that runs one full UNITE training step and returns the detached loss.

    `step` is past any flow-weight warm-up, so the flow term is always on.
    """
    network = module.network
    return train_step(
        network, lambda: module.loss(network, batch, step=step), optimizer, GRADIENT_CLIP, autocast, module.ema
    )


def unite_loss_forward(module: UNITE, batch: dict[str, Tensor], step: int = 10_000) -> Callable[[], Tensor]:
    """Return a closure that runs the loss forward only, for activation-memory counts."""

    def run() -> Tensor:
        loss, _ = module.loss(module.network, batch, step=step)
        return loss

    return run


def randomize_zero_layers(module: nn.Module, std: float = 0.02, seed: int = 0) -> None:
    """Fill every all-zero weight matrix with N(0, std^2) values.

    adaLN-Zero starts every block as the identity and the output layer at zero, so an
    untrained GE predicts a constant and an adaptive solver takes a handful of steps.
    Random values in those layers give a velocity field that depends on the input, as
    after training, so solver costs are closer to a trained model's.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.ndim >= 2 and not parameter.any():
                values = torch.randn(parameter.shape, generator=generator) * std
                parameter.copy_(values.to(parameter.device, parameter.dtype))


def rollout_frame_times(rollout, network: nn.Module, context: Tensor, frames: int, steps: int) -> list[float]:
    """Return the wall time of each frame that `rollout` yields, the first one from the call.

    The first gap includes encoding the context into the KV cache; the later ones are
    the steady-state cost of a frame.

    Args:
        rollout: `scd_rollout` or `causal_dit_rollout`.
        network: the matching network, in eval mode.
        context: (batch, context frames, N, C) context tokens.
        frames: frames to generate.
        steps: Euler steps per frame.
    """
    device = context.device
    generator = torch.Generator(device="cpu").manual_seed(0)
    synchronize(device)
    stamps = [time.perf_counter()]
    for _frame in rollout(network, context, frames, steps=steps, generator=generator):
        synchronize(device)
        stamps.append(time.perf_counter())
    return [later - earlier for earlier, later in zip(stamps, stamps[1:])]
