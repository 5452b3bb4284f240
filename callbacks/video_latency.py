"""Per-frame generation latency of a streaming video model, measured at the end of fit.

The module's `generate()` yields one frame at a time. The first frame's latency runs
from the call to the first yield, so it includes encoding the context (the KV-cache
prefill). The steady-state time per frame is the median gap between later yields. On
CUDA the device is synchronised before each clock read, so queued work is counted.

Whether the frame tokenizer's decoding to pixels is inside the timed span is a setting
(`include_decoding`) and is written next to the figures. Absolute times depend on the
machine and on other jobs running beside the fit; compare models with
`bench/scd_latency.py`, which alternates them in one process.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from unisep.callbacks.metrics_file import update_metrics_json


class GenerationLatency(Callback):
    """Time a rollout from a validation clip and write `latency_*` keys to `metrics.json`.

    Args:
        context_frames: given frames.
        rollout_frames: generated frames; at least 2 for a steady-state figure.
        batch_size: clips generated together (1 = interactive latency).
        steps, guidance_scale: sampling settings (None: the module's defaults).
        include_decoding: decode each frame to pixels inside the timed span.
        warmup_rollouts: untimed rollouts first (allocator and kernel warm-up).
    """

    def __init__(
        self,
        context_frames: int = 8,
        rollout_frames: int = 8,
        batch_size: int = 1,
        steps: int | None = None,
        guidance_scale: float | None = None,
        include_decoding: bool = True,
        warmup_rollouts: int = 1,
    ):
        if rollout_frames < 2:
            raise ValueError(f"rollout_frames must be >= 2 to measure a steady state, got {rollout_frames}")
        self.context_frames = context_frames
        self.rollout_frames = rollout_frames
        self.batch_size = batch_size
        self.steps = steps
        self.guidance_scale = guidance_scale
        self.include_decoding = include_decoding
        self.warmup_rollouts = warmup_rollouts

    def _context(self, trainer: Trainer) -> torch.Tensor:
        loader = trainer.datamodule.val_dataloader() if trainer.datamodule is not None else None
        if not loader:
            raise ValueError("GenerationLatency needs validation clips; give the datamodule val_shards")
        batch = next(iter(loader))
        if batch["frames"].shape[1] < self.context_frames:
            raise ValueError(
                f"validation clips have {batch['frames'].shape[1]} frames, fewer than context_frames={self.context_frames}"
            )
        frames = batch["frames"][: self.batch_size, : self.context_frames]
        if len(frames) < self.batch_size:
            frames = frames.repeat(-(-self.batch_size // len(frames)), 1, 1, 1, 1)[: self.batch_size]
        return frames

    @torch.no_grad()
    def measure(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, object]:
        """Return the first-frame latency, the steady-state time per frame and the settings."""
        context = self._context(trainer).to(pl_module.device)
        on_cuda = pl_module.device.type == "cuda"

        def clock() -> float:
            if on_cuda:
                torch.cuda.synchronize(pl_module.device)
            return time.perf_counter()

        options = dict(steps=self.steps, guidance_scale=self.guidance_scale, decode=self.include_decoding)
        for _ in range(self.warmup_rollouts):
            for _frame in pl_module.generate(context, self.rollout_frames, **options):
                pass

        stamps = [clock()]
        for _frame in pl_module.generate(context, self.rollout_frames, **options):
            stamps.append(clock())
        gaps = [later - earlier for earlier, later in zip(stamps, stamps[1:])]
        steady = statistics.median(gaps[1:])
        hp = getattr(pl_module, "hparams", {})
        return {
            "latency_first_frame_s": gaps[0],
            "latency_steady_s_per_frame": steady,
            "latency_frames_per_s": self.batch_size / steady,
            "latency_includes_pixel_decoding": self.include_decoding,
            "latency_protocol": {
                "device": str(pl_module.device),
                "batch_size": self.batch_size,
                "context_frames": self.context_frames,
                "rollout_frames": self.rollout_frames,
                "steps": self.steps or hp.get("sample_steps"),
                "guidance_scale": hp.get("guidance_scale") if self.guidance_scale is None else self.guidance_scale,
                "torch_threads": torch.get_num_threads(),
            },
        }

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        metrics = self.measure(trainer, pl_module)
        update_metrics_json(Path(trainer.log_dir or "."), metrics)
        print(
            f"Generation latency: first frame {metrics['latency_first_frame_s']:.3f} s, steady state"
            f" {metrics['latency_steady_s_per_frame']:.3f} s/frame"
            f" ({'with' if self.include_decoding else 'without'} pixel decoding)"
        )
