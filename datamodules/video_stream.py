"""WebDataset pipeline stages that turn video shards into batches of fixed-length clips.

A clip is `clip_length` frames taken every `frame_stride` frames, so it spans
`(clip_length - 1) * frame_stride + 1` frames of the stored video. Training draws
`clips_per_video` clips at random starts from each video. Validation takes clips at
evenly spaced fixed starts, so every evaluation scores the same clips.

A video shorter than a clip's span is skipped and counted, or, with
`short_videos="pad"`, completed by repeating its last frame. A video whose frames do
not have the configured size raises a `ValueError` naming both sizes.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import numpy as np
import torch
import webdataset as wds

from unisep.datamodules.seeding import derive_seed, worker_info
from unisep.datamodules.shard_schedule import ShardChain
from unisep.datamodules.stream_stages import (
    ShuffleBuffer,
    SkipCounter,
    SkipUnreadableShard,
    should_log_skip,
    validation_pipeline,
)

logger = logging.getLogger(__name__)

ShortVideoPolicy = Literal["skip", "pad"]


class ClipSampler:
    """Pipeline stage: raw video samples -> `{"frames", "actions"?, "key"}` clips.

    Args:
        clip_length: frames per clip.
        frame_stride: step between the stored frames taken into a clip.
        image_size: expected frame side in pixels.
        channels: expected colour channels.
        clips_per_video: clips taken from each video.
        random_starts: draw clip starts at random (training) or spread them evenly
            from the first frame (validation).
        short_videos: "skip" (count and log) or "pad" (repeat the last frame).
        counter: shared count of skipped short videos.
        with_actions: read the `actions.npy` member (required when True).
        seed: seed of the random starts; the worker id is mixed in.
    """

    def __init__(
        self,
        *,
        clip_length: int,
        frame_stride: int,
        image_size: int,
        channels: int,
        clips_per_video: int,
        random_starts: bool,
        short_videos: ShortVideoPolicy,
        counter: SkipCounter,
        with_actions: bool = False,
        seed: int = 0,
    ):
        if clip_length < 1 or frame_stride < 1 or clips_per_video < 1:
            raise ValueError(
                "clip_length, frame_stride and clips_per_video must be >= 1, got"
                f" {clip_length}, {frame_stride}, {clips_per_video}"
            )
        if short_videos not in ("skip", "pad"):
            raise ValueError(f'short_videos must be "skip" or "pad", got {short_videos!r}')
        self.clip_length = clip_length
        self.frame_stride = frame_stride
        self.image_size = image_size
        self.channels = channels
        self.clips_per_video = clips_per_video
        self.random_starts = random_starts
        self.short_videos = short_videos
        self.counter = counter
        self.with_actions = with_actions
        self.seed = seed

    @property
    def span(self) -> int:
        """Stored frames covered by one clip."""
        return (self.clip_length - 1) * self.frame_stride + 1

    def load(self, sample: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
        """Decode the frames (T, H, W, C) uint8 and the actions (T,) of a sample, checking sizes."""
        key, url = sample.get("__key__"), sample.get("__url__")
        if "npy" not in sample:
            present = sorted(k for k in sample if not k.startswith("__"))
            raise ValueError(f"video sample {key!r} in {url} has no npy member; members are {present}")
        frames = np.load(io.BytesIO(sample["npy"]), allow_pickle=False)
        expected = (self.image_size, self.image_size, self.channels)
        if frames.ndim != 4 or tuple(frames.shape[1:]) != expected:
            raise ValueError(
                f"video sample {key!r} in {url} has frames of size (H, W, C) = {tuple(frames.shape[1:])}"
                f" (array shape {frames.shape}), expected {expected}. Rewrite the shards with"
                f" `unisep data videos SRC OUT --image-size {self.image_size} --channels {self.channels}`"
                " or set the datamodule's image_size and channels to the stored size"
            )
        actions = None
        if self.with_actions:
            if "actions.npy" not in sample:
                raise ValueError(f"video sample {key!r} in {url} has no actions.npy member but with_actions is set")
            actions = np.load(io.BytesIO(sample["actions.npy"]), allow_pickle=False).astype(np.int64)
            if len(actions) != len(frames):
                raise ValueError(f"video sample {key!r} in {url} has {len(actions)} actions for {len(frames)} frames")
        return frames, actions

    def _pad(self, frames: np.ndarray, actions: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        missing = self.span - len(frames)
        frames = np.concatenate([frames, np.repeat(frames[-1:], missing, axis=0)])
        if actions is not None:
            actions = np.concatenate([actions, np.repeat(actions[-1:], missing)])
        return frames, actions

    def _starts(self, num_frames: int, rng: np.random.Generator) -> list[int]:
        last = num_frames - self.span
        if self.random_starts:
            return [int(start) for start in rng.integers(0, last + 1, size=self.clips_per_video)]
        return sorted({int(round(start)) for start in np.linspace(0, last, self.clips_per_video)})

    def _record_short(self, sample: dict[str, Any], num_frames: int) -> None:
        total = self.counter.increment()
        if should_log_skip(total):
            logger.warning(
                "Skipped video %r in %s: %d frames, shorter than one clip of %d frames"
                " (clip_length=%d, frame_stride=%d); %d skipped so far. Set short_videos='pad' to pad it",
                sample.get("__key__"),
                sample.get("__url__"),
                num_frames,
                self.span,
                self.clip_length,
                self.frame_stride,
                total,
            )

    def __call__(self, samples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        worker, _ = worker_info()
        rng = np.random.default_rng(derive_seed(self.seed, worker))
        for sample in samples:
            frames, actions = self.load(sample)
            if len(frames) < self.span:
                if self.short_videos == "skip":
                    self._record_short(sample, len(frames))
                    continue
                frames, actions = self._pad(frames, actions)
            for start in self._starts(len(frames), rng):
                window = slice(start, start + self.span, self.frame_stride)
                clip = torch.from_numpy(np.ascontiguousarray(frames[window])).permute(0, 3, 1, 2)
                out = {"frames": clip.float() / 127.5 - 1.0, "key": f"{sample.get('__key__')}@{start}"}
                if actions is not None:
                    out["actions"] = torch.from_numpy(actions[window])
                yield out


def collate_clips(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack clips into `{"frames": (B, F, C, H, W) float32, "actions"?: (B, F) int64, "key": list}`."""
    batch: dict[str, Any] = {
        "frames": torch.stack([s["frames"] for s in samples]),
        "key": [s["key"] for s in samples],
    }
    if "actions" in samples[0]:
        batch["actions"] = torch.stack([s["actions"] for s in samples])
    return batch


def train_clip_pipeline(
    urls: list[str],
    *,
    sampler: ClipSampler,
    batch_size: int,
    shuffle_buffer: int,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int = 1,
) -> wds.DataPipeline:
    """Build the endless training stream of one rank: shards split over ranks and workers, shuffled clips."""
    stream_seed = derive_seed(seed, epoch, rank)
    return wds.DataPipeline(
        ShardChain(urls, seed=seed, epoch=epoch, rank=rank, world_size=world_size),
        wds.tarfile_to_samples(handler=SkipUnreadableShard("video shard")),
        # Clips, not raw videos, are shuffled, so the clips of one video spread over batches.
        sampler,
        ShuffleBuffer(shuffle_buffer, stream_seed),
        wds.batched(batch_size, collation_fn=collate_clips, partial=False),
    )


def val_clip_pipeline(
    urls: list[str], *, sampler: ClipSampler, batch_size: int, rank: int, world_size: int
) -> wds.DataPipeline:
    """Build the finite validation stream of one rank: each stored video read once."""
    return validation_pipeline(
        urls,
        decode=sampler,
        collate=collate_clips,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        handler=SkipUnreadableShard("video shard"),
    )
