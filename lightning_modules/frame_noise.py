"""Per-frame noising of video tokens for frame-causal flow matching (Diffusion Forcing style).

Every frame of a clip gets its own flow time, drawn from a logit-normal distribution,
and a share of frames is kept clean (t = 1). Clean frames teach the model to condition
on clean context, as it does at inference. They carry no flow loss because their
input does not determine the noise in their velocity target.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor

from unisep.flow import DEFAULT_MIN_ONE_MINUS_T, interpolate, sample_training_timesteps, velocity_target, x_to_velocity


class Prediction(str, Enum):
    """Meaning of a video network's output."""

    #: the flow velocity `x1 - noise` (the SCD reference code)
    VELOCITY = "velocity"
    #: the clean tokens x1, turned into a velocity with `unisep.flow.x_to_velocity`
    #: (1 - t clamped at 0.05). Predicting data suits pixel-patch tokens whose
    #: dimension is close to or above the network width (Li and He 2025, "Back to
    #: Basics: Let Denoising Generative Models Denoise").
    X = "x"


def output_to_velocity(output: Tensor, x_t: Tensor, t: Tensor, prediction: Prediction | str) -> Tensor:
    """Convert a network output to a velocity.

    Args:
        output: (batch, ..., N, C) velocity or clean-token prediction.
        x_t: noisy tokens of the same shape.
        t: flow times of shape `output.shape[:-2]`, one per frame.
        prediction: what `output` is.

    Returns:
        The velocity, shaped like `output`.
    """
    if Prediction(prediction) is Prediction.VELOCITY:
        return output
    frames = output.flatten(0, -3)
    velocity = x_to_velocity(frames, x_t.flatten(0, -3), t.flatten(), DEFAULT_MIN_ONE_MINUS_T)
    return velocity.view_as(output)


@dataclass(frozen=True)
class NoisedFrames:
    """One noising draw of a clip.

    Attributes:
        x_t: (batch, frames, N, C) noisy tokens; clean frames equal the data.
        t: (batch, frames) flow time of each frame; 1 for clean frames.
        target: (batch, frames, N, C) velocity target `x1 - noise`.
        noised: (batch, frames) bool, True where the frame was noised (loss mask).
    """

    x_t: Tensor
    t: Tensor
    target: Tensor
    noised: Tensor


def noise_frames(
    x1: Tensor,
    clean_frame_prob: float = 0.1,
    timestep_mean: float = 0.0,
    timestep_std: float = 1.0,
    timestep_shift: float = 1.0,
) -> NoisedFrames:
    """Noise each frame of `x1` (batch, frames, N, C) at its own logit-normal time.

    Args:
        x1: clean tokens.
        clean_frame_prob: probability that a frame is kept clean (t = 1).
        timestep_mean, timestep_std, timestep_shift: the logit-normal distribution
            and the shift of `unisep.flow.sample_training_timesteps`.
    """
    if not 0.0 <= clean_frame_prob < 1.0:
        raise ValueError(f"clean_frame_prob must be in [0, 1), got {clean_frame_prob}")
    batch, frames = x1.shape[:2]
    t = sample_training_timesteps(
        batch * frames, mean=timestep_mean, std=timestep_std, shift=timestep_shift, device=x1.device
    ).view(batch, frames)
    noised = torch.rand(batch, frames, device=x1.device) >= clean_frame_prob
    t = torch.where(noised, t, torch.ones_like(t))

    noise = torch.randn_like(x1)
    x_t = interpolate(x1.flatten(0, 1), noise.flatten(0, 1), t.flatten()).view_as(x1)
    return NoisedFrames(x_t=x_t, t=t, target=velocity_target(x1, noise), noised=noised)
