"""Per-frame conditioning vector: flow-time embedding plus an optional action embedding."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unisep.networks.layers import GaussianFourierTimestepEmbedding, LabelEmbedding


class FrameConditioning(nn.Module):
    """Embed per-frame flow times and optional per-frame actions into (batch, frames, width).

    A clip-level class label is an action repeated over the frames.

    Args:
        width: embedding width.
        num_actions: number of action classes; 0 for an unconditional model. The table
            has one extra null row (index `num_actions`) for classifier-free guidance.
        action_dropout: probability of replacing an action by the null action in training.
    """

    def __init__(self, width: int, num_actions: int = 0, action_dropout: float = 0.1):
        super().__init__()
        self.num_actions = num_actions
        self.timestep = GaussianFourierTimestepEmbedding(width)
        self.action = LabelEmbedding(num_actions, width, dropout=action_dropout) if num_actions > 0 else None

    def forward(self, t: Tensor, actions: Tensor | None = None) -> Tensor:
        """Embed the conditions of each frame.

        Args:
            t: (batch, frames) flow times in [0, 1].
            actions: (batch, frames) int64 action ids in [0, num_actions], where
                `num_actions` is the null action, or None.

        Returns:
            (batch, frames, width).
        """
        if t.ndim != 2:
            raise ValueError(f"t must be (batch, frames), got shape {tuple(t.shape)}")
        c = self.timestep(t.flatten()).unflatten(0, t.shape)
        if actions is None:
            return c
        if self.action is None:
            raise ValueError("actions were given to a model built with num_actions=0; set num_actions in the model config")
        if actions.shape != t.shape:
            raise ValueError(f"actions {tuple(actions.shape)} must have the shape of t {tuple(t.shape)}, (batch, frames)")
        return c + self.action(actions.long())

    def null_actions(self, like: Tensor) -> Tensor:
        """Return null actions of the shape of `like` (batch, frames)."""
        if self.action is None:
            raise ValueError("the model has no action embedding (num_actions=0), so it has no null action")
        return torch.full(like.shape[:2], self.action.null_class, dtype=torch.long, device=like.device)
