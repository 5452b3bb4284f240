"""Preallocated key-value cache for frame-causal transformers.

The SCD causal encoder and the causal-DiT baseline attend, at inference, from the
tokens of one new frame to the keys and values of every earlier frame. This cache
stores those keys and values for all layers in one tensor allocated up front, so a
rollout appends in place and never reallocates or recomputes past frames.

Each write lands just after the committed part of the cache. `commit` makes it
permanent; a write that is not committed is overwritten by the next one. The causal
DiT relies on this: each of its T denoising steps writes the noisy frame's keys as
scratch, and only the final pass over the clean frame is committed.
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Keys and values of `num_layers` attention layers for up to `max_frames` frames.

    Args:
        num_layers: attention layers that share the cache.
        batch: batch size of the rollout.
        heads: attention heads per layer.
        head_dim: channels per head.
        tokens_per_frame: tokens N that one frame contributes.
        max_frames: capacity in frames; context plus generated frames must fit.
        device: device of the cache tensors.
        dtype: dtype of the stored keys and values.
    """

    def __init__(
        self,
        num_layers: int,
        batch: int,
        heads: int,
        head_dim: int,
        tokens_per_frame: int,
        max_frames: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        if min(num_layers, batch, heads, head_dim, tokens_per_frame, max_frames) < 1:
            raise ValueError(
                "every KVCache size must be >= 1, got"
                f" num_layers={num_layers}, batch={batch}, heads={heads}, head_dim={head_dim},"
                f" tokens_per_frame={tokens_per_frame}, max_frames={max_frames}"
            )
        self.tokens_per_frame = tokens_per_frame
        self.max_frames = max_frames
        shape = (num_layers, batch, heads, max_frames * tokens_per_frame, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        # A Python int: reading it never synchronises with the device.
        self.length = 0

    @property
    def num_layers(self) -> int:
        """Number of layers stored."""
        return self.keys.shape[0]

    @property
    def batch(self) -> int:
        """Batch size the cache was allocated for."""
        return self.keys.shape[1]

    @property
    def capacity(self) -> int:
        """Capacity in tokens (`max_frames * tokens_per_frame`)."""
        return self.keys.shape[3]

    @property
    def num_frames(self) -> int:
        """Committed frames."""
        return self.length // self.tokens_per_frame

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write new keys and values after the committed ones and return all of them.

        Args:
            layer: index of the attention layer.
            k, v: (batch, heads, new_tokens, head_dim) of the new tokens, already
                normalised and rotated.

        Returns:
            Keys and values (batch, heads, length + new_tokens, head_dim): views into the
            cache covering the committed tokens followed by the new ones.

        Raises:
            ValueError: if the shapes do not match the cache or it would overflow.
        """
        self._check_layer(layer)
        _, batch, heads, _, head_dim = self.keys.shape
        if k.shape != v.shape or k.ndim != 4 or (k.shape[0], k.shape[1], k.shape[3]) != (batch, heads, head_dim):
            raise ValueError(
                f"keys {tuple(k.shape)} and values {tuple(v.shape)} must both be"
                f" (batch={batch}, heads={heads}, new_tokens, head_dim={head_dim})"
            )
        end = self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(
                f"KV cache overflow: {self.num_frames} committed frames plus"
                f" {k.shape[2] / self.tokens_per_frame:g} new ones exceed max_frames={self.max_frames};"
                " allocate the cache with max_frames >= context frames + generated frames"
            )
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def commit(self, num_tokens: int) -> None:
        """Keep the last `num_tokens` written tokens, a whole number of frames."""
        if num_tokens % self.tokens_per_frame or num_tokens < 0:
            raise ValueError(
                f"commit takes whole frames of {self.tokens_per_frame} tokens, got {num_tokens} tokens"
            )
        if self.length + num_tokens > self.capacity:
            raise ValueError(
                f"cannot commit {num_tokens} tokens: only {self.capacity - self.length} free token slots remain;"
                " allocate the cache with a larger max_frames"
            )
        self.length += num_tokens

    def reset(self) -> None:
        """Forget every frame; the storage stays allocated for the next rollout."""
        self.length = 0

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} is out of range for a cache of {self.num_layers} layers")
