"""Faults: a non-finite loss stops training cleanly; a kill during a checkpoint write loses nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from scale_helpers import preserved_global_rng, write_image_shards
from unisep.callbacks.nonfinite_loss import NonFiniteLossError, NonFiniteLossGuard
from unisep.datamodules.images import ImageDataModule
from unisep.lightning_modules import UNITE
from unisep.networks import ImageModality
from unisep.training.checkpoint_io import AtomicCheckpointIO, temporary_path

BAD_STEP = 5


class _NaNAtStep(UNITE):
    """UNITE whose loss turns NaN on the batch that completes optimizer step BAD_STEP."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step == BAD_STEP - 1 else loss


@pytest.fixture(autouse=True)
def _restore_global_rng():
    with preserved_global_rng():
        yield


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    write_image_shards(tmp_path / "images", [16, 8])
    seed_everything(0)
    model = _NaNAtStep(
        modality=ImageModality(image_size=16, patch_size=4, channels=1),
        preset="unite_tiny",
        preset_overrides={"depth": 2, "width": 64, "heads": 2, "class_token_start": 1},
        num_classes=10,
        denoising_passes=1,
    )
    data = ImageDataModule(train_shards=str(tmp_path / "images"), image_size=16, channels=1, batch_size=4, batches_per_epoch=20, num_workers=0)
    checkpoints = tmp_path / "checkpoints"
    trainer = Trainer(
        accelerator="cpu",
        max_steps=20,
        log_every_n_steps=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        plugins=[AtomicCheckpointIO()],
        callbacks=[
            NonFiniteLossGuard(),
            ModelCheckpoint(dirpath=checkpoints, every_n_train_steps=2, save_top_k=-1, filename="{step}"),
        ],
    )

    with pytest.raises(NonFiniteLossError) as error:
        trainer.fit(model, datamodule=data)

    message = str(error.value)
    assert f"non-finite training loss at global step {BAD_STEP} (loss = nan on rank 0)" in message
    assert "found at step 6" in message  # the first check after the bad step (every 3 steps)
    assert "train/loss=nan" in message  # the weights are NaN by then, so every term is
    assert str(checkpoints / "step=4.ckpt") in message
    # The checkpoint due at step 6 was refused: its weights came from the NaN step.
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step=2.ckpt", "step=4.ckpt"]
    restored = UNITE.load_from_checkpoint(checkpoints / "step=4.ckpt")
    assert all(torch.isfinite(p).all() for p in restored.parameters())


def test_guard_rejects_bad_interval():
    with pytest.raises(ValueError, match="check_every_n_steps must be >= 1, got 0"):
        NonFiniteLossGuard(check_every_n_steps=0)


# A child process that writes a good checkpoint, then a second one during which it
# is killed at KILL_POINT: "pickling" (while torch.save serialises) or "rename" (after
# the data is written and fsynced, before os.replace).
_WRITER = textwrap.dedent(
    """
    import os, sys, time
    import torch
    from unisep.training import checkpoint_io
    from unisep.training.checkpoint_io import AtomicCheckpointIO

    path, marker, kill_point = sys.argv[1], sys.argv[2], sys.argv[3]

    def announce_and_wait():
        open(marker, "w").close()
        time.sleep(120)

    class Slow:
        def __reduce__(self):
            announce_and_wait()
            return (int, (0,))

    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "weights": torch.arange(1000.0)}, path)
    second = {"global_step": 2, "weights": torch.zeros(1000)}
    if kill_point == "pickling":
        second["slow"] = Slow()
    else:
        real_fsync = os.fsync
        def fsync_then_wait(descriptor):
            real_fsync(descriptor)
            announce_and_wait()
        checkpoint_io.os.fsync = fsync_then_wait
    io.save_checkpoint(second, path)
    """
)


@pytest.mark.parametrize("kill_point", ["pickling", "rename"])
def test_kill_during_checkpoint_write_keeps_previous(tmp_path, kill_point):
    path, marker = tmp_path / "last.ckpt", tmp_path / "writing"
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(marker), kill_point])
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, "the writer exited before the kill"
            assert time.monotonic() < deadline, "the writer never reached the second write"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()

    assert child.returncode == -signal.SIGKILL
    leftover = temporary_path(path).with_name(f".last.ckpt.tmp-{child.pid}")
    assert leftover.exists()  # the kill landed inside the second write
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["global_step"] == 1
    assert torch.equal(checkpoint["weights"], torch.arange(1000.0))

    # The next write replaces the file and removes the dead process's temporary file.
    AtomicCheckpointIO().save_checkpoint({"global_step": 3}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 3
    assert not leftover.exists()


def test_atomic_save_leaves_no_temporary_on_error(tmp_path):
    path = tmp_path / "sub" / "model.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        AtomicCheckpointIO().save_checkpoint({"bad": Unpicklable()}, path)

    assert [p.name for p in path.parent.iterdir()] == ["model.ckpt"]
    assert torch.load(path, weights_only=True) == {"global_step": 1}


def test_atomic_checkpoint_io_rejects_storage_options(tmp_path):
    with pytest.raises(TypeError, match="takes no storage_options"):
        AtomicCheckpointIO().save_checkpoint({}, tmp_path / "x.ckpt", storage_options={"a": 1})


def test_temporary_path_is_hidden_sibling(tmp_path):
    temporary = temporary_path(tmp_path / "last.ckpt")

    assert temporary.parent == tmp_path
    assert temporary.name.startswith(".last.ckpt.tmp-")
    assert Path(temporary).suffix != ".ckpt"
