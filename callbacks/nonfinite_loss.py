"""Stop training at a NaN or infinite loss before a checkpoint of the damaged weights is written.

Reading the loss on the host every step would stall the GPU queue. Instead, every step
updates two device tensors, the first step whose loss was not finite and that loss,
with no host synchronisation. The host reads them only:

- at logging steps (every `log_every_n_steps` optimizer steps), where Lightning already
  copies the logged values to the host;
- before every checkpoint is written (`on_save_checkpoint`, which runs before the file
  is opened), so no checkpoint ever contains weights updated by a non-finite loss;
- at the end of training.

A non-finite loss is therefore reported at most `log_every_n_steps` steps late, but the
error names the step where it first happened. Under DDP or FSDP the ranks combine their
records with one all-reduce at each of these points, so every rank stops together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

# Stands for "no non-finite loss yet" in the device record, so that a min-reduction over
# ranks returns the earliest bad step.
_NO_STEP = 2**62


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class NonFiniteLossGuard(Callback):
    """Raise `NonFiniteLossError` when a training loss is NaN or infinite.

    The message names the first bad step and its loss, the step where it was found and
    the loss terms logged there (the `train/` metrics), and the newest checkpoint,
    whose weights predate the bad step. Checkpoints written with
    `save_weights_only=True` skip the callback hooks and are not guarded.

    Args:
        check_every_n_steps: Optimizer steps between host reads of the record; None uses
            the trainer's `log_every_n_steps`.
    """

    def __init__(self, check_every_n_steps: int | None = None) -> None:
        if check_every_n_steps is not None and check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.check_every_n_steps = check_every_n_steps
        self._first_bad_step: Tensor | None = None
        self._first_bad_loss: Tensor | None = None
        self._last_checked_step = -1

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._first_bad_step = None
        self._first_bad_loss = None
        self._last_checked_step = -1

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, Tensor):
            self._record(loss.detach(), trainer.global_step)

        every = self.check_every_n_steps or trainer.log_every_n_steps
        step = trainer.global_step
        if step % max(1, every) == 0 and step != self._last_checked_step:
            self._last_checked_step = step
            self.check(trainer)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self.check(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.check(trainer)

    def _record(self, loss: Tensor, step: int) -> None:
        if self._first_bad_step is None:
            self._first_bad_step = torch.full((), _NO_STEP, dtype=torch.long, device=loss.device)
            self._first_bad_loss = torch.zeros((), dtype=torch.float32, device=loss.device)
        assert self._first_bad_loss is not None
        # A Python scalar in torch.where is a kernel argument, so nothing is copied to the device.
        new = ~torch.isfinite(loss) & (self._first_bad_step == _NO_STEP)
        self._first_bad_step = torch.where(new, step, self._first_bad_step)
        self._first_bad_loss = torch.where(new, loss.float(), self._first_bad_loss)

    def check(self, trainer: Trainer) -> None:
        """Read the record (host sync, one all-reduce over ranks) and raise if a loss was non-finite.

        Raises:
            NonFiniteLossError: Some rank saw a NaN or infinite loss.
        """
        if self._first_bad_step is None:
            return
        assert self._first_bad_loss is not None
        first_bad = trainer.strategy.reduce(self._first_bad_step.clone(), reduce_op="min")
        bad_step = int(first_bad)
        if bad_step == _NO_STEP:
            return

        if int(self._first_bad_step) == bad_step:
            loss_text = f"loss = {float(self._first_bad_loss)} on rank {trainer.global_rank}"
        else:
            loss_text = "on another rank"
        terms = {
            name: float(value)
            for name, value in sorted(trainer.callback_metrics.items())
            if name.startswith("train/") and isinstance(value, Tensor) and value.numel() == 1
        }
        terms_text = ", ".join(f"{name}={value:.4g}" for name, value in terms.items()) or "none logged"
        bad_terms = [name for name, value in terms.items() if not math.isfinite(value)]
        newest = _newest_checkpoint(trainer)
        raise NonFiniteLossError(
            f"non-finite training loss at global step {bad_step} ({loss_text}); found at step "
            f"{trainer.global_step}, where the logged loss terms are: {terms_text}"
            + (f" (non-finite: {', '.join(bad_terms)})" if bad_terms else "")
            + ". No checkpoint was written after that step; the newest one is "
            + (str(newest) if newest else "none (no checkpoint written yet)")
            + ". Resume from it with a lower learning rate, a longer warm-up or gradient clipping, or use "
            "bf16-mixed instead of 16-mixed precision."
        )


def _newest_checkpoint(trainer: Trainer) -> Path | None:
    """Return the most recently written checkpoint of the trainer's `ModelCheckpoint`s, if any."""
    paths = []
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint):
            for path in (callback.last_model_path, callback.best_model_path, *callback.best_k_models):
                if path and Path(path).exists():
                    paths.append(Path(path))
    return max(paths, key=lambda path: path.stat().st_mtime_ns, default=None)
