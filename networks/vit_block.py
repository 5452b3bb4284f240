"""Pre-norm ViT block (Dosovitskiy et al. 2021) used by the latent decoders."""

from __future__ import annotations

from torch import Tensor, nn

from unisep.networks.attention import Attention


class ViTBlock(nn.Module):
    """`x + attn(LN(x))`, then `x + MLP(LN(x))` with a GELU MLP; SDPA attention."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads, qk_norm=False)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Apply the block to x (batch, tokens, width)."""
        x = x + self.attn(self.norm1(x), mask=mask)
        return x + self.mlp(self.norm2(x))
