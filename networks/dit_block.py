"""The adaLN-Zero transformer block of the Generative Encoder and the SCD networks.

DiT block (Peebles & Xie 2023) with the changes UNITE uses: RMSNorm in place of
LayerNorm, a SwiGLU MLP, QK-norm, rotary positions, and one more RMSNorm at the end of
each block that keeps the residual stream at unit scale.
"""

from __future__ import annotations

from torch import Tensor, nn

from unisep.networks.attention import Attention
from unisep.networks.layers import RMSNorm, SwiGLU, modulate, swiglu_hidden


class DiTBlock(nn.Module):
    """One adaLN-Zero block: `x + g1 * attn(mod(norm(x)))`, then the same for the MLP.

    The modulation (shift, scale, gate for attention and MLP) is a linear map of the
    conditioning vector, initialised to zero so each block starts as the identity.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, qk_norm: bool = True, block_norm: bool = True):
        super().__init__()
        self.norm1 = RMSNorm(width, eps=1e-6)
        self.attn = Attention(width, heads, qk_norm=qk_norm)
        self.norm2 = RMSNorm(width, eps=1e-6)
        self.mlp = SwiGLU(width, swiglu_hidden(width, mlp_ratio))
        self.norm3 = RMSNorm(width, eps=1e-6) if block_norm else nn.Identity()
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.modulation[-1].weight)
        nn.init.zeros_(self.modulation[-1].bias)

    def modulation_terms(self, c: Tensor) -> tuple[Tensor, ...]:
        """Split the modulation of c (batch, width) into six (batch, width) terms."""
        return self.modulation(c).chunk(6, dim=-1)

    def forward(
        self,
        x: Tensor,
        c: Tensor,
        rope: tuple[Tensor, Tensor] | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Apply the block.

        Args:
            x: (batch, tokens, width).
            c: conditioning (batch, width), e.g. timestep + class embedding.
            rope: rotary (cos, sin) tables for the tokens, or None.
            mask: boolean attention mask, True = attend (see `Attention.attend`).
        """
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.modulation_terms(c)
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a), rope, mask)
        x = x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))
        return self.norm3(x)


class FinalLayer(nn.Module):
    """Output layer: adaLN (shift, scale) on an RMSNorm, then a zero-initialised linear map."""

    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.norm = RMSNorm(width, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, out_channels)
        for layer in (self.modulation[-1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """Map (batch, tokens, width) to (batch, tokens, out_channels)."""
        shift, scale = self.modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))
