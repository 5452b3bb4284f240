"""The SCD network: causal encoder, context shift and frame decoder.

Frame i is decoded from the encoder output at frame i - 1, the last position whose
frames the encoder has read. So frame 0 is never predicted, and a rollout starts from
at least one context frame. The encoder's action input is shifted the same way: the
encoder at frame i receives the action of frame i + 1, the frame its output conditions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unisep.networks.frame_decoder import FrameDecoder
from unisep.networks.kv_cache import KVCache
from unisep.networks.scd_encoder import CausalEncoder
from unisep.networks.scd_presets import SCDSize


def next_frame_actions(actions: Tensor | None) -> Tensor | None:
    """Shift per-frame actions (batch, frames) left by one frame, repeating the last.

    Entry i becomes the action of frame i + 1. The repeated last entry feeds the
    encoder at the last frame, whose output no frame of the clip uses in training.
    """
    if actions is None:
        return None
    return torch.cat([actions[:, 1:], actions[:, -1:]], dim=1)


class SCDNetwork(nn.Module):
    """Causal encoder plus frame decoder.

    Args:
        size: an `SCDSize` preset.
        token_channels: channels C of one frame token.
        grid: (rows, columns) layout of the N tokens of a frame.
        num_actions: action classes (0 for none).
        action_dropout: probability of the null action in training.
    """

    def __init__(
        self,
        size: SCDSize,
        token_channels: int,
        grid: tuple[int, int],
        num_actions: int = 0,
        action_dropout: float = 0.1,
    ):
        super().__init__()
        self.size = size
        self.encoder = CausalEncoder(
            token_channels,
            grid,
            width=size.width,
            depth=size.encoder_depth,
            heads=size.heads,
            mlp_ratio=size.mlp_ratio,
            num_actions=num_actions,
            action_dropout=action_dropout,
        )
        self.decoder = FrameDecoder(
            token_channels,
            grid,
            context_width=size.width,
            width=size.width,
            depth=size.decoder_depth,
            heads=size.heads,
            mlp_ratio=size.mlp_ratio,
            num_actions=num_actions,
            action_dropout=action_dropout,
        )

    @property
    def num_actions(self) -> int:
        """Action classes of the conditioning (0 for an unconditional model)."""
        return self.encoder.conditioning.num_actions

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute block activations in backward to save memory."""
        self.encoder.gradient_checkpointing = enabled
        self.decoder.gradient_checkpointing = enabled

    def context(self, tokens: Tensor, actions: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        """Encode a clip and return the context of frames 1..F-1.

        Args:
            tokens: (batch, F, N, C) encoder input frames.
            actions: (batch, F) action of each frame, or None.
            t: (batch, F) flow time given to the encoder's timestep embedding; None
                marks every frame as clean (t = 1), as the reference code does even when
                the frames themselves are noised.

        Returns:
            (batch, F - 1, N, width): entry j is the encoder output at frame j, which
            conditions frame j + 1.
        """
        if tokens.shape[1] < 2:
            raise ValueError(f"SCD needs clips of at least 2 frames to train, got {tokens.shape[1]}")
        return self.encoder(tokens, t, next_frame_actions(actions))[:, :-1]

    def decode(self, x_t: Tensor, context: Tensor, t: Tensor, actions: Tensor | None = None) -> Tensor:
        """Predict the velocity of each frame from its own noisy tokens and context.

        Args:
            x_t: (batch, frames, N, C) noisy frames.
            context: (batch, frames, N, width) context of each frame.
            t: (batch, frames) flow times.
            actions: (batch, frames) actions, or None.

        Returns:
            (batch, frames, N, C) velocities; frames are decoded independently.
        """
        batch, frames = x_t.shape[:2]
        v = self.decoder(
            x_t.flatten(0, 1),
            context.flatten(0, 1),
            t.flatten(0, 1),
            None if actions is None else actions.flatten(0, 1),
        )
        return v.unflatten(0, (batch, frames))

    def new_cache(self, batch: int, max_frames: int, dtype: torch.dtype | None = None) -> KVCache:
        """Allocate the encoder's cache for a rollout of at most `max_frames` frames."""
        return self.encoder.new_cache(batch, max_frames, dtype)

    def extend(self, tokens: Tensor, cache: KVCache, next_actions: Tensor | None = None) -> Tensor:
        """Append clean frames to the cache and return the context of the frame after them.

        Args:
            tokens: (batch, frames, N, C) clean frames following the cached ones.
            cache: the rollout cache; it grows by `frames` frames.
            next_actions: (batch, frames) action of the frame after each input frame, or None.

        Returns:
            (batch, N, width) context for the next frame to generate.
        """
        return self.encoder(tokens, None, next_actions, cache)[:, -1]


def perturb_context(context: Tensor, std: float, generator: torch.Generator | None = None) -> Tensor:
    """Add N(0, std^2) noise to context tokens.

    Training adds it (std 0.05) against exposure bias; guidance uses a perturbed
    context as its unconditional branch.
    """
    if std <= 0:
        return context
    # Drawn on the generator's device, so a CPU generator also seeds GPU rollouts.
    device = generator.device if generator is not None else context.device
    noise = torch.randn(context.shape, device=device, dtype=context.dtype, generator=generator)
    return context + std * noise.to(context.device)
