"""The rich progress bar label of step-limited and epoch-limited runs."""

from __future__ import annotations

from types import SimpleNamespace

from lightning.pytorch.callbacks import RichProgressBar

from unisep.callbacks.progress_bar import StepLimitedRichProgressBar


def label(bar: RichProgressBar, max_epochs: int | None) -> str:
    bar._trainer = SimpleNamespace(max_epochs=max_epochs)
    return bar._get_train_description(7).strip()


def test_step_limited_run_shows_epoch_only():
    assert label(StepLimitedRichProgressBar(), -1) == "Epoch 7"


def test_epoch_limited_run_keeps_lightning_label():
    assert label(StepLimitedRichProgressBar(), 10) == "Epoch 7/9"


def test_lightning_still_prints_negative_count():
    # If Lightning fixes its label, this fails and the subclass can go.
    assert label(RichProgressBar(), -1) == "Epoch 7/-2"
