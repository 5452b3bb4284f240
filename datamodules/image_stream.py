"""WebDataset pipelines that turn image shards into batches.

Two streams:

- training: shards come from an endless chain of permutations split over ranks and
  workers (``shard_schedule.ShardChain``), so the stream never ends and every rank
  yields batches whatever the shard sizes. A shuffle buffer and optional flips follow.
  The caller cuts the stream into epochs of a fixed number of batches.
- validation: every shard is read once, split over ranks and then workers, in order.

Both decode ``png``/``jpg`` members with PIL to ``(C, H, W)`` float32 in [-1, 1] and
``cls`` to an int64 label. A sample that fails to decode is skipped and counted, or
raises ``CorruptSampleError`` when ``corrupt="raise"``.

All randomness comes from ``(seed, epoch, rank, worker)``, so a run is reproducible
and each epoch differs. The pipelines are built from ``webdataset.DataPipeline``
stages rather than ``webdataset.WebDataset(resampled=True)``, because the latter seeds
its shard sampler from the clock and the process id and lets ranks draw the same shards.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import webdataset as wds
from PIL import Image

from unisep.datamodules.image_transforms import CHANNEL_MODES, adm_center_crop, image_to_tensor
from unisep.datamodules.seeding import derive_seed
from unisep.datamodules.shard_schedule import ShardChain
from unisep.datamodules.stream_stages import (
    CorruptPolicy,
    ShuffleBuffer,
    SkipCounter,
    skip_or_raise,
    tar_error_handler,
    validation_pipeline,
    worker_rng,
)

# Defined in stream_stages since the molecule and video streams share them; still
# importable from here.
from unisep.datamodules.stream_stages import CorruptSampleError, SplitByRank  # noqa: F401

logger = logging.getLogger(__name__)

IMAGE_MEMBERS = ("png", "jpg", "jpeg", "webp")


class DecodeImages:
    """Pipeline stage: raw webdataset samples -> ``{"image", "label"}`` dicts.

    Args:
        image_size: Output side in pixels; stored images of another size are ADM
            centre-cropped to it.
        channels: 1 (grayscale) or 3 (RGB).
        corrupt: ``"skip"`` counts and logs a bad sample; ``"raise"`` raises
            ``CorruptSampleError`` naming its key and shard.
        counter: Shared count of skipped samples.
        random_flip: Flip horizontally with probability 0.5.
        seed: Seed of the flip decisions; the worker id is mixed in.
    """

    def __init__(
        self,
        *,
        image_size: int,
        channels: int,
        corrupt: CorruptPolicy,
        counter: SkipCounter,
        random_flip: bool = False,
        seed: int = 0,
    ) -> None:
        if channels not in CHANNEL_MODES:
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.image_size = image_size
        self.channels = channels
        self.corrupt = corrupt
        self.counter = counter
        self.random_flip = random_flip
        self.seed = seed

    def decode(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Decode one sample; raise ValueError or OSError when it is unusable.

        Returns:
            ``{"image": (C, image_size, image_size) float32 in [-1, 1], "label": int}``.
        """
        member = next((m for m in IMAGE_MEMBERS if m in sample), None)
        if member is None:
            present = sorted(k for k in sample if not k.startswith("__"))
            raise ValueError(f"no image member ({', '.join(IMAGE_MEMBERS)}); members are {present}")
        if "cls" not in sample:
            raise ValueError("no cls member")
        label = int(sample["cls"].decode("utf-8").strip())

        with Image.open(io.BytesIO(sample[member])) as opened:
            opened.load()  # decode now, so truncated data fails inside this sample's try
            image = opened.convert(CHANNEL_MODES[self.channels])
        if image.size != (self.image_size, self.image_size):
            image = adm_center_crop(image, self.image_size)
        return {"image": image_to_tensor(image, self.channels), "label": label}

    def __call__(self, samples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        rng = worker_rng(self.seed, stage=1) if self.random_flip else None
        for sample in samples:
            try:
                decoded = self.decode(sample)
            except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
                # PIL raises OSError for unidentified or truncated data, and SyntaxError
                # or EOFError from some format plugins for damaged chunks.
                skip_or_raise(
                    sample, error, corrupt=self.corrupt, counter=self.counter, label="corrupt sample", log=logger
                )
                continue
            if rng is not None and rng.random() < 0.5:
                decoded["image"] = decoded["image"].flip(-1)
            yield decoded


def collate_images(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack decoded samples into ``{"image": (B, C, H, W) float32, "label": (B,) int64}``."""
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "label": torch.tensor([s["label"] for s in samples], dtype=torch.int64),
    }


def train_pipeline(
    urls: list[str],
    *,
    decoder: DecodeImages,
    batch_size: int,
    shuffle_buffer: int,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int = 1,
) -> wds.DataPipeline:
    """Build the endless training stream of one rank for one epoch.

    Ranks and workers read disjoint shards within each pass over the shard list (see
    ``shard_schedule``). All ranks yield batches without end, and the caller takes a
    fixed number of batches per epoch.

    Args:
        urls: All shard URLs, in the same order on every rank.
        decoder: Decoding stage; its seed should already include the epoch and rank.
        batch_size: Samples per batch on this rank.
        shuffle_buffer: Samples held in the shuffle buffer of each worker.
        seed: Run seed.
        epoch: Epoch number; a new epoch reads the shards in a new order.
        rank: Global rank of this process.
        world_size: Number of ranks.

    Returns:
        A pipeline yielding ``{"image": (batch_size, C, H, W), "label": (batch_size,)}``.
    """
    stream_seed = derive_seed(seed, epoch, rank)
    return wds.DataPipeline(
        ShardChain(urls, seed=seed, epoch=epoch, rank=rank, world_size=world_size),
        wds.tarfile_to_samples(handler=tar_error_handler(decoder.corrupt)),
        ShuffleBuffer(shuffle_buffer, stream_seed),
        decoder,
        wds.batched(batch_size, collation_fn=collate_images, partial=False),
    )


def val_pipeline(
    urls: list[str],
    *,
    decoder: DecodeImages,
    batch_size: int,
    rank: int,
    world_size: int,
) -> wds.DataPipeline:
    """Build the finite validation stream of one rank.

    Shards are split over ranks, then over DataLoader workers, so over all ranks each
    readable sample is yielded once. The last batch of each
    worker may be smaller than ``batch_size``.
    """
    return validation_pipeline(
        urls,
        decode=decoder,
        collate=collate_images,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        handler=tar_error_handler(decoder.corrupt),
    )
