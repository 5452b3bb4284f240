"""Training throughput, step time, peak memory and MFU in the logs of every fit.

Time is read on the host at the end of a batch. The device is synchronised only at
logging points (every `log_every_n_steps` batches), so a window's time covers all the
work queued in it and no other training step waits for the device. Validation runs
inside a window are excluded from its time.
"""

from __future__ import annotations

import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from unisep.callbacks.metrics_file import update_metrics_json

# Dense (no sparsity) bf16 tensor-core peaks per GPU, in FLOP/s, matched against
# torch.cuda.get_device_name() in this order. Source: NVIDIA's A100, H100, H200 and L4
# datasheets as listed in lightning.fabric.utilities.throughput (Lightning 2.6), which
# gives the H200 at its sparsity figure (2.0e15), halved here.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    (r"H100.*(PCIe|HBM2e)", 756e12),
    (r"H100.*HBM3", 989.4e12),  # H100 SXM5
    (r"H200", 989.4e12),  # H200 SXM
    (r"A100", 312e12),  # SXM4 and PCIe
    (r"\bL4\b", 121e12),
)


def peak_bf16_flops(device_name: str) -> float | None:
    """Return the dense bf16 peak FLOP/s of a GPU from its CUDA name, or None when unknown."""
    for pattern, flops in PEAK_BF16_FLOPS:
        if re.search(pattern, device_name):
            return flops
    return None


def batch_size_of(batch: Any) -> int:
    """Number of samples in a batch: the leading size of its first tensor (dicts, lists, tensors)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, dict):
        values = list(batch.values())
    elif isinstance(batch, (list, tuple)):
        values = list(batch)
    else:
        values = []
    for value in values:
        size = batch_size_of(value)
        if size:
            return size
    return 0


def peak_memory_gib(device: torch.device) -> tuple[float, str]:
    """Return peak memory in GiB and what it measures.

    On CUDA: `torch.cuda.max_memory_allocated` since the fit started. Elsewhere: the
    process's peak resident set size from `resource.getrusage`, which counts neither
    DataLoader worker processes nor memory freed before the peak was overtaken.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda_max_allocated"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    bytes_peak = peak if sys.platform == "darwin" else peak * 1024
    return bytes_peak / 2**30, "process_peak_rss"


class Throughput(Callback):
    """Log samples/s, tokens/s, step time, peak memory and MFU during training.

    Every `log_every_n_steps` training batches it logs, to the loggers and the progress bar:

    - `throughput/samples_per_sec`: all ranks together, assuming equal per-rank batches;
    - `throughput/samples_per_sec_per_device` and `throughput/step_time_ms`;
    - `throughput/tokens_per_sec`, when the module has `tokens_per_sample`;
    - `memory/peak_gib` (see `peak_memory_gib`);
    - `throughput/mfu`, when the module has `flops_per_sample` (the training FLOPs of
      one sample) and the GPU's peak is known.

    At the end of training it prints one summary line and adds a `throughput` entry to
    the run's `metrics.json`.

    Args:
        log_every_n_steps: batches per measurement window; None takes the trainer's
            `log_every_n_steps`.
        peak_flops_per_device: peak FLOP/s for MFU; None looks the GPU up in
            `PEAK_BF16_FLOPS` (no MFU on CPU or an unknown GPU).
        write_metrics_json: add the summary to `metrics.json` in the run folder.
    """

    def __init__(
        self,
        log_every_n_steps: int | None = None,
        peak_flops_per_device: float | None = None,
        write_metrics_json: bool = True,
    ) -> None:
        if log_every_n_steps is not None and log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps must be a positive integer or None, got {log_every_n_steps}.")
        self.log_every_n_steps = log_every_n_steps
        self.peak_flops_per_device = peak_flops_per_device
        self.write_metrics_json = write_metrics_json
        self.last_values: dict[str, float] = {}
        self._reset_totals()

    def _reset_totals(self) -> None:
        self._window_start = 0.0
        self._window_samples = 0
        self._window_batches = 0
        self._validation_start: float | None = None
        # [seconds, samples, batches] over all windows and over all windows but the first,
        # which includes start-up work (compilation, DataLoader workers, caches).
        self._all_windows = [0.0, 0, 0]
        self._later_windows = [0.0, 0, 0]
        self._windows = 0

    def _every(self, trainer: Trainer) -> int:
        return self.log_every_n_steps or max(trainer.log_every_n_steps, 1)

    def _now(self, device: torch.device) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset_totals()
        device = pl_module.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            if self.peak_flops_per_device is None:
                self.peak_flops_per_device = peak_bf16_flops(torch.cuda.get_device_name(device))
        self._window_start = self._now(device)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._validation_start = self._now(pl_module.device)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._validation_start is not None:
            # Move the window start forward by the validation time, so it is not counted.
            self._window_start += self._now(pl_module.device) - self._validation_start
            self._validation_start = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._window_samples += batch_size_of(batch)
        self._window_batches += 1
        if self._window_batches < self._every(trainer):
            return

        now = self._now(pl_module.device)
        seconds = max(now - self._window_start, 1e-9)
        values = self._window_values(trainer, pl_module, seconds)
        for totals in (self._all_windows, self._later_windows) if self._windows else (self._all_windows,):
            totals[0] += seconds
            totals[1] += self._window_samples
            totals[2] += self._window_batches
        self._windows += 1

        self.last_values = values
        pl_module.log_dict(
            {name: values[name] for name in ("throughput/samples_per_sec", "memory/peak_gib") if name in values},
            on_step=True,
            on_epoch=False,
            prog_bar=True,
            logger=False,
            sync_dist=False,
        )
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)
        self._window_start = now
        self._window_samples = 0
        self._window_batches = 0

    def _rates(self, trainer: Trainer, pl_module: LightningModule, seconds: float, samples: int, batches: int) -> dict[str, float]:
        per_device = samples / seconds
        values = {
            "throughput/samples_per_sec": per_device * trainer.world_size,
            "throughput/samples_per_sec_per_device": per_device,
            "throughput/step_time_ms": 1000.0 * seconds / batches,
        }
        tokens_per_sample = getattr(pl_module, "tokens_per_sample", None)
        if isinstance(tokens_per_sample, (int, float)):
            values["throughput/tokens_per_sec"] = values["throughput/samples_per_sec"] * tokens_per_sample
        flops_per_sample = getattr(pl_module, "flops_per_sample", None)
        if isinstance(flops_per_sample, (int, float)) and self.peak_flops_per_device:
            values["throughput/mfu"] = per_device * flops_per_sample / self.peak_flops_per_device
        return values

    def _window_values(self, trainer: Trainer, pl_module: LightningModule, seconds: float) -> dict[str, float]:
        values = self._rates(trainer, pl_module, seconds, self._window_samples, self._window_batches)
        values["memory/peak_gib"] = peak_memory_gib(pl_module.device)[0]
        return values

    def summary(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        """Return the fit's throughput (leaving out the first window when there are several) and peak memory."""
        memory, memory_kind = peak_memory_gib(pl_module.device)
        result: dict[str, Any] = {"peak_memory_gib": round(memory, 3), "peak_memory_kind": memory_kind, "device": str(pl_module.device)}
        if pl_module.device.type == "cuda":
            result["gpu"] = torch.cuda.get_device_name(pl_module.device)
        seconds, samples, batches = self._later_windows if self._later_windows[2] else self._all_windows
        if batches:
            rates = self._rates(trainer, pl_module, seconds, samples, batches)
            result.update({name.split("/")[1]: round(value, 6) for name, value in rates.items()})
            result.update(measured_batches=batches, world_size=trainer.world_size)
        return result

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        summary = self.summary(trainer, pl_module)
        if "samples_per_sec" in summary:
            rank_zero_info(
                f"Throughput: {summary['samples_per_sec']:.1f} samples/s over {trainer.world_size} device(s), "
                f"step {summary['step_time_ms']:.1f} ms, peak memory {summary['peak_memory_gib']:.2f} GiB "
                f"({summary['peak_memory_kind']})" + (f", MFU {100 * summary['mfu']:.1f}%" if "mfu" in summary else "")
            )
        else:
            rank_zero_info(
                f"Throughput: fewer than {self._every(trainer)} training batches, no window measured; "
                f"peak memory {summary['peak_memory_gib']:.2f} GiB ({summary['peak_memory_kind']})"
            )
        if self.write_metrics_json:
            # trainer.log_dir is a broadcast, so every rank must read it, not only the writer.
            run_dir = Path(trainer.log_dir or trainer.default_root_dir)
            if trainer.is_global_zero:
                update_metrics_json(run_dir, {"throughput": summary})
