"""Reconstruction losses by modality name: built-in ones and registered ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unisep.lightning_modules.losses_image import ImageReconstructionLoss
from unisep.lightning_modules.reconstruction_losses import default_reconstruction_loss, register_reconstruction_loss
from unisep.networks import ImageModality
from unisep.networks.modality import FrontEnd, Modality


class _RowModality(Modality):
    name = "test_rows"

    def __init__(self):
        self.init_args = {}

    def build_front_end(self, width: int) -> FrontEnd:
        raise NotImplementedError

    def build_decoder(self, size, latent_tokens, latent_channels) -> nn.Module:
        raise NotImplementedError


class _SquaredError(nn.Module):
    def forward(self, prediction, batch):
        loss = (prediction - batch["rows"]).pow(2).mean()
        return loss, {"mse": loss}


def test_image_modality_gets_built_in_loss():
    assert isinstance(default_reconstruction_loss(ImageModality(16, 4, 1)), ImageReconstructionLoss)


def test_registered_loss_is_built_for_its_name():
    register_reconstruction_loss("test_rows", lambda modality: _SquaredError())
    loss_fn = default_reconstruction_loss(_RowModality())
    loss, terms = loss_fn(torch.ones(2, 3), {"rows": torch.zeros(2, 3)})
    assert isinstance(loss_fn, _SquaredError)
    assert loss.item() == 1.0
    assert set(terms) == {"mse"}


def test_unregistered_modality_error_names_fix():
    modality = _RowModality()
    modality.name = "test_unregistered"
    with pytest.raises(ValueError, match="register_reconstruction_loss"):
        default_reconstruction_loss(modality)


@pytest.mark.parametrize("name", ["image", "molecule", ""])
def test_built_in_names_cannot_be_replaced(name):
    with pytest.raises(ValueError, match="cannot register"):
        register_reconstruction_loss(name, lambda modality: _SquaredError())
