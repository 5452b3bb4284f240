"""The Generative Encoder (GE) of UNITE: one transformer that tokenizes and denoises.

Both modes share every weight and differ only in their input and conditioning:

- tokenize: [K noise registers ; data tokens], null class, timestep near 0 (the noise
  end). The output at the register positions is the latent.
- generate: [K noisy latent registers], the real timestep and the class label. The
  output is the prediction of the clean latent (x-prediction).

From block `class_token_start` on, `num_class_tokens` in-context class tokens (the class
embedding plus learned positions) are prepended to the sequence and removed before
the output layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from unisep.networks.dit_block import DiTBlock, FinalLayer
from unisep.networks.layers import GaussianFourierTimestepEmbedding, LabelEmbedding
from unisep.networks.rotary import RotaryEmbedding


class GenerativeEncoder(nn.Module):
    """DiT-style transformer over latent registers, optionally joined by data tokens.

    Args:
        width, depth, heads: transformer size.
        latent_channels: channels C of one latent token.
        num_classes: number of classes; the label table has one more, null, row.
        mlp_ratio: MLP width as a multiple of `width` (SwiGLU uses 2/3 of it).
        num_class_tokens: in-context class tokens (0 disables them).
        class_token_start: index of the first block that receives the class tokens.
        label_dropout: probability of the null class in training (for guidance).
    """

    def __init__(
        self,
        width: int,
        depth: int,
        heads: int,
        latent_channels: int,
        num_classes: int,
        mlp_ratio: float = 4.0,
        num_class_tokens: int = 32,
        class_token_start: int = 4,
        label_dropout: float = 0.1,
        qk_norm: bool = True,
    ):
        super().__init__()
        self.width = width
        self.latent_channels = latent_channels
        self.num_class_tokens = num_class_tokens if class_token_start < depth else 0
        self.class_token_start = class_token_start
        self.gradient_checkpointing = False

        self.latent_in = nn.Linear(latent_channels, width)
        self.timestep_embedding = GaussianFourierTimestepEmbedding(width)
        self.label_embedding = LabelEmbedding(num_classes, width, dropout=label_dropout)
        self.class_token_pos = nn.Parameter(torch.randn(self.num_class_tokens, width) * 0.02)
        self.rope = RotaryEmbedding(width // heads)
        self.blocks = nn.ModuleList(
            [DiTBlock(width, heads, mlp_ratio=mlp_ratio, qk_norm=qk_norm) for _ in range(depth)]
        )
        self.final_layer = FinalLayer(width, latent_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        # Xavier for linear maps, as DiT; the adaLN and output layers then go back to
        # zero so that every block starts as the identity (adaLN-Zero).
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.label_embedding.table.weight, std=0.02)
        for layer in (self.timestep_embedding.mlp[0], self.timestep_embedding.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.modulation[-1].weight)
            nn.init.zeros_(block.modulation[-1].bias)
        for layer in (self.final_layer.modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self,
        latents: Tensor,
        register_pos: Tensor,
        t: Tensor,
        labels: Tensor,
        data_tokens: Tensor | None = None,
        data_mask: Tensor | None = None,
        force_null_label: bool = False,
    ) -> Tensor:
        """Run the GE.

        Args:
            latents: (batch, K, C) register contents: noise (tokenize) or x_t (generate).
            register_pos: (K, width) register position embedding.
            t: (batch,) flow time in [0, 1].
            labels: (batch,) int64 class labels.
            data_tokens: (batch, N, width) embedded data (tokenize mode) or None.
            data_mask: (batch, N) bool, True for real data tokens; None = all real.
            force_null_label: condition on the null class (tokenize mode).

        Returns:
            (batch, K, C): the raw output at the register positions (before the shared
            LayerNorm, which the caller applies).
        """
        batch, num_registers, _ = latents.shape
        x = self.latent_in(latents) + register_pos.to(latents.dtype)
        if data_tokens is not None:
            x = torch.cat([x, data_tokens.to(x.dtype)], dim=1)

        label_emb = self.label_embedding(labels, force_null=force_null_label)
        c = self.timestep_embedding(t) + label_emb

        num_tokens = x.shape[1]
        positions = torch.arange(num_tokens, device=x.device)
        rope = self.rope(positions)
        # Class tokens sit at position 0 (an identity rotation) before the sequence.
        rope_with_class = self.rope(torch.cat([positions.new_zeros(self.num_class_tokens), positions]))
        mask = self._attention_mask(data_mask, batch, num_registers, x.device)

        for index, block in enumerate(self.blocks):
            if self.num_class_tokens and index == self.class_token_start:
                class_tokens = label_emb[:, None, :] + self.class_token_pos[None].to(label_emb.dtype)
                x = torch.cat([class_tokens.to(x.dtype), x], dim=1)
                if mask is not None:
                    mask = torch.cat([mask.new_ones(batch, 1, 1, self.num_class_tokens), mask], dim=-1)
            block_rope = rope_with_class if self.num_class_tokens and index >= self.class_token_start else rope
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, c, block_rope, mask, use_reentrant=False)
            else:
                x = block(x, c, block_rope, mask)

        if self.num_class_tokens and len(self.blocks) > self.class_token_start:
            x = x[:, self.num_class_tokens:]
        return self.final_layer(x[:, :num_registers], c)

    @staticmethod
    def _attention_mask(data_mask: Tensor | None, batch: int, num_registers: int, device) -> Tensor | None:
        """Build a key mask (batch, 1, 1, tokens) that hides padded data tokens."""
        if data_mask is None:
            return None
        registers = torch.ones(batch, num_registers, dtype=torch.bool, device=device)
        return torch.cat([registers, data_mask.bool()], dim=1)[:, None, None, :]
