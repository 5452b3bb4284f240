"""The causal encoder of Separable Causal Diffusion (SCD).

A stack of DiT blocks over the tokens of all frames. Attention is bidirectional inside
a frame and causal across frames, so the output at frame i depends on frames 0..i only.
It returns one context token per spatial position of every frame. In training it runs
once over the whole clip with a block-causal mask. In a rollout it runs once per new
frame on that frame's tokens, which attend to a `KVCache` of the earlier frames.
"""

from __future__ import annotations

from torch import Tensor, nn

from unisep.networks.frame_causal_transformer import FrameCausalTransformer
from unisep.networks.kv_cache import KVCache
from unisep.networks.layers import RMSNorm
from unisep.networks.weights import init_dit_weights


class CausalEncoder(FrameCausalTransformer):
    """Frame-causal transformer from frame tokens to context tokens.

    The constructor arguments are those of `FrameCausalTransformer`. The output is
    the block output under an RMSNorm without gain, so context tokens have unit RMS.
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
        super().__init__(token_channels, grid, width, depth, heads, mlp_ratio, num_actions, action_dropout, qk_norm)
        # The blocks end in an RMSNorm with a learnable gain. A final norm without a gain
        # fixes the context tokens at unit RMS, so the context noise added in training
        # (std 0.05) keeps one meaning however the gains drift.
        self.out_norm = RMSNorm(width, eps=1e-6, elementwise_affine=False)
        init_dit_weights(self)

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
        batch, frames, num_tokens, _ = tokens.shape
        if t is None:
            t = tokens.new_ones(batch, frames)
        x, _ = self.run_blocks(tokens, t, actions, cache)
        if cache is not None:
            cache.commit(frames * num_tokens)
        return self.out_norm(x).unflatten(1, (frames, num_tokens))
