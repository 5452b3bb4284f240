"""Seed the random number generators at every training batch from (seed, rank, batch index).

A resumed run then draws the same noise, timesteps and dropout masks as an
uninterrupted one, whatever ran between the checkpoint and the next batch (validation,
sampling callbacks, DataLoader start-up). No generator state has to be stored, because
the state at each batch is a function of three integers.
Ranks get different seeds, so under DDP each rank draws its own noise for its own
samples; Lightning's `seed_everything` alone gives every rank the same stream.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

logger = logging.getLogger(__name__)


def batch_seed(seed: int, rank: int, batch_index: int) -> int:
    """Mix the run seed, the global rank and the batch index into one 63-bit seed."""
    state = np.random.SeedSequence([seed % 2**64, rank, batch_index]).generate_state(1, np.uint64)[0]
    return int(state) % 2**63


class StepSeeding(Callback):
    """Reseed torch (CPU and every CUDA device), numpy and `random` before each training batch.

    The batch index counts batches over all epochs (`trainer.fit_loop.total_batch_idx`),
    so every micro-batch of a gradient-accumulation step gets its own seed, and Lightning
    restores the count from the checkpoint. Seeding touches host-side generator state
    only, with no device synchronisation.

    Args:
        seed: Run seed; None takes the seed of `seed_everything` (the `PL_GLOBAL_SEED`
            environment variable), or 0 when it was not called. A resumed run keeps the
            seed stored in its checkpoint.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.seed is None:
            self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0))

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        assert self.seed is not None, "setup() sets the seed"
        seed = batch_seed(self.seed, trainer.global_rank, trainer.fit_loop.total_batch_idx)
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        stored = state_dict.get("seed")
        if stored is None:
            return
        if self.seed is not None and self.seed != stored:
            logger.warning("Resuming with the checkpoint's training seed %d instead of %d", stored, self.seed)
        self.seed = int(stored)
