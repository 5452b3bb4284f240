"""Small building blocks shared by every transformer in unisep.

Conventions: activations are `(batch, tokens, width)`; conditioning vectors are
`(batch, width)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """Apply adaLN modulation `x * (1 + scale) + shift`.

    Args:
        x: (batch, tokens, width).
        shift, scale: (batch, width), broadcast over tokens.
    """
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class RMSNorm(nn.RMSNorm):
    """`nn.RMSNorm` that casts its weight to the input's dtype.

    Under bf16 autocast the activations reach the norm in bf16 while the weight stays
    fp32, and PyTorch then skips the fused RMSNorm kernel (it warns "Mismatch dtype
    between input and weight ... Cannot dispatch to fused implementation") for a chain
    of element-wise kernels. The fused kernel accumulates in fp32 either way; only the
    weight is rounded to bf16. In fp32 nothing changes. Parameters and state-dict keys
    are those of `nn.RMSNorm`.

    NOTE: the gain is expected on CUDA, where it was not measured. On a 2-core CPU both
    paths took the same time (about 35 ms for a (32, 256, 768) bf16 tensor, 1 thread).
    """

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.to(x.dtype)
        return F.rms_norm(x, self.normalized_shape, weight, self.eps)


class SwiGLU(nn.Module):
    """SwiGLU feed-forward layer (Shazeer 2020): `w3(silu(x W1) * x W2)`.

    The two input projections are fused into one matrix of width `2 * hidden`.
    """

    def __init__(self, width: int, hidden: int, bias: bool = True):
        super().__init__()
        self.w12 = nn.Linear(width, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, width, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


def swiglu_hidden(width: int, mlp_ratio: float = 4.0) -> int:
    """Return the SwiGLU hidden width, 2/3 of `mlp_ratio * width`, so the layer costs
    the same as a GELU MLP of ratio `mlp_ratio`."""
    return int(2 / 3 * int(width * mlp_ratio))


class GaussianFourierTimestepEmbedding(nn.Module):
    """Timestep embedding: fixed random Gaussian frequencies, sin and cos, then an MLP.

    `t` is the flow time in [0, 1]. The frequencies are a buffer, not a parameter, so
    they are saved with the model but never trained.
    """

    def __init__(self, width: int, num_frequencies: int = 256, scale: float = 1.0):
        super().__init__()
        self.register_buffer("frequencies", torch.randn(num_frequencies) * scale)
        self.mlp = nn.Sequential(
            nn.Linear(2 * num_frequencies, width),
            nn.SiLU(),
            nn.Linear(width, width),
        )

    def forward(self, t: Tensor) -> Tensor:
        """Embed `t` of shape (batch,) into (batch, width)."""
        angles = 2 * math.pi * t.float()[:, None] * self.frequencies[None, :]
        features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class LabelEmbedding(nn.Module):
    """Class embedding table with one extra "null" row for classifier-free guidance.

    In training, labels are replaced by the null class with probability `dropout`.
    `force_null` replaces every label, which the tokenize mode of UNITE uses.
    """

    def __init__(self, num_classes: int, width: int, dropout: float = 0.1):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.dropout = dropout
        self.table = nn.Embedding(num_classes + 1, width)

    @property
    def null_class(self) -> int:
        """Index of the unconditional row."""
        return self.num_classes

    def forward(self, labels: Tensor, force_null: bool = False) -> Tensor:
        """Embed `labels` (batch,) int64 into (batch, width)."""
        if force_null:
            labels = torch.full_like(labels, self.null_class)
        elif self.training and self.dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.dropout
            labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        return self.table(labels)


def sincos_1d(width: int, positions: Tensor) -> Tensor:
    """Fixed 1-D sin-cos position embedding (Vaswani et al. 2017).

    Args:
        width: embedding width, even.
        positions: (n,) float positions.

    Returns:
        (n, width): the first half sines, the second half cosines.
    """
    if width % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {width}")
    omega = torch.arange(width // 2, dtype=torch.float64) / (width / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.double()[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()


def sincos_2d(width: int, grid_size: int) -> Tensor:
    """Fixed 2-D sin-cos position embedding of a square grid, as in MAE.

    Returns:
        (grid_size * grid_size, width), row-major over (row, column). Half the channels
        encode the column, half the row.
    """
    if width % 4:
        raise ValueError(f"2-D sin-cos embedding width must be divisible by 4, got {width}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    return torch.cat(
        [sincos_1d(width // 2, cols.flatten()), sincos_1d(width // 2, rows.flatten())], dim=1
    )
