"""Multi-head self-attention with QK-norm and rotary positions, on PyTorch SDPA.

`scaled_dot_product_attention` picks the Flash or memory-efficient kernel on GPUs and
the math kernel on CPU. The projection and the attention call are separate methods so
that cached attention (the SCD encoder and the causal DiT) can reuse them and attend
to keys and values stored from earlier frames.
"""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from unisep.networks.layers import RMSNorm
from unisep.networks.rotary import apply_rotary


class Attention(nn.Module):
    """Self-attention with a per-head RMSNorm on queries and keys (QK-norm).

    Args:
        width: model width.
        heads: number of heads; width must be divisible by it.
        qk_norm: normalise queries and keys per head before the dot product, which keeps
            attention logits bounded in long or bf16 training.
        qkv_bias: bias on the fused query-key-value projection.
    """

    def __init__(self, width: int, heads: int, qk_norm: bool = True, qkv_bias: bool = True):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = width // heads
        self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.q_norm = RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(width, width)

    def project(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Compute normalised, rotated queries, keys and values.

        Args:
            x: (batch, tokens, width).
            rope: (cos, sin), each (tokens, head_dim // 2), or None.

        Returns:
            q, k, v, each (batch, heads, tokens, head_dim).
        """
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return q, k, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attend queries (batch, heads, n_q, d) to keys/values (batch, heads, n_k, d).

        Args:
            mask: boolean (n_q, n_k) or broadcastable to (batch, heads, n_q, n_k);
                True where attention is allowed. None attends everywhere.

        Returns:
            (batch, n_q, width) after the output projection.
        """
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None, mask: Tensor | None = None
    ) -> Tensor:
        """Self-attention over x (batch, tokens, width)."""
        q, k, v = self.project(x, rope)
        return self.attend(q, k, v, mask)
