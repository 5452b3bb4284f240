"""UNITE LightningModule: one Generative Encoder trained as tokenizer and generator.

Images and molecules share this module; the modality (front end, decoder and
reconstruction loss) is a constructor argument. Each training step runs the GE twice
with shared weights (see `unite_loss.UniteLoss`), takes one optimizer step and updates
the EMA copy, which `generate()`, `reconstruct()` and the evaluation callbacks use.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from unisep.flow import apply_guidance, solve, x_to_velocity
from unisep.lightning_modules.ema import ExponentialMovingAverage
from unisep.lightning_modules.optim import build_optimizer, warmup_cosine
from unisep.lightning_modules.reconstruction_losses import default_reconstruction_loss
from unisep.lightning_modules.unite_loss import UniteLoss
from unisep.networks.modality import Modality, modality_from_config
from unisep.networks.presets import unite_preset
from unisep.networks.unite import UniteNetwork


# The EMA copy is kept in eval mode on purpose (it is only ever evaluated), which
# Lightning reports at every fit start.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=UserWarning)


class UNITE(LightningModule):
    """End-to-end tokenizer + latent diffusion generator with one shared network.

    Args:
        modality: data modality, e.g. `unisep.networks.ImageModality`.
        preset: network size name (see `unisep.networks.presets.UNITE_PRESETS`).
        preset_overrides: fields of the preset to replace, e.g. `{"depth": 6}`.
        num_classes: class labels of the data (1 for unconditional data).
        label_dropout: probability of the null class in training (for guidance).
        separate_denoiser: ablation: the generate mode gets its own GE weights.
        stop_gradient: detach the latent before the denoising passes.
        denoising_passes: N, denoising passes per reconstruction pass.
        denoising_chunk_size: copies per GE call in the denoising passes; None = all N
            in one batched call (fastest while memory allows).
        gradient_checkpointing: recompute GE activations in backward.
        latent_noise: "code" (authors' code), "paper" or "none"; see `LatentNoise`.
        flow_weight: weight of the flow loss.
        flow_weight_warmup_steps: steps over which the flow weight ramps up from 0.
        timestep_shift: shift `a` of `t' = a t / (1 + (a - 1) t)`, used in training and
            for the sampling grid.
        lpips_weight, lpips_vgg_path, lpips_head_path: image LPIPS term; see
            `unisep.metrics.lpips`.
        optimizer: "adamw" or "muon" (Muon for block matrices + AdamW for the rest).
        lr, min_lr: peak and final learning rate of the warm-up + cosine schedule.
        betas, weight_decay: AdamW settings.
        warmup_steps: linear learning-rate warm-up, in optimizer steps.
        total_steps: length of the cosine schedule; None = the trainer's estimate.
        ema_decay, ema_warmup: EMA settings.
        sample_solver, sample_steps, guidance_scale, guidance_interval: defaults of
            `generate()`.
        latent_collapse_threshold: warn when the latent's batch std falls below it.
        compile: wrap the GE in `torch.compile` (falls back to eager on failure).
    """

    def __init__(
        self,
        modality: Modality,
        preset: str = "unite_base",
        preset_overrides: dict[str, Any] | None = None,
        num_classes: int = 1000,
        label_dropout: float = 0.1,
        separate_denoiser: bool = False,
        stop_gradient: bool = True,
        denoising_passes: int = 3,
        denoising_chunk_size: int | None = None,
        gradient_checkpointing: bool = False,
        latent_noise: Literal["code", "paper", "none"] = "code",
        flow_weight: float = 1.0,
        flow_weight_warmup_steps: int = 0,
        timestep_shift: float = 0.5,
        lpips_weight: float = 0.0,
        lpips_vgg_path: str | None = None,
        lpips_head_path: str | None = None,
        optimizer: Literal["adamw", "muon"] = "adamw",
        lr: float = 1e-4,
        min_lr: float = 1e-6,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        total_steps: int | None = None,
        ema_decay: float = 0.9978,
        ema_warmup: bool = False,
        sample_solver: Literal["euler", "heun", "dopri5"] = "heun",
        sample_steps: int = 50,
        guidance_scale: float = 1.0,
        guidance_interval: tuple[float, float] = (0.1, 1.0),
        latent_collapse_threshold: float = 0.05,
        compile: bool = False,
    ):
        super().__init__()
        modality = modality_from_config(modality)
        self.save_hyperparameters(ignore=["modality"])
        # Stored as {class_path, init_args} so load_from_checkpoint can rebuild it.
        self.hparams["modality"] = modality.config()
        self.modality = modality
        self.num_classes = num_classes
        self.use_ema_for_eval = True

        size = unite_preset(preset, **(preset_overrides or {}))
        self.size = size
        self.network = UniteNetwork(size, modality, num_classes, label_dropout, separate_denoiser)
        self.network.set_gradient_checkpointing(gradient_checkpointing)
        self.ema = ExponentialMovingAverage(self.network, ema_decay, warmup=ema_warmup)
        self.loss = UniteLoss(
            reconstruction_loss=default_reconstruction_loss(modality, lpips_weight, lpips_vgg_path, lpips_head_path),
            labels_fn=modality.labels,
            denoising_passes=denoising_passes,
            chunk_size=denoising_chunk_size,
            stop_gradient=stop_gradient,
            latent_noise=latent_noise,
            flow_weight=flow_weight,
            flow_weight_warmup_steps=flow_weight_warmup_steps,
            timestep_shift=timestep_shift,
        )
        if compile:
            self._compile_encoders()

    # ------------------------------------------------------------------ properties

    @property
    def tokens_per_sample(self) -> int:
        """Data tokens per sample plus K latent tokens, for throughput logs."""
        return self.modality.tokens_per_sample() + self.size.latent_tokens

    @property
    def flops_per_sample(self) -> float:
        """Estimated training FLOPs per sample, for MFU.

        Counts 6 FLOPs (forward and backward) per block weight per token, over the
        tokenize pass (data + K tokens), the N denoising passes (K tokens each) and the
        decoder (one token per patch). Attention scores and the per-sample adaLN maps
        are left out, so the figure is a lower bound.
        """
        def block_weights(module) -> int:
            return sum(
                p.numel()
                for name, p in module.named_parameters()
                if p.ndim == 2 and ".blocks." in f".{name}" and "modulation" not in name
            )

        ge = block_weights(self.network.encoder)
        tokens = self.modality.tokens_per_sample() + self.size.latent_tokens
        denoise = self.loss.denoising_passes * self.size.latent_tokens
        decoder = block_weights(self.network.decoder) * max(self.modality.tokens_per_sample(), self.size.latent_tokens)
        return 6.0 * (ge * (tokens + denoise) + decoder)

    def sampling_network(self, use_ema: bool | None = None) -> UniteNetwork:
        """Return the EMA network (the default) or the trained one."""
        use_ema = self.use_ema_for_eval if use_ema is None else use_ema
        return self.ema.module if use_ema else self.network

    def _compile_encoders(self) -> None:
        import torch._dynamo

        # A graph that fails to compile runs eagerly instead of stopping training.
        torch._dynamo.config.suppress_errors = True
        for encoder in (self.network.encoder, self.network.denoiser):
            if encoder is not None:
                encoder.compile()

    # ------------------------------------------------------------------ training

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, terms = self.loss(self.network, batch, step=self.global_step)
        batch_size = self.modality.batch_size(batch)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, on_step=True, batch_size=batch_size)
        self.log("loss", terms["loss"], prog_bar=True, on_step=True, batch_size=batch_size, logger=False)
        self._check_latent_collapse(terms["latent/batch_std"])
        return loss

    def _check_latent_collapse(self, latent_std: Tensor) -> None:
        # Read the value (a host sync) only at logging steps, after the flow weight
        # warm-up has started, never on every step.
        trainer = self._trainer
        if trainer is None or self.global_step % max(1, trainer.log_every_n_steps) != 0:
            return
        # The zero-initialised output layer makes every latent equal at step 0, so
        # judge only after the flow weight warm-up, and no earlier than step 200.
        if self.global_step < max(self.loss.flow_weight_warmup_steps, 200):
            return
        value = float(latent_std)
        if value < self.hparams.latent_collapse_threshold:
            rank_zero_warn(
                f"latent collapse suspected at step {self.global_step}: the latent's std across the batch "
                f"is {value:.4f} (< {self.hparams.latent_collapse_threshold}). Every input maps to nearly the "
                "same latent. Try flow_weight_warmup_steps > 0, a longer lr warm-up, or check the register "
                "position initialisation."
            )

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        self.ema.update(self.network)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = build_optimizer(
            self.network.named_parameters(), hp.optimizer, lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay
        )
        total = hp.total_steps or int(self.trainer.estimated_stepping_batches)
        min_ratio = hp.min_lr / hp.lr

        def multiplier(step: int) -> float:
            return warmup_cosine(step, hp.warmup_steps, total, min_ratio)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ validation

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        network = self.sampling_network()
        prediction = network.decode(network.tokenize(batch))
        loss, terms = self.loss.reconstruction_loss(prediction, batch)
        batch_size = self.modality.batch_size(batch)
        self.log("val/recon_loss", loss, batch_size=batch_size, sync_dist=True)
        if "image" in batch:
            self.log("val/recon_psnr", psnr(prediction.clamp(-1, 1), batch["image"]).mean(), batch_size=batch_size, sync_dist=True)

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def encode(self, batch: dict[str, Any], use_ema: bool | None = None) -> Tensor:
        """Tokenize a batch into normalised latents (batch, K, C)."""
        return self.sampling_network(use_ema).tokenize(batch)

    @torch.no_grad()
    def decode(self, latents: Tensor, use_ema: bool | None = None) -> Any:
        """Decode latents (batch, K, C) to data in the modality's convention."""
        return self.modality.postprocess(self.sampling_network(use_ema).decode(latents))

    @torch.no_grad()
    def reconstruct(self, images_or_batch: Tensor | dict[str, Any], use_ema: bool | None = None) -> Any:
        """Encode and decode; images (batch, C, H, W) in [-1, 1] or a batch dict."""
        batch = images_or_batch if isinstance(images_or_batch, dict) else {"image": images_or_batch}
        return self.decode(self.encode(batch, use_ema), use_ema)

    @torch.no_grad()
    def generate(
        self,
        labels: Tensor,
        *,
        solver: str | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
        generator: torch.Generator | None = None,
        use_ema: bool | None = None,
        return_latents: bool = False,
    ) -> Any:
        """Sample data for `labels` (batch,) by solving the probability-flow ODE.

        Guidance mixes the conditional and null-class x-predictions (after the shared
        LayerNorm) inside `guidance_interval`; a scale of 1 runs no null branch.

        Returns:
            Data in the modality's convention (images (batch, C, H, W) in [-1, 1]), and
            the final latents (batch, K, C) when `return_latents`.
        """
        hp = self.hparams
        solver = solver or hp.sample_solver
        steps = steps or hp.sample_steps
        scale = hp.guidance_scale if guidance_scale is None else guidance_scale
        interval = tuple(guidance_interval or hp.guidance_interval)
        network = self.sampling_network(use_ema)
        was_training = network.training
        network.eval()

        labels = labels.to(self.device)
        shape = (labels.shape[0], self.size.latent_tokens, self.size.latent_channels)
        noise = torch.randn(shape, generator=generator, device=generator.device if generator else self.device)
        noise = noise.to(self.device)
        null_labels = torch.full_like(labels, self.num_classes)

        def velocity(x: Tensor, t: Tensor) -> Tensor:
            if scale == 1.0:
                x_pred = network.denoise(x, t, labels)
            else:
                both = network.denoise(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null_labels]))
                cond, uncond = both.chunk(2)
                x_pred = apply_guidance(cond, uncond, scale, t, interval)
            return x_to_velocity(x_pred, x, t)

        options = {} if solver == "dopri5" else {"shift": hp.timestep_shift}
        latents = solve(velocity, noise, solver, steps=steps, **options)
        output = self.modality.postprocess(network.decode(latents))
        network.train(was_training)
        return (output, latents) if return_latents else output


def psnr(prediction: Tensor, target: Tensor, data_range: float = 2.0) -> Tensor:
    """Per-sample PSNR in dB of (batch, ...) tensors; images in [-1, 1] have range 2."""
    mse = F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(1).mean(dim=1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12))
