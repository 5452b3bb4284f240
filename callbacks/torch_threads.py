"""Set PyTorch's intra-op CPU thread count when a fit runs on the CPU.

Small models (the CPU demos) run many tiny matrix products, for which OpenMP threads
cost more in synchronisation than they gain. On a CPU shared with other jobs the
spinning threads slow everything down. The SCD digits demo measured 0.3 steps/s with 2
threads and 1.25 steps/s with 1 thread on a 2-core machine shared with two other jobs.
"""

from __future__ import annotations

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info


class TorchThreads(Callback):
    """Call `torch.set_num_threads(num_threads)` at setup when the module is on the CPU.

    Args:
        num_threads: intra-op threads; None leaves PyTorch's default.
    """

    def __init__(self, num_threads: int | None = 1):
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}")
        self.num_threads = num_threads

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.num_threads is None or pl_module.device.type != "cpu":
            return
        previous = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)
        rank_zero_info(f"TorchThreads: {previous} -> {self.num_threads} intra-op CPU threads")
