"""The frame-causal DiT trunk shared by the SCD causal encoder and the causal-DiT baseline.

Both networks embed frame tokens, condition every frame on its own flow time (and
action), and run a stack of DiT blocks under the block-causal mask, which makes
attention bidirectional inside a frame and causal across frames. In a rollout the
same blocks attend through a `KVCache` to the earlier frames. The two differ only in their output
(the encoder normalises context tokens, the causal DiT predicts a velocity) and in
when a rollout commits keys and values to the cache, which subclasses decide.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from unisep.networks.dit_block import DiTBlock
from unisep.networks.frame_block import frame_block_forward, frame_causal_mask
from unisep.networks.frame_conditioning import FrameConditioning
from unisep.networks.kv_cache import KVCache
from unisep.networks.video_rope import VideoRotary


class FrameCausalTransformer(nn.Module):
    """Token embedding, per-frame conditioning and frame-causal DiT blocks.

    Subclasses add their output module after calling this constructor and then call
    `init_dit_weights(self)`, so that the initialisation visits the modules in the
    order token_in, conditioning, blocks, output.

    Args:
        token_channels: channels C of one frame token (from the frame tokenizer).
        grid: (rows, columns) layout of the N = rows * columns tokens of a frame.
        width, depth, heads: transformer size.
        mlp_ratio: MLP width as a multiple of `width` (SwiGLU uses 2/3 of it).
        num_actions: action classes (0 for none); see `FrameConditioning`.
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
        mlp_ratio: float,
        num_actions: int,
        action_dropout: float,
        qk_norm: bool,
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

    @property
    def tokens_per_frame(self) -> int:
        """Tokens N of one frame."""
        return self.rope.tokens_per_frame

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

    def run_blocks(
        self, tokens: Tensor, t: Tensor, actions: Tensor | None, cache: KVCache | None
    ) -> tuple[Tensor, Tensor]:
        """Embed frame tokens and run every block, writing keys and values to `cache` if given.

        Without a cache, the frames are a whole clip starting at frame 0. With a cache,
        they are the next frames after the cached ones and attend to the cache. Nothing
        is committed here: the caller commits `frames * N` tokens when it keeps them.

        Args:
            tokens: (batch, frames, N, C) frame tokens.
            t: (batch, frames) flow time of each frame.
            actions: (batch, frames) int64 actions, or None.
            cache: rollout cache from `new_cache`, or None.

        Returns:
            The block output (batch, frames * N, width) and the per-frame conditioning
            (batch, frames, width) for the output module.
        """
        _, frames, num_tokens, channels = tokens.shape
        if (num_tokens, channels) != (self.tokens_per_frame, self.token_channels):
            raise ValueError(
                f"expected frame tokens (batch, frames, {self.tokens_per_frame}, {self.token_channels}),"
                f" got {tuple(tokens.shape)}; check the frame tokenizer against the model's grid and token_channels"
            )
        c = self.conditioning(t, actions)

        start = cache.num_frames if cache is not None else 0
        rope = self.rope(start, frames)
        # A single new frame attends to every cached key and to its own frame, so it needs no mask.
        mask = None if cache is not None and frames == 1 else frame_causal_mask(
            frames, num_tokens, start, tokens.device
        )

        x = self.token_in(tokens.flatten(1, 2))
        for index, block in enumerate(self.blocks):
            if self.gradient_checkpointing and torch.is_grad_enabled() and cache is None:
                x = checkpoint(frame_block_forward, block, x, c, rope, mask, use_reentrant=False)
            else:
                x = frame_block_forward(block, x, c, rope, mask, cache, index)
        return x, c
