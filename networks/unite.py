"""The full UNITE network: Generative Encoder, modality front end and decoder.

The two passes of a training step use the same GE weights (unless
`separate_denoiser` is set, the two-network ablation):

    z0     = LN(GE(noise registers ; front_end(batch), t ~ U[0, tokenize_t_max], null))
    x_pred = LN(GE(x_t registers, t, label))

`LN` is one LayerNorm with a learnable affine over the latent channels, shared by both
modes. It fixes the latent scale, which the flow's unit-variance noise is matched to.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from unisep.networks.generative_encoder import GenerativeEncoder
from unisep.networks.layers import sincos_1d
from unisep.networks.modality import Modality
from unisep.networks.presets import UniteSize


class UniteNetwork(nn.Module):
    """Generative Encoder, latent LayerNorm, register positions, front end and decoder.

    Args:
        size: a `UniteSize` preset.
        modality: the data modality (builds the front end and the decoder).
        num_classes: number of class labels (1 for unconditional data).
        label_dropout: probability of the null class in training.
        separate_denoiser: give the generate mode its own GE weights (ablation).
        tokenize_t_max: the tokenize mode's timestep is drawn from U[0, tokenize_t_max].
    """

    def __init__(
        self,
        size: UniteSize,
        modality: Modality,
        num_classes: int,
        label_dropout: float = 0.1,
        separate_denoiser: bool = False,
        tokenize_t_max: float = 0.01,
    ):
        super().__init__()
        self.size = size
        self.num_classes = num_classes
        self.tokenize_t_max = tokenize_t_max

        def make_encoder() -> GenerativeEncoder:
            return GenerativeEncoder(
                width=size.width,
                depth=size.depth,
                heads=size.heads,
                latent_channels=size.latent_channels,
                num_classes=num_classes,
                mlp_ratio=size.mlp_ratio,
                num_class_tokens=size.num_class_tokens,
                class_token_start=size.class_token_start,
                label_dropout=label_dropout,
            )

        self.encoder = make_encoder()
        self.denoiser = make_encoder() if separate_denoiser else None
        self.front_end = modality.build_front_end(size.width)
        self.decoder = modality.build_decoder(size.decoder, size.latent_tokens, size.latent_channels)
        # Register positions start as distinct 1-D sin-cos codes at unit scale, near the
        # scale of the N(0, I) noise they are added to. Tiny random positions make the K
        # registers indistinguishable, and the tokenizer then collapses.
        self.register_pos = nn.Parameter(sincos_1d(size.width, torch.arange(size.latent_tokens)))
        self.latent_norm = nn.LayerNorm(size.latent_channels, elementwise_affine=True)

    @property
    def generator_encoder(self) -> GenerativeEncoder:
        """The GE used in generate mode (the shared one unless `separate_denoiser`)."""
        return self.denoiser if self.denoiser is not None else self.encoder

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute GE block activations in backward to save memory."""
        for encoder in (self.encoder, self.denoiser):
            if encoder is not None:
                encoder.gradient_checkpointing = enabled

    def tokenize(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> Tensor:
        """Encode a batch into normalised latents z0 (batch, K, C). Ignores labels."""
        tokens, mask = self.front_end(batch)
        batch_size = tokens.shape[0]
        shape = (batch_size, self.size.latent_tokens, self.size.latent_channels)
        noise = torch.randn(shape, device=tokens.device, dtype=tokens.dtype, generator=generator)
        t = torch.rand(batch_size, device=tokens.device, generator=generator) * self.tokenize_t_max
        # The label is a placeholder: force_null_label replaces it by the null class.
        labels = torch.zeros(batch_size, dtype=torch.long, device=tokens.device)
        raw = self.encoder(
            noise,
            self.register_pos,
            t,
            labels,
            data_tokens=tokens,
            data_mask=mask,
            force_null_label=True,
        )
        return self.latent_norm(raw)

    def denoise(self, x_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        """Predict the clean normalised latent from x_t (batch, K, C) at time t (batch,)."""
        raw = self.generator_encoder(x_t, self.register_pos, t, labels)
        return self.latent_norm(raw)

    def decode(self, latents: Tensor) -> Any:
        """Map latents (batch, K, C) to data with the modality's decoder."""
        return self.decoder(latents)
