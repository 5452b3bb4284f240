"""The causal encoder of Separable Causal Diffusion (SCD).

A stack of DiT blocks over the tokens of all frames. Attention is bidirectional inside
a frame and causal across frames, so the output at frame i depends on frames 0..i only.
It returns one context token per spatial position of every frame. In training it runs
once over the whole clip with a block-causal mask. In a rollout it runs once per new
frame on that frame's tokens, which attend to a `KVCache` of the earlier frames.
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
from unisep.networks.weights import init_dit_weights


class CausalEncoder(nn.Module):
    """Frame-causal transformer from frame tokens to context tokens.

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
        # The blocks end in an RMSNorm with a learnable gain. A final norm without a gain
        # fixes the context tokens at unit RMS, so the context noise added in training
        # (std 0.05) keeps one meaning however the gains drift.
        self.out_norm = nn.RMSNorm(width, eps=1e-6, elementwise_affine=False)
        init_dit_weights(self)

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

    def forward(
        self,
        tokens: Tensor,
        t: Tensor | None = None,
        actions: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """Encode frames into context tokens.

        Without a cache, the frames are a whole clip starting at frame 0. With a cache,
        they are the next frames after the cached ones. Their keys and values are
        appended and committed, so the cache grows by `frames` frames.

        Args:
            tokens: (batch, frames, N, C) frame tokens.
            t: (batch, frames) flow time of each input frame; None means clean (t = 1).
            actions: (batch, frames) action of the frame that follows each input frame
                (the shift of SCD), or None.
            cache: rollout cache from `new_cache`, or None.

        Returns:
            (batch, frames, N, width) context tokens at unit RMS.
        """
        batch, frames, num_tokens, channels = tokens.shape
        if (num_tokens, channels) != (self.tokens_per_frame, self.token_channels):
            raise ValueError(
                f"expected frame tokens (batch, frames, {self.tokens_per_frame}, {self.token_channels}),"
                f" got {tuple(tokens.shape)}; check the frame tokenizer against the model's grid and token_channels"
            )
        if t is None:
            t = tokens.new_ones(batch, frames)
        c = self.conditioning(t, actions)

        start = cache.num_frames if cache is not None else 0
        rope = self.rope(start, frames)
        # A single new frame attends to every cached key and to its own frame: no mask.
        mask = None if cache is not None and frames == 1 else frame_causal_mask(
            frames, num_tokens, start, tokens.device
        )

        x = self.token_in(tokens.flatten(1, 2))
        for index, block in enumerate(self.blocks):
            if self.gradient_checkpointing and torch.is_grad_enabled() and cache is None:
                x = checkpoint(frame_block_forward, block, x, c, rope, mask, use_reentrant=False)
            else:
                x = frame_block_forward(block, x, c, rope, mask, cache, index)
        if cache is not None:
            cache.commit(frames * num_tokens)
        return self.out_norm(x).unflatten(1, (frames, num_tokens))
