"""Training loop shared by the frame-causal video models (SCD and the causal-DiT baseline).

Both recipes read the same batches, freeze the same frame tokenizer, log the same
terms, keep an EMA copy, use AdamW with a warm-up schedule, and generate by streaming
rollouts. They differ in their network, loss object, parameter groups and rollout
function, which subclasses provide. Sharing this loop keeps the comparison like for like.

Batches are `{"frames": (batch, F, channels, H, W) float in [-1, 1]}`, plus
`"actions": (batch, F) int64` for action-conditioned data.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from lightning import LightningModule
from torch import Tensor, nn

from unisep.lightning_modules.ema import ExponentialMovingAverage
from unisep.lightning_modules.optim import adamw_kernel, warmup_cosine
from unisep.networks.frame_tokenizer import FrameTokenizer, tokenizer_from_config


class FrameCausalVideoModule(LightningModule):
    """Base LightningModule; subclasses set `network`, `loss` and implement the hooks below.

    Subclasses call `save_hyperparameters` in their own constructor. `configure_optimizers`
    and `generate` read these hyperparameters from it:

    - lr: base learning rate after warm-up.
    - betas, weight_decay: AdamW settings.
    - warmup_steps: linear learning-rate warm-up, in optimizer steps.
    - min_lr_ratio: final learning rate as a share of `lr`, reached by a cosine decay
      at `total_steps`. A ratio of 1.0 keeps the rate constant after warm-up.
    - total_steps: length of the decay; None uses the trainer's estimate.
    - sample_steps, sample_solver, sample_shift, guidance_scale: defaults of `generate`.

    Args:
        tokenizer: frozen frame tokenizer, or its `config()` dict (from a checkpoint).
    """

    def __init__(self, tokenizer: FrameTokenizer | dict[str, Any]):
        super().__init__()
        self.tokenizer = tokenizer_from_config(tokenizer)
        self.tokenizer.requires_grad_(False)
        self.use_ema_for_eval = True
        self.network: nn.Module
        self.ema: ExponentialMovingAverage
        self.loss: nn.Module

    # ------------------------------------------------------------------ subclass hooks

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Return AdamW parameter groups; each may set `lr_multiplier`."""
        return [{"params": [p for p in self.network.parameters() if p.requires_grad]}]

    def rollout(self, network: nn.Module, context: Tensor, num_frames: int, **options: Any) -> Iterator[Tensor]:
        """Stream (batch, N, C) tokens of new frames; see `video_rollout`."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers

    def sampling_network(self, use_ema: bool | None = None) -> nn.Module:
        """Return the EMA network (default) or the trained one."""
        use_ema = self.use_ema_for_eval if use_ema is None else use_ema
        return self.ema.module if use_ema else self.network

    def token_batch(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Tokenize `batch["frames"]`; keep `actions` when present."""
        frames = batch["frames"]
        tokens = self.tokenizer.encode(frames.to(self.device))
        out = {"tokens": tokens}
        if batch.get("actions") is not None:
            out["actions"] = batch["actions"].to(self.device)
        return out

    # ------------------------------------------------------------------ training

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        tokens = self.token_batch(batch)
        loss, terms = self.loss(self.network, tokens)
        batch_size = tokens["tokens"].shape[0]
        self.log_dict({f"train/{name}": value for name, value in terms.items()}, on_step=True, batch_size=batch_size)
        self.log("loss", terms["loss"], prog_bar=True, on_step=True, batch_size=batch_size, logger=False)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        tokens = self.token_batch(batch)
        # The same objective on held-out clips, with the EMA weights used for sampling.
        loss, _ = self.loss(self.sampling_network(), tokens)
        self.log("val/loss", loss, batch_size=tokens["tokens"].shape[0], sync_dist=True)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.ema.update(self.network)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = []
        for group in self.parameter_groups():
            group = dict(group)
            group["lr"] = hp.lr * group.pop("lr_multiplier", 1.0)
            groups.append(group)
        optimizer = torch.optim.AdamW(
            groups,
            lr=hp.lr,
            betas=tuple(hp.betas),
            weight_decay=hp.weight_decay,
            **adamw_kernel(p for group in groups for p in group["params"]),
        )
        total = hp.total_steps or int(self.trainer.estimated_stepping_batches)

        def multiplier(step: int) -> float:
            return warmup_cosine(step, hp.warmup_steps, total, hp.min_lr_ratio)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def generate(
        self,
        context: Tensor,
        num_frames: int,
        *,
        steps: int | None = None,
        guidance_scale: float | None = None,
        actions: Tensor | None = None,
        solver: str | None = None,
        generator: torch.Generator | None = None,
        use_ema: bool | None = None,
        decode: bool = True,
    ) -> Iterator[Tensor]:
        """Roll out `num_frames` frames after the context frames, yielding one at a time.

        Args:
            context: (batch, C, channels, H, W) given frames in [-1, 1], C >= 1.
            num_frames: frames to generate.
            steps: solver steps per frame (default: `sample_steps`).
            guidance_scale: default `guidance_scale`; 1 disables guidance.
            actions: (batch, C + num_frames) int64 action of every frame, or None.
            solver: "euler" or "heun" (default: `sample_solver`).
            generator: random generator of the sampling noise.
            use_ema: sample with the EMA weights (default) or the trained ones.
            decode: yield frames (batch, channels, H, W) decoded by the tokenizer, or
                the tokens (batch, N, C) when False.

        Yields:
            Each new frame, in order, as soon as it is sampled.
        """
        hp = self.hparams
        network = self.sampling_network(use_ema)
        was_training = network.training
        network.eval()
        tokens = self.tokenizer.encode(context.to(self.device))
        try:
            frames = self.rollout(
                network,
                tokens,
                num_frames,
                steps=steps or hp.sample_steps,
                guidance_scale=hp.guidance_scale if guidance_scale is None else guidance_scale,
                actions=None if actions is None else actions.to(self.device),
                solver=solver or hp.sample_solver,
                shift=hp.sample_shift,
                generator=generator,
            )
            for frame in frames:
                yield self.tokenizer.decode(frame[:, None])[:, 0] if decode else frame
        finally:
            network.train(was_training)
