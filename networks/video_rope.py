"""3-D rotary positions (frame, row, column) for the tokens of video frames.

Tokens are laid out frame by frame, and row-major over a (rows, columns) grid inside a
frame, so token `n` of frame `f` sits at sequence index `f * rows * columns + n`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unisep.networks.rotary import RotaryEmbedding


def video_rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Split `head_dim` channels between the frame, row and column axes.

    The frame axis gets about a quarter and the two spatial axes share the rest
    equally, each share even. That gives (16, 24, 24) for head_dim 64, the split of the
    SCD reference code, and (8, 12, 12) for head_dim 32.
    """
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"3-D rotary positions need an even head_dim >= 6, got {head_dim}")
    frame = max(2, 2 * round(head_dim / 8))
    rest = head_dim - frame
    rows = 2 * (rest // 4)
    return frame, rows, rest - rows


class VideoRotary(nn.Module):
    """Rotary (cos, sin) tables for whole frames of a fixed token grid.

    Args:
        head_dim: channels per attention head.
        grid: (rows, columns) of the tokens of one frame.
        theta: rotary base wavelength.
    """

    def __init__(self, head_dim: int, grid: tuple[int, int], theta: float = 10000.0):
        super().__init__()
        rows, columns = grid
        if rows < 1 or columns < 1:
            raise ValueError(f"token grid must be at least 1 x 1, got {grid}")
        self.grid = (int(rows), int(columns))
        self.rotary = RotaryEmbedding(head_dim, axes_dims=video_rope_axes(head_dim), theta=theta)
        row_index, column_index = torch.meshgrid(torch.arange(rows), torch.arange(columns), indexing="ij")
        # (tokens_per_frame, 2) spatial coordinates, row-major.
        self.register_buffer(
            "spatial", torch.stack([row_index.flatten(), column_index.flatten()], dim=-1), persistent=False
        )

    @property
    def tokens_per_frame(self) -> int:
        """Tokens N of one frame."""
        return self.grid[0] * self.grid[1]

    def positions(self, start_frame: int, num_frames: int) -> Tensor:
        """Return (num_frames * N, 3) coordinates (frame, row, column) of consecutive frames."""
        frames = torch.arange(start_frame, start_frame + num_frames, device=self.spatial.device)
        frame_column = frames.repeat_interleave(self.tokens_per_frame)[:, None]
        spatial = self.spatial.repeat(num_frames, 1)
        return torch.cat([frame_column, spatial], dim=-1)

    def forward(self, start_frame: int, num_frames: int) -> tuple[Tensor, Tensor]:
        """Return cos and sin, each (num_frames * N, head_dim // 2), for frames
        `start_frame, ..., start_frame + num_frames - 1`."""
        return self.rotary(self.positions(start_frame, num_frames))
