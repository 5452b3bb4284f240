"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch

from real_data import real_digits


@pytest.fixture
def digits_batch() -> dict[str, torch.Tensor]:
    return real_digits(16)
