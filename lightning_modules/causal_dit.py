"""Causal-DiT LightningModule: the frame-causal diffusion transformer baseline of SCD.

It shares the tokenizer, batches, training loop, EMA and metrics with `SCD`, so the
two compare like for like. Only the network (every layer frame-causal and run at every
denoising step), the loss and the rollout differ.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from torch import Tensor, nn

from unisep.lightning_modules.causal_dit_loss import CausalDiTLoss
from unisep.lightning_modules.ema import ExponentialMovingAverage
from unisep.lightning_modules.video_module import FrameCausalVideoModule
from unisep.lightning_modules.video_rollout import causal_dit_rollout
from unisep.networks.causal_dit import CausalDiT
from unisep.networks.frame_tokenizer import FrameTokenizer
from unisep.networks.scd_presets import causal_dit_preset


class CausalDiTModule(FrameCausalVideoModule):
    """Frame-causal DiT with per-frame noise levels on the tokens of a frozen tokenizer.

    Args:
        tokenizer: frame tokenizer, e.g. `unisep.networks.frame_tokenizer.PatchTokenizer`.
        preset: network size (see `unisep.networks.scd_presets.CAUSAL_DIT_PRESETS`).
        preset_overrides: fields of the preset to replace.
        num_actions: action classes of the data (0 for unconditional video).
        action_dropout: probability of the null action in training.
        clean_frame_prob: share of frames kept clean in training.
        timestep_mean, timestep_std, timestep_shift: per-frame logit-normal times.
        prediction: "velocity" (the reference code) or "x" (clean tokens, scored as
            velocities); see `frame_noise.Prediction`.
        gradient_checkpointing: recompute block activations in backward.
        lr, betas, weight_decay, warmup_steps, min_lr_ratio, total_steps: AdamW and schedule.
        ema_decay, ema_warmup: EMA settings.
        sample_steps, sample_solver, sample_shift: defaults of `generate()`.
        guidance_scale: default guidance; needs actions (the null action is the
            unconditional branch), so keep 1.0 for unconditional video.
    """

    def __init__(
        self,
        tokenizer: FrameTokenizer | dict[str, Any],
        preset: str = "causal_dit_m",
        preset_overrides: dict[str, Any] | None = None,
        num_actions: int = 0,
        action_dropout: float = 0.1,
        clean_frame_prob: float = 0.1,
        timestep_mean: float = 0.0,
        timestep_std: float = 1.0,
        timestep_shift: float = 1.0,
        prediction: Literal["velocity", "x"] = "velocity",
        gradient_checkpointing: bool = False,
        lr: float = 1e-4,
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
        guidance_scale: float = 1.0,
    ):
        super().__init__(tokenizer)
        self.save_hyperparameters(ignore=["tokenizer"])
        self.hparams["tokenizer"] = self.tokenizer.config()

        self.size = causal_dit_preset(preset, **(preset_overrides or {}))
        self.network = CausalDiT(
            token_channels=self.tokenizer.token_channels,
            grid=self.tokenizer.grid,
            width=self.size.width,
            depth=self.size.depth,
            heads=self.size.heads,
            mlp_ratio=self.size.mlp_ratio,
            num_actions=num_actions,
            action_dropout=action_dropout,
        )
        self.network.gradient_checkpointing = gradient_checkpointing
        self.ema = ExponentialMovingAverage(self.network, ema_decay, warmup=ema_warmup)
        self.loss = CausalDiTLoss(
            clean_frame_prob=clean_frame_prob,
            timestep_mean=timestep_mean,
            timestep_std=timestep_std,
            timestep_shift=timestep_shift,
            prediction=prediction,
        )

    def rollout(self, network: nn.Module, context: Tensor, num_frames: int, **options: Any) -> Iterator[Tensor]:
        return causal_dit_rollout(network, context, num_frames, prediction=self.hparams.prediction, **options)
