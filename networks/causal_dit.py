"""The causal-DiT baseline: one frame-causal diffusion transformer for video.

The same DiT blocks as SCD, stacked to SCD's encoder + decoder depth, with the
block-causal mask (bidirectional inside a frame, causal across frames) in every layer.
Each frame carries its own flow time, as in Diffusion Forcing, so in training every
frame is denoised given noisier or cleaner versions of the frames before it. In a
rollout every layer runs at every one of the T denoising steps of a new frame and
attends to a `KVCache` of the clean context frames. SCD removes this cost by running
its deep part once per frame.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from unisep.networks.dit_block import DiTBlock, FinalLayer
from unisep.networks.frame_block import frame_block_forward, frame_causal_mask, frame_final_layer
from unisep.networks.frame_conditioning import FrameConditioning
from unisep.networks.kv_cache import KVCache
from unisep.networks.video_rope import VideoRotary
from unisep.networks.weights import init_dit_weights


class CausalDiT(nn.Module):
    """Frame-causal velocity predictor over the tokens of all frames.

    Args:
        token_channels: channels C of one frame token.
        grid: (rows, columns) layout of the N tokens of a frame.
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
        self.width = width
        self.heads = heads
        self.gradient_checkpointing = False

        self.token_in = nn.Linear(token_channels, width)
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

    @property
    def num_actions(self) -> int:
        """Action classes of the conditioning (0 for an unconditional model)."""
        return self.conditioning.num_actions

    def new_cache(self, batch: int, max_frames: int, dtype: torch.dtype | None = None) -> KVCache:
        """Allocate an empty cache for a rollout of at most `max_frames` frames."""
        parameter = self.token_in.weight
        return KVCache(
            num_layers=len(self.blocks),
            batch=batch,
            heads=self.heads,
            head_dim=self.width // self.heads,
            tokens_per_frame=self.tokens_per_frame,
            max_frames=max_frames,
            device=parameter.device,
            dtype=dtype or parameter.dtype,
        )

    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        actions: Tensor | None = None,
        cache: KVCache | None = None,
        commit: bool = False,
    ) -> Tensor:
        """Predict the velocity of every frame.

        Without a cache, the frames are a whole clip starting at frame 0. With a cache,
        they are the next frames after the cached ones and attend to the cache. Their
        keys and values are kept when `commit` is True (a clean context frame) and are
        overwritten by the next call otherwise (a denoising step).

        Args:
            x_t: (batch, frames, N, C) tokens, each frame at its own flow time.
            t: (batch, frames) flow times.
            actions: (batch, frames) int64 actions, or None.
            cache: rollout cache from `new_cache`, or None.
            commit: append these frames to the cache for good.

        Returns:
            (batch, frames, N, C) velocity `x1 - noise` of each frame.
        """
        batch, frames, num_tokens, channels = x_t.shape
        if (num_tokens, channels) != (self.tokens_per_frame, self.token_channels):
            raise ValueError(
                f"expected frame tokens (batch, frames, {self.tokens_per_frame}, {self.token_channels}),"
                f" got {tuple(x_t.shape)}; check the frame tokenizer against the model's grid and token_channels"
            )
        if commit and cache is None:
            raise ValueError("commit=True needs a cache")
        c = self.conditioning(t, actions)

        start = cache.num_frames if cache is not None else 0
        rope = self.rope(start, frames)
        mask = None if cache is not None and frames == 1 else frame_causal_mask(
            frames, num_tokens, start, x_t.device
        )

        x = self.token_in(x_t.flatten(1, 2))
        for index, block in enumerate(self.blocks):
            if self.gradient_checkpointing and torch.is_grad_enabled() and cache is None:
                x = checkpoint(frame_block_forward, block, x, c, rope, mask, use_reentrant=False)
            else:
                x = frame_block_forward(block, x, c, rope, mask, cache, index)
        if commit:
            cache.commit(frames * num_tokens)
        return frame_final_layer(self.final_layer, x, c).unflatten(1, (frames, num_tokens))
