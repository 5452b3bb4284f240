"""DiT weight initialisation shared by the SCD networks and the causal DiT."""

from __future__ import annotations

from torch import nn

from unisep.networks.dit_block import DiTBlock, FinalLayer
from unisep.networks.layers import GaussianFourierTimestepEmbedding, LabelEmbedding


def init_dit_weights(model: nn.Module) -> None:
    """Initialise `model` in place as DiT does (Peebles & Xie 2023).

    Linear maps get Xavier-uniform weights and zero biases. Timestep MLPs and label
    tables get N(0, 0.02^2). Every adaLN modulation and output layer goes back to zero,
    so each block starts as the identity and the output starts at zero (adaLN-Zero).
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for module in model.modules():
        if isinstance(module, GaussianFourierTimestepEmbedding):
            nn.init.normal_(module.mlp[0].weight, std=0.02)
            nn.init.normal_(module.mlp[2].weight, std=0.02)
        elif isinstance(module, LabelEmbedding):
            nn.init.normal_(module.table.weight, std=0.02)
        elif isinstance(module, DiTBlock):
            nn.init.zeros_(module.modulation[-1].weight)
            nn.init.zeros_(module.modulation[-1].bias)
        elif isinstance(module, FinalLayer):
            for layer in (module.modulation[-1], module.linear):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
