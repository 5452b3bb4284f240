"""Thread counts: `TorchThreads` for training and `evaluation_threads` for FID."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from unisep.callbacks import torch_threads
from unisep.callbacks.torch_threads import TorchThreads, evaluation_threads


@pytest.fixture
def restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize(("cores", "processes", "expected"), [(4, 1, 4), (4, 2, 2), (3, 2, 1), (1, 4, 1)])
def test_evaluation_threads_use_process_share(monkeypatch, restore_threads, cores, processes, expected):
    monkeypatch.setattr(torch_threads, "_cores_of_this_process", lambda: cores)
    torch.set_num_threads(1)
    with evaluation_threads(SimpleNamespace(num_devices=processes), torch.device("cpu")):
        assert torch.get_num_threads() == expected
    assert torch.get_num_threads() == 1


def test_evaluation_threads_never_lower_count(monkeypatch, restore_threads):
    monkeypatch.setattr(torch_threads, "_cores_of_this_process", lambda: 4)
    torch.set_num_threads(3)
    with evaluation_threads(SimpleNamespace(num_devices=2), torch.device("cpu")):
        assert torch.get_num_threads() == 3


def test_evaluation_threads_skip_other_devices(monkeypatch, restore_threads):
    monkeypatch.setattr(torch_threads, "_cores_of_this_process", lambda: 4)
    torch.set_num_threads(1)
    with evaluation_threads(SimpleNamespace(num_devices=1), torch.device("meta")):
        assert torch.get_num_threads() == 1


def test_evaluation_threads_restore_after_error(monkeypatch, restore_threads):
    monkeypatch.setattr(torch_threads, "_cores_of_this_process", lambda: 2)
    torch.set_num_threads(1)
    with pytest.raises(RuntimeError, match="inside"):
        with evaluation_threads(SimpleNamespace(num_devices=1), torch.device("cpu")):
            raise RuntimeError("inside")
    assert torch.get_num_threads() == 1


def test_torch_threads_rejects_zero():
    with pytest.raises(ValueError, match="num_threads must be >= 1 or None, got 0"):
        TorchThreads(0)
