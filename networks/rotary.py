"""Rotary position embedding (RoPE, Su et al. 2021) over one or several axes.

A position is a vector of coordinates, one per axis (1 axis for a token sequence, 3 for
video: frame, row, column). The head dimension is split between the axes, and each
axis rotates its share of channel pairs by `position * frequency`. Rotations keep
vector norms, and the dot product of a rotated query and key depends only on the
difference of their positions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RotaryEmbedding(nn.Module):
    """Produce the (cos, sin) tables for given positions.

    Args:
        head_dim: channels per attention head (even).
        axes_dims: channels given to each axis; sums to head_dim, each even.
            Default: one axis using all channels.
        theta: base wavelength.
    """

    def __init__(self, head_dim: int, axes_dims: tuple[int, ...] | None = None, theta: float = 10000.0):
        super().__init__()
        axes_dims = axes_dims or (head_dim,)
        if sum(axes_dims) != head_dim or any(d % 2 for d in axes_dims):
            raise ValueError(
                f"rotary axes_dims {axes_dims} must be even and sum to head_dim={head_dim}"
            )
        self.head_dim = head_dim
        self.axes_dims = tuple(axes_dims)
        for axis, dim in enumerate(axes_dims):
            freqs = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
            self.register_buffer(f"freqs_{axis}", freqs, persistent=False)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Return cos and sin of shape (tokens, head_dim // 2) for positions (tokens, axes)."""
        if positions.dim() == 1:
            positions = positions[:, None]
        if positions.shape[-1] != len(self.axes_dims):
            raise ValueError(
                f"positions have {positions.shape[-1]} axes, rotary embedding expects {len(self.axes_dims)}"
            )
        angles = [
            positions[:, axis, None].float() * getattr(self, f"freqs_{axis}")[None, :]
            for axis in range(len(self.axes_dims))
        ]
        angles = torch.cat(angles, dim=-1)
        return torch.cos(angles), torch.sin(angles)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (i, i + head_dim / 2) of `x` (batch, heads, tokens, head_dim).

    `cos` and `sin` are (tokens, head_dim // 2) from `RotaryEmbedding`. Pairing a channel
    with the one half a head away (rather than its neighbour) is the same rotation up to
    a fixed channel permutation and needs no interleaved copies.
    """
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    first, second = x.chunk(2, dim=-1)
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)
