"""Frame tokenizers: patch round trip, TorchScript autoencoder, UNITE checkpoint, config round trip."""

from __future__ import annotations

import lightning
import pytest
import torch
from torch import nn

from unisep.lightning_modules.unite_tokenizer import UniteTokenizer, token_grid
from unisep.networks.frame_tokenizer import PatchTokenizer, TorchScriptTokenizer, tokenizer_from_config


def test_patch_tokenizer_round_trip_is_exact():
    tokenizer = PatchTokenizer(image_size=16, channels=3, patch_size=4)
    frames = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    tokens = tokenizer.encode(frames)
    assert tokens.shape == (2, 3, 16, 48)
    assert tokenizer.grid == (4, 4)
    assert tokenizer.tokens_per_frame == 16
    assert tokenizer.token_channels == 48
    assert torch.equal(tokenizer.decode(tokens), frames)


def test_patch_tokens_are_row_major_patches():
    tokenizer = PatchTokenizer(image_size=4, channels=1, patch_size=2)
    frame = torch.arange(16.0).view(1, 1, 1, 4, 4)
    tokens = tokenizer.encode(frame)[0, 0]
    assert tokens[0].tolist() == [0.0, 1.0, 4.0, 5.0]  # top-left patch
    assert tokens[1].tolist() == [2.0, 3.0, 6.0, 7.0]  # top-right patch


def test_tokenizer_rejects_wrong_frame_size():
    tokenizer = PatchTokenizer(image_size=16, channels=1, patch_size=4)
    with pytest.raises(ValueError, match=r"expected frames \(batch, frames, 1, 16, 16\), got \(2, 3, 1, 32, 32\)"):
        tokenizer.encode(torch.zeros(2, 3, 1, 32, 32))


def test_tokenizer_config_round_trip():
    tokenizer = PatchTokenizer(image_size=8, channels=1, patch_size=2)
    rebuilt = tokenizer_from_config(tokenizer.config())
    assert isinstance(rebuilt, PatchTokenizer)
    assert rebuilt.config() == tokenizer.config()


class TinyAutoencoder(nn.Module):
    """A 2x down-sampling convolutional autoencoder with the scripted interface."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 4, kernel_size=2, stride=2)
        self.up = nn.ConvTranspose2d(4, 3, kernel_size=2, stride=2)

    @torch.jit.export
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(x)

    @torch.jit.export
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.up(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def test_torchscript_tokenizer(tmp_path):
    torch.manual_seed(0)
    model = TinyAutoencoder()
    path = tmp_path / "ae.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    tokenizer = TorchScriptTokenizer(str(path), image_size=8, channels=3, scale=2.0, shift=0.5)
    assert tokenizer.grid == (4, 4)
    assert tokenizer.token_channels == 4

    frames = torch.rand(2, 3, 3, 8, 8) * 2 - 1
    tokens = tokenizer.encode(frames)
    assert tokens.shape == (2, 3, 16, 4)
    latent = model.encode(frames[0, 0:1])
    expected = ((latent - 0.5) * 2.0).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens[0, 0:1], expected)
    # decode undoes the normalisation before the autoencoder's decoder.
    torch.testing.assert_close(tokenizer.decode(tokens)[0, 0:1], model.decode(latent), atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in tokenizer.parameters())


def test_torchscript_tokenizer_missing_file(tmp_path):
    missing = tmp_path / "nothing.pt"
    with pytest.raises(FileNotFoundError, match=f"frame autoencoder file not found: {missing}"):
        TorchScriptTokenizer(str(missing), image_size=8)


def test_token_grid():
    assert token_grid(16) == (4, 4)
    assert token_grid(12) == (1, 12)


def test_unite_tokenizer_from_tiny_checkpoint(tmp_path):
    from unisep.lightning_modules.unite import UNITE
    from unisep.networks import ImageModality

    torch.manual_seed(0)
    unite = UNITE(modality=ImageModality(image_size=16, patch_size=4, channels=1), preset="unite_tiny", num_classes=10)
    path = tmp_path / "unite.ckpt"
    torch.save(
        {
            "state_dict": unite.state_dict(),
            "hyper_parameters": dict(unite.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    tokenizer = UniteTokenizer(str(path))
    assert tokenizer.grid == (4, 4)  # unite_tiny: 16 latent tokens of 8 channels
    assert tokenizer.token_channels == 8
    frames = torch.rand(1, 2, 1, 16, 16) * 2 - 1
    tokens = tokenizer.encode(frames)
    assert tokens.shape == (1, 2, 16, 8)
    assert tokenizer.decode(tokens).shape == (1, 2, 1, 16, 16)


def test_unite_tokenizer_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="UNITE checkpoint not found"):
        UniteTokenizer(str(tmp_path / "missing.ckpt"))
