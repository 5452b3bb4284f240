"""Lightning's rich progress bar without the negative epoch count of step-limited runs."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class StepLimitedRichProgressBar(RichProgressBar):
    """`RichProgressBar` that labels the bar `Epoch 7` when the epoch count is unlimited.

    A run limited by `max_steps` has `max_epochs = -1`, which Lightning 2.6 prints as
    `Epoch 7/-2`. Runs with a set `max_epochs` keep Lightning's `Epoch 7/9`. The
    override is of a private method, `_get_train_description`, so it is checked by a test.
    """

    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        description = f"Epoch {current_epoch}"
        # Same padding as Lightning, so the bar does not shift when validation starts.
        return f"{description:{len(self.validation_description)}}"
