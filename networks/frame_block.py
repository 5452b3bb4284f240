"""A `DiTBlock` applied to video tokens with one conditioning vector per frame.

`DiTBlock.forward` takes one conditioning vector per sample. Frame-causal video models
condition every frame on its own noise level (and action), so the adaLN terms are
computed once per frame, (batch, frames, width), and broadcast over that frame's tokens
instead of being projected for every token. The same function runs the block with a
`KVCache`, reusing the block's own submodules, so trained weights serve both the
masked training forward and the cached rollout.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from unisep.networks.dit_block import DiTBlock, FinalLayer
from unisep.networks.kv_cache import KVCache


@functools.lru_cache(maxsize=32)
def frame_causal_mask(
    num_frames: int, tokens_per_frame: int, cached_frames: int = 0, device: torch.device | str = "cpu"
) -> Tensor:
    """Build the block-causal mask of `num_frames` new frames after `cached_frames` cached ones.

    Attention is bidirectional inside a frame and causal across frames: a token of
    frame i attends to every token of frames <= i. Masks are memoised per argument
    tuple, so training builds one mask per sequence length, not one per step; callers
    must not modify the returned tensor.

    Returns:
        Boolean (num_frames * N, (cached_frames + num_frames) * N), True = attend.
    """
    query_frame = torch.arange(cached_frames, cached_frames + num_frames, device=device)
    key_frame = torch.arange(cached_frames + num_frames, device=device)
    allowed = key_frame[None, :] <= query_frame[:, None]
    return allowed.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


def frame_modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """Apply `x * (1 + scale) + shift` with one shift and scale per frame.

    Args:
        x: (batch, frames * tokens_per_frame, width).
        shift, scale: (batch, frames, width).

    Returns:
        (batch, frames * tokens_per_frame, width).
    """
    frames = shift.shape[1]
    x = x.unflatten(1, (frames, -1))
    return (x * (1 + scale.unsqueeze(2)) + shift.unsqueeze(2)).flatten(1, 2)


def frame_gate(x: Tensor, gate: Tensor) -> Tensor:
    """Multiply x (batch, frames * tokens_per_frame, width) by a per-frame gate (batch, frames, width)."""
    return (x.unflatten(1, (gate.shape[1], -1)) * gate.unsqueeze(2)).flatten(1, 2)


def frame_block_forward(
    block: DiTBlock,
    x: Tensor,
    c: Tensor,
    rope: tuple[Tensor, Tensor] | None = None,
    mask: Tensor | None = None,
    cache: KVCache | None = None,
    layer: int = 0,
) -> Tensor:
    """Apply `block` with per-frame conditioning, optionally attending through a cache.

    Without a cache, the tokens attend to each other under `mask`. With a cache, the
    keys and values of `x` are written after the cached ones (see `KVCache.update`) and
    the queries of `x` attend to all of them, so a single new frame needs no mask.

    Args:
        block: the block whose submodules are used.
        x: (batch, frames * tokens_per_frame, width) tokens of whole frames.
        c: (batch, frames, width) conditioning of each frame.
        rope: rotary (cos, sin), each (frames * tokens_per_frame, head_dim // 2), for
            the positions of `x`.
        mask: boolean attention mask, True = attend, of shape (queries, keys) where
            keys include the cached tokens; None attends everywhere.
        cache: cache to read past keys and values from and to write new ones to.
        layer: index of this block in `cache`.

    Returns:
        (batch, frames * tokens_per_frame, width).
    """
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = block.modulation_terms(c)

    q, k, v = block.attn.project(frame_modulate(block.norm1(x), shift_a, scale_a), rope)
    if cache is not None:
        k, v = cache.update(layer, k, v)
    x = x + frame_gate(block.attn.attend(q, k, v, mask), gate_a)

    x = x + frame_gate(block.mlp(frame_modulate(block.norm2(x), shift_m, scale_m)), gate_m)
    return block.norm3(x)


def frame_final_layer(layer: FinalLayer, x: Tensor, c: Tensor) -> Tensor:
    """Apply a `FinalLayer` with per-frame conditioning.

    Args:
        layer: the output layer.
        x: (batch, frames * tokens_per_frame, width).
        c: (batch, frames, width).

    Returns:
        (batch, frames * tokens_per_frame, out_channels).
    """
    shift, scale = layer.modulation(c).chunk(2, dim=-1)
    return layer.linear(frame_modulate(layer.norm(x), shift, scale))
