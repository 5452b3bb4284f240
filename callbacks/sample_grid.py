"""Class-conditional sample grids during training: one row per class, EMA weights."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer

from unisep.callbacks.image_grid import make_grid, save_png, to_uint8


def log_image(trainer: Trainer, tag: str, grid, step: int) -> None:
    """Send a uint8 (H, W, C) grid to every logger that accepts images."""
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_image"):  # TensorBoard
            experiment.add_image(tag, grid, step, dataformats="HWC")
        elif hasattr(logger, "log_image"):  # Weights & Biases and others
            logger.log_image(key=tag, images=[grid], step=step)


class SampleGrid(Callback):
    """Save and log a grid of generated images every `every_n_epochs` and at fit end (`samples/final.png`).

    Args:
        classes: class labels to show, one row each; None = the first `max_rows` classes.
        per_class: samples per row.
        every_n_epochs: 0 = only at the end of fit.
        solver, steps, guidance_scale: sampling settings (None = the module's defaults).
        seed: fixed noise seed, so successive grids show the same noise.
        upscale: nearest-neighbour enlargement of the saved PNG (small images).
    """

    def __init__(
        self,
        classes: list[int] | None = None,
        max_rows: int = 10,
        per_class: int = 8,
        every_n_epochs: int = 1,
        solver: str | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int = 0,
        upscale: int = 1,
    ):
        self.classes = classes
        self.max_rows = max_rows
        self.per_class = per_class
        self.every_n_epochs = every_n_epochs
        self.solver = solver
        self.steps = steps
        self.guidance_scale = guidance_scale
        self.seed = seed
        self.upscale = upscale

    def _labels(self, pl_module: LightningModule) -> torch.Tensor:
        classes = self.classes if self.classes is not None else list(range(min(self.max_rows, pl_module.num_classes)))
        return torch.tensor(classes).repeat_interleave(self.per_class)

    def render(self, trainer: Trainer, pl_module: LightningModule, name: str) -> Path | None:
        """Generate the grid on rank 0, write `<log_dir>/samples/<name>.png` and log it."""
        # Read on every rank: `trainer.log_dir` is a broadcast from rank 0.
        run_dir = Path(trainer.log_dir or ".")
        if trainer.global_rank != 0:
            return None
        labels = self._labels(pl_module)
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        images = pl_module.generate(
            labels, solver=self.solver, steps=self.steps, guidance_scale=self.guidance_scale, generator=generator
        )
        grid = make_grid(to_uint8(images), rows=len(labels) // self.per_class)
        path = save_png(grid, run_dir / "samples" / f"{name}.png", self.upscale)
        log_image(trainer, "samples", grid, trainer.global_step)
        return path

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.render(trainer, pl_module, f"epoch_{trainer.current_epoch:04d}")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.render(trainer, pl_module, "final")
