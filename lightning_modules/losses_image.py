"""Reconstruction loss of the image modality: L1 plus optional LPIPS."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from unisep.metrics.lpips import LPIPS


class ImageReconstructionLoss(nn.Module):
    """`L1(x_hat, x) + lpips_weight * LPIPS(x_hat, x)`, images in [-1, 1].

    Args:
        lpips_weight: weight of the LPIPS term; 0 disables it and needs no files.
        lpips_vgg_path, lpips_head_path: weight files (see `unisep.metrics.lpips`).
    """

    def __init__(self, lpips_weight: float = 0.0, lpips_vgg_path: str | None = None, lpips_head_path: str | None = None):
        super().__init__()
        self.lpips_weight = lpips_weight
        self.lpips = LPIPS(lpips_vgg_path, lpips_head_path) if lpips_weight > 0 else None

    def forward(self, prediction: Tensor, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        target = batch["image"]
        if prediction.shape != target.shape:
            raise ValueError(f"reconstruction shape {tuple(prediction.shape)} != image shape {tuple(target.shape)}")
        l1 = F.l1_loss(prediction, target)
        terms = {"l1": l1}
        loss = l1
        if self.lpips is not None:
            perceptual = self.lpips(prediction.float(), target.float()).mean()
            terms["lpips"] = perceptual
            loss = loss + self.lpips_weight * perceptual
        return loss, terms
