"""End-of-fit summary of a run folder: samples, reconstructions and `metrics.json`.

At the end of `fit` this callback writes into the run folder (`trainer.log_dir`):

- `samples.npz`: `images` uint8 (N, H, W, C) and `labels` int64 (N,), `per_class`
  samples of every class, generated with the EMA weights;
- `samples.png`: the first `grid_per_class` samples of each class, one row per class;
- `reconstructions.png`: validation images (odd rows) above their reconstructions;
- `metrics.json`: `recon_psnr` over the validation stream, the last logged training
  loss terms, the sampling protocol, and `sample_accuracy` when `digits_check` is on.

It then prints the run folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from rich.progress import track

from unisep.callbacks.image_grid import make_grid, save_png, to_uint8
from unisep.callbacks.metrics_file import update_metrics_json
from unisep.callbacks.sample_grid import log_image


def _psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    mse = (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


class RunSummary(Callback):
    """Write samples, reconstructions and metrics at the end of fit.

    Args:
        per_class: samples generated per class for `samples.npz`.
        grid_per_class: samples per row in `samples.png`.
        max_classes: cap on the classes sampled (ImageNet has 1000).
        batch_size: generation batch size.
        solver, steps, guidance_scale: sampling settings (None = module defaults).
        recon_batches: validation batches used for `recon_psnr` (None = all).
        digits_check: also score the samples with a classifier trained on the real
            scikit-learn digits (`sample_accuracy`); only meaningful for the digits demo.
        upscale: nearest-neighbour enlargement of the PNG files.
        seed: noise seed of the samples.
    """

    def __init__(
        self,
        per_class: int = 50,
        grid_per_class: int = 10,
        max_classes: int = 10,
        batch_size: int = 250,
        solver: str | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        recon_batches: int | None = None,
        digits_check: bool = False,
        upscale: int = 1,
        seed: int = 0,
    ):
        self.per_class = per_class
        self.grid_per_class = min(grid_per_class, per_class)
        self.max_classes = max_classes
        self.batch_size = batch_size
        self.solver = solver
        self.steps = steps
        self.guidance_scale = guidance_scale
        self.recon_batches = recon_batches
        self.digits_check = digits_check
        self.upscale = upscale
        self.seed = seed

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # `trainer.log_dir` is broadcast from rank 0, so every rank must read it; only
        # rank 0 then generates and writes.
        run_dir = Path(trainer.log_dir or ".")
        self._summarize(trainer, pl_module, run_dir)

    @rank_zero_only
    def _summarize(self, trainer: Trainer, pl_module: LightningModule, run_dir: Path) -> None:
        metrics: dict[str, Any] = {"global_step": trainer.global_step, "epoch": trainer.current_epoch}
        metrics.update(self._final_losses(trainer))
        metrics.update(self._reconstructions(trainer, pl_module, run_dir))
        metrics.update(self._samples(trainer, pl_module, run_dir))
        update_metrics_json(run_dir, metrics)
        print(f"\nRun folder: {run_dir.resolve()}")
        print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2, default=str))

    @staticmethod
    def _final_losses(trainer: Trainer) -> dict[str, float]:
        return {
            name: float(value)
            for name, value in trainer.callback_metrics.items()
            if name.startswith("train/") and value.numel() == 1
        }

    def _reconstructions(self, trainer: Trainer, pl_module: LightningModule, run_dir: Path) -> dict[str, Any]:
        loader = trainer.datamodule.val_dataloader() if trainer.datamodule is not None else None
        if loader is None:
            return {}
        values, shown = [], None
        for index, batch in enumerate(loader):
            if self.recon_batches is not None and index >= self.recon_batches:
                break
            images = batch["image"].to(pl_module.device)
            reconstruction = pl_module.reconstruct(images)
            values.append(_psnr(reconstruction, images).cpu())
            if shown is None:
                shown = (images[:16], reconstruction[:16])
        if not values:
            return {}
        originals, reconstructed = shown
        rows = []
        for start in range(0, len(originals), 8):
            rows += [originals[start : start + 8], reconstructed[start : start + 8]]
        grid = make_grid(to_uint8(torch.cat(rows)), rows=len(rows))
        save_png(grid, run_dir / "reconstructions.png", self.upscale)
        log_image(trainer, "reconstructions", grid, trainer.global_step)
        psnr = torch.cat(values)
        return {"recon_psnr": float(psnr.mean()), "recon_psnr_samples": int(psnr.numel())}

    def _samples(self, trainer: Trainer, pl_module: LightningModule, run_dir: Path) -> dict[str, Any]:
        classes = min(pl_module.num_classes, self.max_classes)
        labels = torch.arange(classes).repeat_interleave(self.per_class)
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        chunks = []
        for start in track(range(0, len(labels), self.batch_size), description="Generating samples"):
            batch_labels = labels[start : start + self.batch_size]
            images = pl_module.generate(
                batch_labels, solver=self.solver, steps=self.steps, guidance_scale=self.guidance_scale, generator=generator
            )
            chunks.append(to_uint8(images))
        images = np.concatenate(chunks)
        np.savez_compressed(run_dir / "samples.npz", images=images, labels=labels.numpy())

        grid_images = images.reshape(classes, self.per_class, *images.shape[1:])[:, : self.grid_per_class]
        grid = make_grid(grid_images.reshape(-1, *images.shape[1:]), rows=classes)
        save_png(grid, run_dir / "samples.png", self.upscale)
        log_image(trainer, "samples_final", grid, trainer.global_step)

        hp = pl_module.hparams
        protocol = {
            "num_samples": int(len(labels)),
            "solver": self.solver or hp.get("sample_solver"),
            "steps": self.steps or hp.get("sample_steps"),
            "guidance_scale": hp.get("guidance_scale") if self.guidance_scale is None else self.guidance_scale,
            "ema": bool(getattr(pl_module, "use_ema_for_eval", True)),
        }
        result: dict[str, Any] = {"sample_protocol": protocol}
        if self.digits_check:
            from unisep.metrics.digits_classifier import digits_classifier_accuracy

            result["sample_accuracy"] = digits_classifier_accuracy(images, labels.numpy())
        return result
