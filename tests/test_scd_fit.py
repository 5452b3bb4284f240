"""End to end: a few Lightning training steps of SCD and the causal DiT on moving digits."""

from __future__ import annotations

import json

import pytest
import torch
from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from unisep.callbacks.rollout import VideoRollout
from unisep.callbacks.video_latency import GenerationLatency
from unisep.datamodules.video_demos import ensure_moving_digits_shards
from unisep.datamodules.videos import VideoDataModule
from unisep.lightning_modules.causal_dit import CausalDiTModule
from unisep.lightning_modules.scd import SCD
from unisep.networks.frame_tokenizer import PatchTokenizer


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return ensure_moving_digits_shards(root, image_size=16, num_frames=10, train_videos=16, val_videos=4)


def datamodule(shards) -> VideoDataModule:
    return VideoDataModule(
        train_shards=str(shards["train"]),
        val_shards=str(shards["val"]),
        clip_length=6,
        image_size=16,
        channels=1,
        batch_size=2,
        batches_per_epoch=3,
    )


def tiny_module(kind: str):
    tokenizer = PatchTokenizer(image_size=16, channels=1, patch_size=4)
    common = dict(lr=1e-3, warmup_steps=1, ema_decay=0.9, sample_steps=2)
    if kind == "scd":
        return SCD(tokenizer, preset="scd_tiny", preset_overrides={"encoder_depth": 2, "decoder_depth": 1}, **common)
    return CausalDiTModule(tokenizer, preset="causal_dit_tiny", preset_overrides={"depth": 3}, **common)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["scd", "causal_dit"])
def test_tiny_fit_writes_rollout_metrics(kind, shards, tmp_path):
    torch.manual_seed(0)
    module = tiny_module(kind)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=3,
        logger=False,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[
            checkpoint,
            VideoRollout(context_frames=3, rollout_frames=3, num_clips=4, batch_size=2, strip_clips=2),
            GenerationLatency(context_frames=3, rollout_frames=2, warmup_rollouts=0),
        ],
    )
    parameters_before = [p.detach().clone() for p in module.network.parameters()]
    trainer.fit(module, datamodule=datamodule(shards))

    assert trainer.global_step == 3
    assert any(not torch.equal(a, b) for a, b in zip(parameters_before, module.network.parameters()))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("rollout_psnr", "rollout_ssim", "copy_last_psnr", "latency_first_frame_s", "latency_steady_s_per_frame"):
        assert isinstance(metrics[key], float), key
    assert len(metrics["rollout_psnr_per_frame"]) == 3
    assert metrics["rollout_protocol"]["num_clips"] == 4
    assert set(metrics["skipped_metrics"]) == {"lpips", "fvd"}
    assert metrics["latency_includes_pixel_decoding"] is True
    assert (tmp_path / "rollout.png").is_file()
    assert (tmp_path / "rollout.gif").is_file()

    # The checkpoint rebuilds the module, tokenizer included, and it still generates.
    cls = SCD if kind == "scd" else CausalDiTModule
    restored = cls.load_from_checkpoint(checkpoint.last_model_path, map_location="cpu")
    context = torch.rand(1, 3, 1, 16, 16) * 2 - 1
    frames = list(restored.generate(context, 2, steps=2))
    assert len(frames) == 2
    assert frames[0].shape == (1, 1, 16, 16)


def test_scd_optimizer_gives_decoder_double_lr():
    module = tiny_module("scd")
    groups = {group["name"]: group["lr"] for group in module_optimizer(module).param_groups}
    assert groups == {"encoder": 1e-3, "decoder": 2e-3}


def module_optimizer(module):
    trainer = Trainer(accelerator="cpu", max_steps=10, logger=False, enable_progress_bar=False)
    module.trainer = trainer
    return module.configure_optimizers()["optimizer"]
