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

from torch import Tensor

from unisep.networks.dit_block import FinalLayer
from unisep.networks.frame_block import frame_final_layer
from unisep.networks.frame_causal_transformer import FrameCausalTransformer
from unisep.networks.kv_cache import KVCache
from unisep.networks.weights import init_dit_weights


class CausalDiT(FrameCausalTransformer):
    """Frame-causal velocity predictor over the tokens of all frames.

    The constructor arguments are those of `FrameCausalTransformer`. The output layer
    is an adaLN-conditioned `FinalLayer` per frame.
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
        self.final_layer = FinalLayer(width, token_channels)
        init_dit_weights(self)

    @property
    def num_actions(self) -> int:
        """Action classes of the conditioning (0 for an unconditional model)."""
        return self.conditioning.num_actions

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
        if commit and cache is None:
            raise ValueError("commit=True needs a cache")
        _, frames, num_tokens, _ = x_t.shape
        x, c = self.run_blocks(x_t, t, actions, cache)
        if commit:
            cache.commit(frames * num_tokens)
        return frame_final_layer(self.final_layer, x, c).unflatten(1, (frames, num_tokens))
