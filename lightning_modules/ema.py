"""Exponential moving average (EMA) of a network's weights, held inside the LightningModule.

The average is a full copy of the network, registered as a submodule, so it is saved
in every checkpoint, moves with the module between devices, and is used directly for
sampling and evaluation (no weight swapping).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ExponentialMovingAverage(nn.Module):
    """EMA copy of `model`: `ema = decay * ema + (1 - decay) * model` after each step.

    Args:
        model: the trained network.
        decay: EMA decay per optimizer step.
        warmup: use `min(decay, (1 + n) / (10 + n))` at update n, so that early
            averages are not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.module = copy.deepcopy(model).requires_grad_(False).eval()
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        # Host copy of num_updates, so computing the decay never reads the device.
        self._num_updates = 0

    def train(self, mode: bool = True) -> "ExponentialMovingAverage":
        # The average is only ever evaluated; keep dropout and label dropout off.
        return super().train(False)

    def current_decay(self) -> float:
        """Decay used by the next update."""
        if not self.warmup:
            return self.decay
        n = self._num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards `model`'s current weights; buffers are copied."""
        weight = 1.0 - self.current_decay()
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in model.parameters()]
        if len(ema_params) != len(params):
            raise RuntimeError("EMA copy and model have different parameter lists")
        torch._foreach_lerp_(ema_params, params, weight)
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)
        self._num_updates += 1
        self.num_updates.fill_(self._num_updates)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        key = prefix + "num_updates"
        if key in state_dict:
            self._num_updates = int(state_dict[key])
