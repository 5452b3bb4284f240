"""Optimizers and learning-rate schedules of the unisep recipes.

- `build_optimizer`: AdamW for everything, or Muon for the 2-D weight matrices of the
  transformer bodies plus AdamW for the rest (embeddings, output layers, norms, biases,
  position and register tokens), as in the UNITE paper recipe.
- `warmup_cosine`: linear warm-up, then cosine decay to a floor; the multiplier is
  relative to the base learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from enum import Enum

import torch
from torch import nn
from torch.optim import AdamW, Optimizer


class OptimizerName(str, Enum):
    ADAMW = "adamw"
    MUON = "muon"


def is_muon_parameter(name: str, param: nn.Parameter) -> bool:
    """Select the hidden 2-D weight matrices of transformer blocks for Muon."""
    return param.ndim == 2 and ".blocks." in f".{name}"


class CombinedOptimizer(Optimizer):
    """Run several optimizers as one, so Lightning's automatic optimisation, gradient
    clipping and LR schedulers see a single optimizer.

    `param_groups` is the concatenation of the inner optimizers' groups (the same dict
    objects), so a scheduler that sets `group["lr"]` reaches the inner optimizers.
    """

    def __init__(self, optimizers: list[Optimizer]):
        self.optimizers = optimizers
        params = [p for opt in optimizers for group in opt.param_groups for p in group["params"]]
        super().__init__(params, {})
        self.param_groups = [group for opt in optimizers for group in opt.param_groups]

    @property
    def state(self):  # type: ignore[override]
        merged = {}
        for opt in self.optimizers:
            merged.update(opt.state)
        return merged

    @state.setter
    def state(self, value) -> None:
        # Optimizer.__init__ assigns an empty state; the inner optimizers own the real one.
        pass

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict) -> None:
        for opt, opt_state in zip(self.optimizers, state_dict["optimizers"]):
            opt.load_state_dict(opt_state)


# Devices with a fused AdamW kernel in PyTorch >= 2.4.
FUSED_ADAMW_DEVICES = frozenset({"cpu", "cuda"})


def adamw_kernel(params: Iterable[torch.Tensor]) -> dict[str, bool]:
    """Return the AdamW flags of the fastest kernel for `params`: fused, else foreach.

    The fused kernel updates every parameter in one pass with no per-parameter Python
    work and, on CUDA, no host synchronisation. On a 2-core CPU, bench/fast_paths.py
    measured it 2.8 to 4.3 times faster than the foreach kernel and the per-parameter
    loop (docs/benchmarks.md). It needs floating-point parameters, all on one device
    type that has the kernel.
    """
    params = list(params)
    device_types = {p.device.type for p in params}
    if params and len(device_types) == 1 and device_types <= FUSED_ADAMW_DEVICES and all(p.is_floating_point() for p in params):
        return {"fused": True}
    return {"foreach": True}


def _adamw(params: list, lr: float, betas: tuple[float, float], weight_decay: float) -> AdamW:
    return AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, **adamw_kernel(params))


def build_optimizer(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    name: str = "adamw",
    lr: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    muon_weight_decay: float = 0.0,
) -> Optimizer:
    """Build AdamW, or Muon + AdamW, over the trainable parameters.

    Muon uses `adjust_lr_fn="match_rms_adamw"`, which scales its update to AdamW's
    RMS, so both parts share one learning rate.
    """
    name = OptimizerName(name)
    trainable = [(n, p) for n, p in named_parameters if p.requires_grad]
    if name is OptimizerName.ADAMW:
        return _adamw([p for _, p in trainable], lr, betas, weight_decay)
    if not hasattr(torch.optim, "Muon"):
        raise RuntimeError(
            f"optimizer 'muon' needs torch.optim.Muon (PyTorch >= 2.9); this is torch {torch.__version__}. "
            "Use optimizer: adamw or upgrade PyTorch."
        )
    muon_params = [p for n, p in trainable if is_muon_parameter(n, p)]
    other_params = [p for n, p in trainable if not is_muon_parameter(n, p)]
    muon = torch.optim.Muon(muon_params, lr=lr, weight_decay=muon_weight_decay, adjust_lr_fn="match_rms_adamw")
    return CombinedOptimizer([muon, _adamw(other_params, lr, betas, weight_decay)])


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear from ~0 to 1 over `warmup_steps`, cosine to `min_ratio` at
    `total_steps`, then constant at `min_ratio`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
