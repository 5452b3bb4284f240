"""bf16 autocast precision that lets Lightning clip gradients with fused optimizers.

Lightning 2.6's `MixedPrecision.clip_gradients` raises for optimizers that unscale
gradients inside their step, such as AdamW with `fused=True`, because with fp16 those
gradients are still multiplied by the GradScaler's scale when clipping runs. bf16
autocast uses no GradScaler, so gradients are never scaled and clipping them before
the step is correct.
"""

from __future__ import annotations

from typing import Literal

from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch.optim import Optimizer


class BF16MixedPrecision(MixedPrecision):
    """Lightning's `bf16-mixed` precision with gradient clipping for fused optimizers.

    Use it through `trainer.plugins` in place of `trainer.precision: bf16-mixed`.

    Args:
        device: Device type of the autocast region, "cuda" or "cpu".
    """

    def __init__(self, device: Literal["cuda", "cpu"] = "cuda") -> None:
        super().__init__(precision="bf16-mixed", device=device)

    def clip_gradients(
        self,
        optimizer: Optimizer,
        clip_val: int | float = 0.0,
        gradient_clip_algorithm: GradClipAlgorithmType = GradClipAlgorithmType.NORM,
    ) -> None:
        # Precision.clip_gradients clips by norm or value, without the scaled-gradient check.
        Precision.clip_gradients(self, optimizer, clip_val, gradient_clip_algorithm)
