"""Tests for ImageDataModule and its WebDataset pipelines."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from PIL import Image

from unisep.datamodules.image_stream import CorruptSampleError, DecodeImages, SkipCounter, val_pipeline
from unisep.datamodules.images import ImageDataModule
from unisep.datamodules.shards import ShardSetWriter, ShardsNotFoundError, resolve_shards

NUM_SAMPLES = 20
NUM_CLASSES = 4
SIZE = 4


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _sample_pixels(sample_id: int) -> np.ndarray:
    """RGB image that encodes its id in green, its label in blue and a left marker in red."""
    pixels = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    pixels[:, :, 1] = sample_id
    pixels[:, :, 2] = 60 * (sample_id % NUM_CLASSES)
    pixels[0, 0, 0] = 255  # top-left marker, moves to top-right when flipped
    return pixels


def _write_shards(folder: Path, num_samples: int = NUM_SAMPLES, per_shard: int = 5, corrupt_ids: tuple[int, ...] = ()) -> Path:
    with ShardSetWriter(
        folder, modality="image", prefix="data", max_samples_per_shard=per_shard, settings={"image_size": SIZE, "classes": ["a", "b", "c", "d"]}
    ) as writer:
        for i in range(num_samples):
            image = b"this is not a png" if i in corrupt_ids else _png(_sample_pixels(i))
            writer.write({"__key__": f"sample{i:03d}", "png": image, "cls": str(i % NUM_CLASSES)})
    return folder


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return ((images + 1) * 127.5).round().to(torch.int64)


def _ids(batch: dict[str, torch.Tensor]) -> list[int]:
    return _to_uint8(batch["image"][:, 1, 0, 0]).tolist()


def _epoch_ids(loader) -> list[int]:
    return [i for batch in loader for i in _ids(batch)]


@pytest.fixture
def shards(tmp_path) -> Path:
    return _write_shards(tmp_path / "shards")


def _module(shards: Path, **kwargs) -> ImageDataModule:
    settings = dict(
        train_shards=str(shards),
        val_shards=str(shards),
        image_size=SIZE,
        batch_size=4,
        num_workers=0,
        shuffle_buffer=8,
    )
    settings.update(kwargs)
    module = ImageDataModule(**settings)
    module.setup("fit")
    return module


def test_train_batch_shapes_dtypes_range(shards):
    batch = next(iter(_module(shards).train_dataloader()))

    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (4, 3, SIZE, SIZE)
    assert batch["image"].dtype == torch.float32
    assert batch["image"].min() >= -1.0
    assert batch["image"].max() <= 1.0
    assert batch["label"].shape == (4,)
    assert batch["label"].dtype == torch.int64


def test_labels_match_images(shards):
    for batch in _module(shards).train_dataloader():
        ids = torch.tensor(_ids(batch))
        assert torch.equal(batch["label"], ids % NUM_CLASSES)
        assert torch.equal(_to_uint8(batch["image"][:, 2, 0, 0]), 60 * batch["label"])


def test_grayscale_has_one_channel(shards):
    batch = next(iter(_module(shards, channels=1).train_dataloader()))

    assert batch["image"].shape == (4, 1, SIZE, SIZE)


def test_other_stored_size_is_resized(shards, caplog):
    with caplog.at_level(logging.WARNING):
        module = _module(shards, image_size=8)
    batch = next(iter(module.train_dataloader()))

    assert batch["image"].shape == (4, 3, 8, 8)
    assert "store 4 px images but image_size is 8" in caplog.text


@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_epoch_length_is_fixed(shards, num_workers):
    loader = _module(shards, num_workers=num_workers).train_dataloader()

    assert len(loader) == NUM_SAMPLES // 4
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == NUM_SAMPLES // 4
        assert all(b["image"].shape[0] == 4 for b in batches)


def test_train_workers_draw_different_samples(shards):
    # The DataLoader takes batch 0 from worker 0 and batch 1 from worker 1; workers
    # seeded alike would return the same sample ids in both.
    batches = list(_module(shards, num_workers=2).train_dataloader())

    assert _ids(batches[0]) != _ids(batches[1])


def test_batches_per_epoch_overrides_index(shards):
    loader = _module(shards, batches_per_epoch=7).train_dataloader()

    assert len(loader) == 7
    assert len(list(loader)) == 7


def test_default_epoch_divides_by_world_size(shards):
    module = _module(shards)
    module._rank_and_world_size = lambda: (0, 2)

    assert len(module.train_dataloader()) == NUM_SAMPLES // (4 * 2)


def test_training_order_is_seeded_per_epoch(shards):
    loader_a = _module(shards, seed=3).train_dataloader()
    loader_b = _module(shards, seed=3).train_dataloader()
    loader_c = _module(shards, seed=4).train_dataloader()

    first_a, second_a = _epoch_ids(loader_a), _epoch_ids(loader_a)
    assert _epoch_ids(loader_b) == first_a
    assert second_a != first_a
    assert _epoch_ids(loader_c) != first_a


def test_state_dict_resumes_at_next_epoch(shards):
    original = _module(shards, seed=5)
    loader = original.train_dataloader()
    _epoch_ids(loader)
    state = original.state_dict()
    expected_second_epoch = _epoch_ids(loader)

    resumed = _module(shards, seed=0)
    resumed.load_state_dict(state)

    assert state == {"seed": 5, "epoch": 1, "batches": NUM_SAMPLES // 4, "world_size": 1}
    assert resumed.seed == 5
    assert _epoch_ids(resumed.train_dataloader()) == expected_second_epoch


def test_random_flip_flips_some_images(shards):
    module = _module(shards, random_flip=True, batches_per_epoch=10)
    images = torch.cat([b["image"] for b in module.train_dataloader()])
    marker_left = images[:, 0, 0, 0] > 0
    marker_right = images[:, 0, 0, -1] > 0

    assert torch.all(marker_left ^ marker_right)
    assert 0 < int(marker_right.sum()) < len(images)


def test_no_flip_without_random_flip(shards):
    images = torch.cat([b["image"] for b in _module(shards).train_dataloader()])

    assert torch.all(images[:, 0, 0, 0] > 0)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_validation_sees_each_sample_once(shards, num_workers):
    module = _module(shards, num_workers=num_workers, val_batch_size=3)

    for _ in range(2):
        ids = _epoch_ids(module.val_dataloader())
        assert sorted(ids) == list(range(NUM_SAMPLES))


def test_validation_splits_over_ranks(shards):
    urls, _ = resolve_shards(shards)
    decoder = DecodeImages(image_size=SIZE, channels=3, corrupt="skip", counter=SkipCounter())
    per_rank = [
        _epoch_ids(val_pipeline(urls, decoder=decoder, batch_size=3, rank=rank, world_size=2)) for rank in (0, 1)
    ]

    assert set(per_rank[0]).isdisjoint(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == list(range(NUM_SAMPLES))


def test_validation_uneven_split_warns(shards, caplog):
    module = _module(shards)
    module._rank_and_world_size = lambda: (0, 3)
    with caplog.at_level(logging.WARNING):
        ids = _epoch_ids(module.val_dataloader())

    # Rank 0 of 3 reads shards 0 and 3 of the four 5-sample shards.
    assert sorted(ids) == [*range(0, 5), *range(15, 20)]
    assert "samples per rank [10, 5, 5]" in caplog.text


def test_validation_disabled_without_val_shards(shards):
    module = _module(shards, val_shards=None)

    assert module.val_dataloader() == []


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_sample_is_skipped_and_counted(tmp_path, caplog, num_workers):
    folder = _write_shards(tmp_path / "bad", corrupt_ids=(7,))
    with caplog.at_level(logging.WARNING):
        module = _module(folder, num_workers=num_workers)
        ids = _epoch_ids(module.val_dataloader())

    assert sorted(ids) == [i for i in range(NUM_SAMPLES) if i != 7]
    assert module.skipped == 1
    if num_workers == 0:  # records from worker processes do not reach caplog
        assert "sample007" in caplog.text


def test_corrupt_sample_raises_with_key(tmp_path):
    folder = _write_shards(tmp_path / "bad", corrupt_ids=(7,))
    module = _module(folder, corrupt="raise")

    with pytest.raises(CorruptSampleError, match="sample007"):
        _epoch_ids(module.val_dataloader())


def test_missing_shards_error_names_path_and_command(tmp_path):
    missing = tmp_path / "no_such_folder"
    module = ImageDataModule(train_shards=str(missing), image_size=SIZE)

    with pytest.raises(ShardsNotFoundError) as info:
        module.setup("fit")
    assert str(missing) in str(info.value)
    assert "unisep data images" in str(info.value)


def test_empty_folder_error(tmp_path):
    module = ImageDataModule(train_shards=str(tmp_path), image_size=SIZE)

    with pytest.raises(ShardsNotFoundError, match="unisep data images"):
        module.setup("fit")


def test_num_classes_before_setup(shards, tmp_path):
    assert ImageDataModule(train_shards=str(shards)).num_classes == NUM_CLASSES
    assert ImageDataModule(train_shards=str(shards)).classes == ["a", "b", "c", "d"]
    assert ImageDataModule(demo="digits", demo_root=str(tmp_path / "unused")).num_classes == 10
    assert ImageDataModule(train_shards=str(tmp_path / "missing")).num_classes is None
    assert not (tmp_path / "unused").exists()


def test_unset_train_shards_error():
    with pytest.raises(ShardsNotFoundError, match="train_shards"):
        ImageDataModule().setup("fit")


def test_pattern_without_index_needs_batches_per_epoch(shards):
    (shards / "index.json").unlink()
    module = _module(shards.parent / "shards/*.tar", val_shards=None)

    with pytest.raises(ValueError, match="batches_per_epoch"):
        module.train_dataloader()
    assert len(_module(shards.parent / "shards/*.tar", val_shards=None, batches_per_epoch=3).train_dataloader()) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": 2}, "channels"),
        ({"batch_size": 0}, "batch_size"),
        ({"corrupt": "ignore"}, "corrupt"),
        ({"demo": "mnist"}, "demo"),
        ({"demo": "digits", "train_shards": "x"}, "demo"),
        ({"num_workers": -1}, "num_workers"),
        ({"batches_per_epoch": 0}, "batches_per_epoch"),
    ],
)
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageDataModule(**kwargs)


class _MeanModel(LightningModule):
    """Fits one scalar to the mean pixel; enough to drive the Trainer's loops."""

    def __init__(self) -> None:
        super().__init__()
        self.mean = torch.nn.Parameter(torch.zeros(()))
        self.val_samples = 0

    def training_step(self, batch, batch_idx):
        return (batch["image"] - self.mean).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.val_samples += batch["image"].shape[0]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_fit_runs_fixed_epochs(shards, tmp_path):
    module = ImageDataModule(
        train_shards=str(shards), val_shards=str(shards), image_size=SIZE, batch_size=4, num_workers=0, shuffle_buffer=8
    )
    model = _MeanModel()
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=module)

    assert trainer.global_step == 2 * (NUM_SAMPLES // 4)
    assert module.epoch == 2
    assert model.val_samples == 2 * NUM_SAMPLES

    trainer.save_checkpoint(tmp_path / "last.ckpt")
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert checkpoint["ImageDataModule"] == {"seed": 0, "epoch": 2, "batches": NUM_SAMPLES // 4, "world_size": 1}
