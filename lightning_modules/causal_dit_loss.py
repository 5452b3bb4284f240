"""The causal-DiT training objective: per-frame noising and one masked forward.

    x_t, t   per-frame noising of the clip, about 10% of frames clean (`noise_frames`)
    v        causal_dit(x_t, t)                  block-causal attention over all frames
    loss     mean over noised frames of |v - (x1 - noise)|^2

Unlike SCD, frame 0 is predicted too: it attends to nothing before it, so the model
also learns to start a video. Clean frames carry no loss.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from unisep.flow import velocity_mse_loss
from unisep.lightning_modules.frame_noise import Prediction, noise_frames, output_to_velocity
from unisep.networks.causal_dit import CausalDiT


class CausalDiTLoss(nn.Module):
    """Callable `loss(network, batch) -> (loss, terms)` for one causal-DiT step.

    Args:
        clean_frame_prob: share of frames kept clean.
        timestep_mean, timestep_std, timestep_shift: per-frame time distribution.
        prediction: a `Prediction` value, the meaning of the network's output.
    """

    def __init__(
        self,
        clean_frame_prob: float = 0.1,
        timestep_mean: float = 0.0,
        timestep_std: float = 1.0,
        timestep_shift: float = 1.0,
        prediction: str = "velocity",
    ):
        super().__init__()
        self.clean_frame_prob = clean_frame_prob
        self.timestep_mean = timestep_mean
        self.timestep_std = timestep_std
        self.timestep_shift = timestep_shift
        self.prediction = Prediction(prediction)

    def forward(self, network: CausalDiT, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss of a batch `{"tokens": (batch, F, N, C), "actions": (batch, F) or absent}`.

        Returns:
            The scalar loss and detached terms `loss` and `noised_frames`.
        """
        x1: Tensor = batch["tokens"]
        if x1.ndim != 4:
            raise ValueError(f"the causal DiT trains on tokens (batch, frames, N, C), got {tuple(x1.shape)}")
        draw = noise_frames(x1, self.clean_frame_prob, self.timestep_mean, self.timestep_std, self.timestep_shift)
        output = network(draw.x_t, draw.t, batch.get("actions"))
        v = output_to_velocity(output, draw.x_t, draw.t, self.prediction)
        loss = velocity_mse_loss(v, draw.target, draw.noised)
        return loss, {"loss": loss.detach(), "noised_frames": draw.noised.float().mean()}
