"""The SCD training objective: one causal-encoder pass, several frame-decoder passes.

    x1                 clean tokens (batch, F, N, C)
    x_t, t             per-frame noising, about 10% of frames clean (`noise_frames`)
    context            encoder(x_t or x1, clean timestep)[frames 0..F-2]
    for each of the P decoder passes (fresh noise and times after the first):
        v_i            decoder(x_t[i], context[i - 1] + 0.05 eps, t[i])    i = 1..F-1
        loss_p         mean over noised frames i of |v_i - (x1[i] - noise[i])|^2
    loss               mean over the P passes

The encoder cost is shared by the P passes, which is what makes a second decoder
pass cheap. Frame 0 is never predicted: no context precedes it.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn

from unisep.flow import velocity_mse_loss
from unisep.lightning_modules.frame_noise import NoisedFrames, Prediction, noise_frames, output_to_velocity
from unisep.networks.scd import SCDNetwork, perturb_context


class EncoderInput(str, Enum):
    """Input of the causal encoder in training."""

    #: the same per-frame noised tokens as the decoder, with the timestep embedding
    #: fixed to clean (t = 1), as in the SCD authors' code
    NOISED = "noised"
    #: the clean tokens (teacher forcing), as the SCD paper's text describes
    CLEAN = "clean"


class SCDLoss(nn.Module):
    """Callable `loss(network, batch) -> (loss, terms)` for one SCD step.

    Args:
        decoder_passes: P, decoder passes with fresh noise per encoder pass.
        clean_frame_prob: share of frames kept clean.
        context_noise: std of the Gaussian noise added to the context tokens.
        encoder_input: an `EncoderInput` value.
        timestep_mean, timestep_std, timestep_shift: per-frame time distribution.
        prediction: a `Prediction` value, the meaning of the decoder's output.
    """

    def __init__(
        self,
        decoder_passes: int = 2,
        clean_frame_prob: float = 0.1,
        context_noise: float = 0.05,
        encoder_input: str = "noised",
        timestep_mean: float = 0.0,
        timestep_std: float = 1.0,
        timestep_shift: float = 1.0,
        prediction: str = "velocity",
    ):
        super().__init__()
        if decoder_passes < 1:
            raise ValueError(f"decoder_passes must be >= 1, got {decoder_passes}")
        if context_noise < 0:
            raise ValueError(f"context_noise must be >= 0, got {context_noise}")
        self.decoder_passes = decoder_passes
        self.clean_frame_prob = clean_frame_prob
        self.context_noise = context_noise
        self.encoder_input = EncoderInput(encoder_input)
        self.timestep_mean = timestep_mean
        self.timestep_std = timestep_std
        self.timestep_shift = timestep_shift
        self.prediction = Prediction(prediction)

    def _noise(self, x1: Tensor) -> NoisedFrames:
        return noise_frames(x1, self.clean_frame_prob, self.timestep_mean, self.timestep_std, self.timestep_shift)

    def forward(self, network: SCDNetwork, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss of a batch `{"tokens": (batch, F, N, C), "actions": (batch, F) or absent}`.

        Returns:
            The scalar loss and detached terms: `loss`, `loss_pass<p>` per pass and
            `noised_frames`, the share of predicted frames that were noised.
        """
        x1: Tensor = batch["tokens"]
        actions: Tensor | None = batch.get("actions")
        if x1.ndim != 4 or x1.shape[1] < 2:
            raise ValueError(f"SCD trains on tokens (batch, frames >= 2, N, C), got {tuple(x1.shape)}")

        draw = self._noise(x1)
        encoder_tokens = draw.x_t if self.encoder_input is EncoderInput.NOISED else x1
        context = network.context(encoder_tokens, actions)
        decoder_actions = None if actions is None else actions[:, 1:]

        losses, noised_share = [], []
        for index in range(self.decoder_passes):
            if index > 0:
                draw = self._noise(x1)
            x_t, t = draw.x_t[:, 1:], draw.t[:, 1:]
            output = network.decode(x_t, perturb_context(context, self.context_noise), t, decoder_actions)
            v = output_to_velocity(output, x_t, t, self.prediction)
            losses.append(velocity_mse_loss(v, draw.target[:, 1:], draw.noised[:, 1:]))
            noised_share.append(draw.noised[:, 1:].float().mean())

        loss = torch.stack(losses).mean()
        terms = {"loss": loss.detach(), "noised_frames": torch.stack(noised_share).mean()}
        terms.update({f"loss_pass{index}": value.detach() for index, value in enumerate(losses)})
        return loss, terms
