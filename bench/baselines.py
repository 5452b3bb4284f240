"""The slow implementations that unisep's fast paths replace, kept only to measure against.

- `explicit_attention`: softmax(Q K^T / sqrt(d)) V written out, in place of PyTorch's
  `scaled_dot_product_attention`;
- `ConcatenatingKVCache`: a key-value cache that grows by `torch.cat` at every new
  frame (as the SCD reference code does), in place of the preallocated `KVCache`;
- `count_host_reads`: counts the Python-level reads of tensor values (`.item()`,
  `bool(t)`, `float(t)`, ...) that force a host-device synchronisation on a GPU;
- `count_cuda_syncs`: counts every host-device synchronisation of a call on a GPU,
  those inside C++ kernels included.

Nothing in the package imports this file.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from einops import rearrange
from torch import Tensor

from unisep.networks.attention import Attention


def _explicit_attend(self: Attention, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """`Attention.attend` without SDPA: materialises the (n_q, n_k) score matrix."""
    k, v = k.to(q.dtype), v.to(q.dtype)
    scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    out = scores.softmax(dim=-1) @ v
    return self.proj(rearrange(out, "b h n d -> b n (h d)"))


@contextlib.contextmanager
def explicit_attention() -> Iterator[None]:
    """Run every `unisep` attention layer with the explicit softmax implementation."""
    fast = Attention.attend
    Attention.attend = _explicit_attend
    try:
        yield
    finally:
        Attention.attend = fast


class ConcatenatingKVCache:
    """Drop-in stand-in for `KVCache` that concatenates instead of writing in place.

    Every `update` builds new key and value tensors holding the committed tokens plus
    the new ones, so each denoising step and each new frame copies the whole history.
    """

    def __init__(self, num_layers: int, tokens_per_frame: int) -> None:
        self.tokens_per_frame = tokens_per_frame
        self.length = 0
        self._committed: list[tuple[Tensor, Tensor] | None] = [None] * num_layers
        self._written: list[tuple[Tensor, Tensor] | None] = [None] * num_layers

    @property
    def num_frames(self) -> int:
        """Committed frames."""
        return self.length // self.tokens_per_frame

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Return the committed keys and values followed by the new ones (batch, heads, tokens, head_dim)."""
        committed = self._committed[layer]
        if committed is not None:
            k = torch.cat([committed[0], k], dim=2)
            v = torch.cat([committed[1], v], dim=2)
        self._written[layer] = (k, v)
        return k, v

    def commit(self, num_tokens: int) -> None:
        """Keep the last write of every layer."""
        self._committed = list(self._written)
        self.length += num_tokens

    def reset(self) -> None:
        """Forget every frame."""
        self.length = 0
        self._committed = [None] * len(self._committed)


@contextlib.contextmanager
def concatenating_cache(network) -> Iterator[None]:
    """Make `network.new_cache` (an SCD encoder or a causal DiT) return a `ConcatenatingKVCache`."""
    encoder = getattr(network, "encoder", network)

    def new_cache(batch: int, max_frames: int, dtype: torch.dtype | None = None) -> ConcatenatingKVCache:
        return ConcatenatingKVCache(len(encoder.blocks), encoder.tokens_per_frame)

    network.new_cache = new_cache
    try:
        yield
    finally:
        del network.new_cache


_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


@contextlib.contextmanager
def count_host_reads() -> Iterator[list[str]]:
    """Record every Python-level read of a tensor's value inside the block.

    Yields the list of method names called, one entry per read. On a GPU each such read
    waits for the device. On a CPU it costs nothing, so timing cannot find it, but this
    count can. Reads inside C++ kernels are not seen, and `torch.cuda.set_sync_debug_mode`
    covers those on a GPU.
    """
    reads: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in _READS}

    def recorder(name):
        original = originals[name]

        def read(self, *args, **kwargs):
            reads.append(name)
            return original(self, *args, **kwargs)

        return read

    for name in _READS:
        setattr(torch.Tensor, name, recorder(name))
    try:
        yield reads
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def count_cuda_syncs(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Run `fn` once and count the host-device synchronisations it makes on a GPU.

    `torch.cuda.set_sync_debug_mode("warn")` issues one warning per synchronising
    CUDA call, and this counts them. Returns None without running `fn` when `device`
    is not CUDA.
    """
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)
