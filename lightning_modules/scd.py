"""SCD LightningModule: separable causal video diffusion.

A causal encoder runs once per frame and a small frame decoder runs the denoising
steps of each frame (see `unisep.networks.scd`). Training follows `scd_loss.SCDLoss`;
the decoder learns at a multiple of the encoder's learning rate (x2 in the reference
recipe). `generate()` streams frames with a KV-cached encoder.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from torch import Tensor, nn

from unisep.lightning_modules.ema import ExponentialMovingAverage
from unisep.lightning_modules.scd_loss import SCDLoss
from unisep.lightning_modules.video_module import FrameCausalVideoModule
from unisep.lightning_modules.video_rollout import scd_rollout
from unisep.networks.frame_tokenizer import FrameTokenizer
from unisep.networks.scd import SCDNetwork
from unisep.networks.scd_presets import scd_preset


class SCD(FrameCausalVideoModule):
    """Separable Causal Diffusion on the tokens of a frozen frame tokenizer.

    Args:
        tokenizer: frame tokenizer, e.g. `unisep.networks.frame_tokenizer.PatchTokenizer`.
        preset: network size (see `unisep.networks.scd_presets.SCD_PRESETS`).
        preset_overrides: fields of the preset to replace, e.g. `{"decoder_depth": 2}`.
        num_actions: action classes of the data (0 for unconditional video).
        action_dropout: probability of the null action in training (for guidance).
        encoder_input: "noised" (the SCD authors' code, github.com/xingjian-bai/
            sparse-causal-diffusion) or "clean" (teacher forcing, as the SCD paper's
            text describes); see `scd_loss.EncoderInput`.
        decoder_passes: decoder passes with fresh noise per encoder pass.
        clean_frame_prob: share of frames kept clean in training.
        context_noise: std of the noise added to the context tokens in training.
        timestep_mean, timestep_std, timestep_shift: per-frame logit-normal times.
        prediction: "velocity" (the reference code) or "x" (clean tokens, scored as
            velocities); see `frame_noise.Prediction`.
        gradient_checkpointing: recompute block activations in backward.
        lr: encoder learning rate after warm-up.
        decoder_lr_multiplier: decoder learning rate as a multiple of `lr`.
        betas, weight_decay, warmup_steps, min_lr_ratio, total_steps: AdamW and schedule.
        ema_decay, ema_warmup: EMA settings.
        sample_steps, sample_solver, sample_shift: defaults of `generate()`.
        guidance_scale: default guidance; the unconditional branch perturbs the context.
        guidance_context_noise: std of that perturbation.
    """

    def __init__(
        self,
        tokenizer: FrameTokenizer | dict[str, Any],
        preset: str = "scd_m",
        preset_overrides: dict[str, Any] | None = None,
        num_actions: int = 0,
        action_dropout: float = 0.1,
        encoder_input: Literal["noised", "clean"] = "noised",
        decoder_passes: int = 2,
        clean_frame_prob: float = 0.1,
        context_noise: float = 0.05,
        timestep_mean: float = 0.0,
        timestep_std: float = 1.0,
        timestep_shift: float = 1.0,
        prediction: Literal["velocity", "x"] = "velocity",
        gradient_checkpointing: bool = False,
        lr: float = 1e-4,
        decoder_lr_multiplier: float = 2.0,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        warmup_steps: int = 10_000,
        min_lr_ratio: float = 1.0,
        total_steps: int | None = None,
        ema_decay: float = 0.9999,
        ema_warmup: bool = False,
        sample_steps: int = 50,
        sample_solver: Literal["euler", "heun"] = "euler",
        sample_shift: float = 1.0,
        guidance_scale: float = 1.5,
        guidance_context_noise: float = 0.05,
    ):
        super().__init__(tokenizer)
        self.save_hyperparameters(ignore=["tokenizer"])
        # Stored as {class_path, init_args} so that load_from_checkpoint can rebuild it.
        self.hparams["tokenizer"] = self.tokenizer.config()

        self.size = scd_preset(preset, **(preset_overrides or {}))
        self.network = SCDNetwork(
            self.size,
            token_channels=self.tokenizer.token_channels,
            grid=self.tokenizer.grid,
            num_actions=num_actions,
            action_dropout=action_dropout,
        )
        self.network.set_gradient_checkpointing(gradient_checkpointing)
        self.ema = ExponentialMovingAverage(self.network, ema_decay, warmup=ema_warmup)
        self.loss = SCDLoss(
            decoder_passes=decoder_passes,
            clean_frame_prob=clean_frame_prob,
            context_noise=context_noise,
            encoder_input=encoder_input,
            timestep_mean=timestep_mean,
            timestep_std=timestep_std,
            timestep_shift=timestep_shift,
            prediction=prediction,
        )

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [
            {"params": list(self.network.encoder.parameters()), "name": "encoder"},
            {
                "params": list(self.network.decoder.parameters()),
                "name": "decoder",
                "lr_multiplier": self.hparams.decoder_lr_multiplier,
            },
        ]

    def rollout(self, network: nn.Module, context: Tensor, num_frames: int, **options: Any) -> Iterator[Tensor]:
        return scd_rollout(
            network,
            context,
            num_frames,
            guidance_context_noise=self.hparams.guidance_context_noise,
            prediction=self.hparams.prediction,
            **options,
        )
