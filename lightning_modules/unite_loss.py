"""The UNITE training objective: reconstruction pass plus N denoising passes.

    z0    = GE.tokenize(x)                      (shared LayerNorm applied)
    recon = R(decode(augment(z0)), x)           R: modality reconstruction loss
    z     = stopgrad(z0), repeated N times
    x_t   = t z + (1 - t) eps,  t ~ shift(logit-normal(mean, std))
    flow  = sum over the N copies of mean_batch |v(GE.generate(x_t)) - v(z)|^2
    loss  = recon + w_flow(step) * flow

The flow term sums the N copies (each copy's batch mean), which is what the authors'
code does: the effective flow weight grows with N. `w_flow` can ramp up from zero over
the first steps, which keeps tiny models from collapsing their latent (a constant latent
makes the flow loss trivially zero).
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn

from unisep.flow import interpolate, sample_training_timesteps, x_prediction_velocity_loss
from unisep.networks.unite import UniteNetwork


class LatentNoise(str, Enum):
    """Latent noise augmentation before decoding, in training only."""

    #: with probability 0.5, z0 -> t z0 + (1 - t) eps with t ~ U[t_min, 1] (authors' code)
    CODE = "code"
    #: z0 -> z0 + std * eps (paper text)
    PAPER = "paper"
    NONE = "none"


class UniteLoss(nn.Module):
    """Callable `loss(network, batch, step) -> (loss, terms)` for one UNITE step.

    Args:
        reconstruction_loss: callable `(prediction, batch) -> (loss, terms)`.
        labels_fn: maps a batch to its class labels (batch,).
        denoising_passes: N, noised copies of each latent per reconstruction pass.
        chunk_size: copies processed per GE call; None runs all N in one batched call,
            smaller values cap activation memory.
        stop_gradient: detach z0 before the denoising passes (the method's default).
        latent_noise: `LatentNoise` mode; `latent_noise_prob`, `latent_noise_t_min` and
            `latent_noise_std` parametrise it.
        flow_weight: w_flow after warm-up.
        flow_weight_warmup_steps: w_flow is 0 for the first half of these steps, then
            rises linearly to `flow_weight`.
        timestep_mean, timestep_std, timestep_shift: training timestep distribution.
        min_one_minus_t: clamp of 1 - t in the velocity conversion.
    """

    def __init__(
        self,
        reconstruction_loss: nn.Module,
        labels_fn,
        denoising_passes: int = 3,
        chunk_size: int | None = None,
        stop_gradient: bool = True,
        latent_noise: str = "code",
        latent_noise_prob: float = 0.5,
        latent_noise_t_min: float = 0.7,
        latent_noise_std: float = 0.7,
        flow_weight: float = 1.0,
        flow_weight_warmup_steps: int = 0,
        timestep_mean: float = 0.0,
        timestep_std: float = 1.0,
        timestep_shift: float = 0.5,
        min_one_minus_t: float = 0.05,
    ):
        super().__init__()
        if denoising_passes < 1:
            raise ValueError(f"denoising_passes must be >= 1, got {denoising_passes}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        self.reconstruction_loss = reconstruction_loss
        self.labels_fn = labels_fn
        self.denoising_passes = denoising_passes
        self.chunk_size = chunk_size or denoising_passes
        self.stop_gradient = stop_gradient
        self.latent_noise = LatentNoise(latent_noise)
        self.latent_noise_prob = latent_noise_prob
        self.latent_noise_t_min = latent_noise_t_min
        self.latent_noise_std = latent_noise_std
        self.flow_weight = flow_weight
        self.flow_weight_warmup_steps = flow_weight_warmup_steps
        self.timestep_mean = timestep_mean
        self.timestep_std = timestep_std
        self.timestep_shift = timestep_shift
        self.min_one_minus_t = min_one_minus_t

    def flow_weight_at(self, step: int) -> float:
        """w_flow at optimizer step `step`: 0, then a linear ramp, then `flow_weight`."""
        warmup = self.flow_weight_warmup_steps
        if warmup <= 0:
            return self.flow_weight
        hold = warmup // 2
        if step < hold:
            return 0.0
        return self.flow_weight * min(1.0, (step - hold + 1) / max(1, warmup - hold))

    def augment(self, z0: Tensor) -> Tensor:
        """Apply latent noise augmentation to z0 (batch, K, C)."""
        if self.latent_noise is LatentNoise.NONE:
            return z0
        noise = torch.randn_like(z0)
        if self.latent_noise is LatentNoise.PAPER:
            return z0 + self.latent_noise_std * noise
        batch = z0.shape[0]
        t = torch.empty(batch, device=z0.device).uniform_(self.latent_noise_t_min, 1.0)
        noised = interpolate(z0, noise, t)
        chosen = torch.rand(batch, device=z0.device) < self.latent_noise_prob
        return torch.where(chosen[:, None, None], noised, z0)

    def flow_loss(self, network: UniteNetwork, z: Tensor, labels: Tensor) -> Tensor:
        """Sum over N noised copies of the batch-mean x-prediction velocity loss."""
        batch = z.shape[0]
        total = z.new_zeros(())
        remaining = self.denoising_passes
        while remaining > 0:
            copies = min(self.chunk_size, remaining)
            remaining -= copies
            z_chunk = z.repeat(copies, 1, 1)
            labels_chunk = labels.repeat(copies)
            t = sample_training_timesteps(
                z_chunk.shape[0],
                mean=self.timestep_mean,
                std=self.timestep_std,
                shift=self.timestep_shift,
                device=z.device,
            )
            x_t = interpolate(z_chunk, torch.randn_like(z_chunk), t)
            x_pred = network.denoise(x_t, t, labels_chunk)
            per_sample = x_prediction_velocity_loss(x_pred, z_chunk, x_t, t, self.min_one_minus_t)
            # (copies * batch,) -> sum of the per-copy batch means
            total = total + per_sample.sum() / batch
        return total

    def forward(self, network: UniteNetwork, batch: dict[str, Any], step: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        z0 = network.tokenize(batch)
        prediction = network.decode(self.augment(z0) if network.training else z0)
        recon, recon_terms = self.reconstruction_loss(prediction, batch)

        z = z0.detach() if self.stop_gradient else z0
        flow = self.flow_loss(network, z, self.labels_fn(batch))
        weight = self.flow_weight_at(step)
        loss = recon + weight * flow

        terms = {f"recon/{name}": value.detach() for name, value in recon_terms.items()}
        terms.update(
            {
                "recon/total": recon.detach(),
                "flow": flow.detach(),
                # Filled on the loss's device: a host tensor would be copied to the GPU
                # when logged, and that copy waits for the device.
                "flow_weight": flow.detach().new_full((), weight),
                # Std of each latent coordinate across the batch, averaged: near zero
                # means every input maps to the same latent (latent collapse).
                "latent/batch_std": z0.detach().float().std(dim=0).mean(),
                "loss": loss.detach(),
            }
        )
        return loss, terms
