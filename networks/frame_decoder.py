"""The frame decoder of SCD: a small diffusion transformer that renders one frame.

Its input is limited to the frame being generated: the frame's noisy tokens and the
context tokens that the causal encoder produced for it, joined along the sequence
("token concat"). The
output keeps the first half of the sequence, the positions of the noisy tokens, and
predicts the flow velocity there. It is conditioned through adaLN on the frame's own
flow time and, optionally, its action. It has no cache and no access to other frames,
so it runs the T denoising steps of a frame at a cost independent of the context length.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from unisep.networks.dit_block import DiTBlock, FinalLayer
from unisep.networks.frame_conditioning import FrameConditioning
from unisep.networks.video_rope import VideoRotary
from unisep.networks.weights import init_dit_weights


class FrameDecoder(nn.Module):
    """Velocity predictor for one frame given its context tokens.

    Args:
        token_channels: channels C of one frame token.
        grid: (rows, columns) layout of the N tokens of a frame.
        context_width: width of the context tokens (the encoder width).
        width, depth, heads: transformer size.
        mlp_ratio: MLP width as a multiple of `width`.
        num_actions: action classes (0 for none).
        action_dropout: probability of the null action in training.
        qk_norm: RMSNorm on queries and keys.
    """

    def __init__(
        self,
        token_channels: int,
        grid: tuple[int, int],
        context_width: int,
        width: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        num_actions: int = 0,
        action_dropout: float = 0.1,
        qk_norm: bool = True,
    ):
        super().__init__()
        self.token_channels = token_channels
        self.context_width = context_width
        self.gradient_checkpointing = False

        self.token_in = nn.Linear(token_channels, width)
        self.context_in = nn.Linear(context_width, width) if context_width != width else nn.Identity()
        # Both halves share the same rotary positions because a token and its context token
        # sit at one place in the frame. A learned segment embedding distinguishes them.
        self.segment = nn.Parameter(torch.randn(2, width) * 0.02)
        self.conditioning = FrameConditioning(width, num_actions, action_dropout)
        self.rope = VideoRotary(width // heads, grid)
        self.blocks = nn.ModuleList(
            [DiTBlock(width, heads, mlp_ratio=mlp_ratio, qk_norm=qk_norm) for _ in range(depth)]
        )
        self.final_layer = FinalLayer(width, token_channels)
        init_dit_weights(self)

    @property
    def tokens_per_frame(self) -> int:
        """Tokens N of one frame."""
        return self.rope.tokens_per_frame

    def forward(self, x_t: Tensor, context: Tensor, t: Tensor, actions: Tensor | None = None) -> Tensor:
        """Predict the velocity of independent frames.

        Args:
            x_t: (batch, N, C) noisy tokens of one frame per batch row.
            context: (batch, N, context_width) context tokens of that frame.
            t: (batch,) flow time of each frame.
            actions: (batch,) int64 action of each frame, or None.

        Returns:
            (batch, N, C) velocity `x1 - noise`.
        """
        batch, num_tokens, channels = x_t.shape
        if (num_tokens, channels) != (self.tokens_per_frame, self.token_channels):
            raise ValueError(
                f"expected noisy tokens (batch, {self.tokens_per_frame}, {self.token_channels}), got {tuple(x_t.shape)}"
            )
        if context.shape != (batch, num_tokens, self.context_width):
            raise ValueError(
                f"expected context tokens {(batch, num_tokens, self.context_width)}, got {tuple(context.shape)}"
            )
        c = self.conditioning(t[:, None], None if actions is None else actions[:, None])[:, 0]

        noisy = self.token_in(x_t) + self.segment[0].to(x_t.dtype)
        context = self.context_in(context.to(noisy.dtype)) + self.segment[1].to(noisy.dtype)
        x = torch.cat([noisy, context], dim=1)
        # Frame position 0: the decoder receives no frame index, so it renders every frame
        # of any rollout length the same way.
        cos, sin = self.rope(0, 1)
        rope = (torch.cat([cos, cos]), torch.cat([sin, sin]))

        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, c, rope, None, use_reentrant=False)
            else:
                x = block(x, c, rope)
        return self.final_layer(x[:, :num_tokens], c)
