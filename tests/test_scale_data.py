"""Shard assignment over ranks and workers, validation shard checks, and mid-epoch stream resume."""

from __future__ import annotations

import itertools

import pytest

from scale_helpers import sample_ids, write_image_shards, write_video_shards
from unisep.datamodules.epochs import FixedLengthEpochs, StreamPosition
from unisep.datamodules.images import ImageDataModule
from unisep.datamodules.shard_schedule import check_validation_shards, shard_draws
from unisep.datamodules.videos import VideoDataModule


def _draws(num_shards: int, reader: int, num_readers: int, count: int, epoch: int = 0) -> list[int]:
    return list(itertools.islice(shard_draws(num_shards, seed=7, epoch=epoch, reader=reader, num_readers=num_readers), count))


@pytest.mark.parametrize(("num_shards", "num_readers"), [(10, 4), (5, 2), (3, 6), (7, 7)])
def test_shard_draws_partition_each_pass(num_shards, num_readers):
    passes = 3
    total = passes * num_shards
    # Reader g takes chain positions g, g + G, ...; rebuild the chain from the readers.
    chain = [None] * total
    for reader in range(num_readers):
        positions = range(reader, total, num_readers)
        for position, shard in zip(positions, _draws(num_shards, reader, num_readers, len(positions))):
            chain[position] = shard

    for cycle in range(passes):
        one_pass = chain[cycle * num_shards : (cycle + 1) * num_shards]
        assert sorted(one_pass) == list(range(num_shards)), f"pass {cycle} is not a permutation"


def test_shard_draws_depend_on_epoch_and_seed():
    assert _draws(50, 0, 2, 20) == _draws(50, 0, 2, 20)
    assert _draws(50, 0, 2, 20) != _draws(50, 0, 2, 20, epoch=1)
    other_seed = list(itertools.islice(shard_draws(50, seed=8, epoch=0, reader=0, num_readers=2), 20))
    assert other_seed != _draws(50, 0, 2, 20)


def test_shard_draws_reject_bad_reader():
    with pytest.raises(ValueError, match=r"reader must be in \[0, 4\), got 4"):
        next(shard_draws(3, seed=0, epoch=0, reader=4, num_readers=4))
    with pytest.raises(ValueError, match="num_shards must be >= 1"):
        next(shard_draws(0, seed=0, epoch=0, reader=0, num_readers=1))


def test_validation_check_names_counts_and_fixes():
    with pytest.raises(ValueError) as error:
        check_validation_shards(
            shards="data/val", num_shards=5, num_samples=5000, world_size=2, num_workers=4, write_command="unisep data images SRC OUT"
        )
    message = str(error.value)
    assert "5 shards for 2 ranks x 4 workers = 8 readers" in message
    assert "--shard-size 625" in message
    assert "val_num_workers to at most 2" in message


def test_validation_check_fewer_shards_than_ranks():
    with pytest.raises(ValueError, match="validate on at most 1 devices"):
        check_validation_shards(shards="v", num_shards=1, num_samples=None, world_size=2, num_workers=0, write_command="w")


def test_validation_check_accepts_one_shard_per_reader():
    check_validation_shards(shards="v", num_shards=8, num_samples=None, world_size=2, num_workers=4, write_command="w")


@pytest.fixture(scope="module")
def uneven_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("uneven_images")
    # 9 training shards: with up to 4 readers each reader opens 2 or more per pass, at
    # least one of 16 samples, so an epoch of 12 samples per rank stays within one pass.
    return write_image_shards(root / "train", [16] * 8 + [1]), write_image_shards(root / "val", [9, 4, 2])


def _image_module(train, val, rank: int, world_size: int, **kwargs) -> ImageDataModule:
    settings = dict(
        train_shards=str(train), val_shards=str(val), image_size=16, channels=1, batch_size=4,
        batches_per_epoch=3, num_workers=0, shuffle_buffer=4,
    )
    settings.update(kwargs)
    module = ImageDataModule(**settings)
    module._rank_and_world_size = lambda: (rank, world_size)
    module.setup("fit")
    return module


@pytest.mark.parametrize("num_workers", [0, 2])
def test_image_ranks_equal_batches_disjoint_samples(uneven_images, num_workers):
    train, val = uneven_images
    epochs = []
    for rank in (0, 1):
        module = _image_module(train, val, rank, 2, num_workers=num_workers, val_num_workers=0)
        epochs.append([sample for batch in module.train_dataloader() for sample in sample_ids(batch)])

    assert len(epochs[0]) == len(epochs[1]) == 3 * 4
    assert set(epochs[0]).isdisjoint(epochs[1])


def test_image_validation_rejects_too_few_shards_at_setup(uneven_images):
    train, val = uneven_images

    with pytest.raises(ValueError, match="3 shards for 2 ranks x 2 workers = 4 readers"):
        _image_module(train, val, rank=0, world_size=2, val_num_workers=2)


def test_video_validation_rejects_too_few_shards_at_setup(tmp_path):
    val = write_video_shards(tmp_path / "val", [2])
    module = VideoDataModule(train_shards=str(val), val_shards=str(val), image_size=16, channels=1, clip_length=4)
    module._rank_and_world_size = lambda: (0, 2)

    with pytest.raises(ValueError, match="1 shards for 2 ranks x 1 workers = 2 readers"):
        module.setup("fit")


def test_video_ranks_equal_batches_disjoint_videos(tmp_path):
    train = write_video_shards(tmp_path / "train", [8, 8, 8, 1])
    epochs = []
    for rank in (0, 1):
        module = VideoDataModule(
            train_shards=str(train), image_size=16, channels=1, clip_length=4, batch_size=2,
            batches_per_epoch=2, num_workers=0, shuffle_buffer=2,
        )
        module._rank_and_world_size = lambda rank=rank: (rank, 2)
        module.setup("fit")
        epochs.append([video for batch in module.train_dataloader() for video in sample_ids(batch)])

    assert len(epochs[0]) == len(epochs[1]) == 2 * 2
    assert set(epochs[0]).isdisjoint(epochs[1])


def test_stream_resumes_mid_epoch_at_next_batch(uneven_images):
    train, val = uneven_images
    reference = _image_module(train, val, 0, 1, batches_per_epoch=5)
    loader = reference.train_dataloader()
    first_epoch = [sample_ids(batch) for batch in loader]
    second_epoch = [sample_ids(batch) for batch in loader]

    interrupted = _image_module(train, val, 0, 1, batches_per_epoch=5)
    batches = iter(interrupted.train_dataloader())
    served = [sample_ids(next(batches)) for _ in range(2)]
    state = interrupted.state_dict()
    resumed = _image_module(train, val, 0, 1, batches_per_epoch=5, seed=99)
    resumed.load_state_dict(state)
    loader = resumed.train_dataloader()

    assert state == {"seed": 0, "epoch": 1, "batches": 2, "world_size": 1}
    assert served == first_epoch[:2]
    assert [sample_ids(batch) for batch in loader] == first_epoch[2:]
    assert [sample_ids(batch) for batch in loader] == second_epoch


def test_stream_position_restarts_epoch_after_world_size_change(caplog):
    position = StreamPosition(epoch=3, batches=2, world_size=4)

    assert position.begin(num_batches=10, world_size=2) == (3, 0)
    assert "with 4 ranks; this run has 2 ranks" in caplog.text
    assert position.state_dict() == {"epoch": 4, "batches": 0, "world_size": 2}


def test_stream_position_reads_old_checkpoints():
    position = StreamPosition()
    position.load_state_dict({"seed": 1, "epoch": 2})

    assert position.begin(num_batches=5, world_size=1) == (2, 0)


def test_fixed_length_epochs_reject_ended_stream():
    epochs = FixedLengthEpochs(lambda epoch: iter(range(2)), num_batches=3, position=StreamPosition())

    with pytest.raises(RuntimeError, match="ended after 2 of 3 batches"):
        list(epochs)
