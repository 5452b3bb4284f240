"""Shapes, parameter counts and gradient paths of the UNITE networks."""

from __future__ import annotations

import pytest
import torch

from unisep.lightning_modules.losses_image import ImageReconstructionLoss
from unisep.lightning_modules.unite_loss import UniteLoss
from unisep.networks import ImageModality, UniteNetwork, unite_preset


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny_network(**kwargs) -> UniteNetwork:
    torch.manual_seed(0)
    return UniteNetwork(unite_preset("unite_tiny"), ImageModality(16, 4, 1), num_classes=10, **kwargs)


def randomize_outputs(network: UniteNetwork) -> None:
    """Give the zero-initialised output layers random weights, so gradients can flow."""
    for encoder in (network.encoder, network.denoiser):
        if encoder is None:
            continue
        for module in [encoder.final_layer.linear, encoder.final_layer.modulation[-1]] + [
            block.modulation[-1] for block in encoder.blocks
        ]:
            torch.nn.init.normal_(module.weight, std=0.02)


def test_unite_base_parameter_count():
    with torch.device("meta"):
        network = UniteNetwork(unite_preset("unite_base"), ImageModality(256, 16, 3), num_classes=1000)
    total = count(network)
    # Published counts of the authors' UNITE-B: 217.64M in all, 130.59M GE, 86.24M decoder.
    assert abs(total - 217.64e6) / 217.64e6 < 0.01
    assert abs(count(network.encoder) - 130.59e6) / 130.59e6 < 0.01
    assert abs(count(network.decoder) - 86.24e6) / 86.24e6 < 0.01
    assert network.denoiser is None


def test_separate_denoiser_doubles_encoder():
    network = tiny_network(separate_denoiser=True)
    assert network.denoiser is not None
    assert count(network.denoiser) == count(network.encoder)
    assert network.generator_encoder is network.denoiser


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match="unite_base"):
        unite_preset("unite_huge")
    with pytest.raises(ValueError, match="unknown preset override"):
        unite_preset("unite_tiny", depht=3)


def test_modes_shapes(digits_batch):
    network = tiny_network()
    z0 = network.tokenize(digits_batch)
    assert z0.shape == (16, 16, 8)
    x_pred = network.denoise(torch.randn_like(z0), torch.rand(16), digits_batch["label"])
    assert x_pred.shape == z0.shape
    assert network.decode(z0).shape == (16, 1, 16, 16)


def test_tokenize_ignores_label(digits_batch):
    network = tiny_network()
    randomize_outputs(network)
    network.eval()
    other = dict(digits_batch, label=(digits_batch["label"] + 3) % 10)
    z_a = network.tokenize(digits_batch, generator=torch.Generator().manual_seed(1))
    z_b = network.tokenize(other, generator=torch.Generator().manual_seed(1))
    assert torch.equal(z_a, z_b)


def test_generate_mode_uses_label(digits_batch):
    network = tiny_network()
    randomize_outputs(network)
    network.eval()
    x = torch.randn(16, 16, 8)
    t = torch.full((16,), 0.5)
    labels = digits_batch["label"]
    assert not torch.allclose(network.denoise(x, t, labels), network.denoise(x, t, (labels + 3) % 10))


def test_decoder_interpolates_latent_count():
    torch.manual_seed(0)
    network = UniteNetwork(
        unite_preset("unite_tiny", latent_tokens=8), ImageModality(16, 4, 1), num_classes=10
    )
    assert network.decode(torch.randn(2, 8, 8)).shape == (2, 1, 16, 16)


def _flow_gradient_on_front_end(stop_gradient: bool, batch) -> float:
    network = tiny_network()
    randomize_outputs(network)
    loss = UniteLoss(ImageReconstructionLoss(), labels_fn=lambda b: b["label"], stop_gradient=stop_gradient)
    z0 = network.tokenize(batch)
    z = z0.detach() if loss.stop_gradient else z0
    loss.flow_loss(network, z, batch["label"]).backward()
    grads = [p.grad for p in network.front_end.parameters()]
    return sum(float(g.abs().sum()) for g in grads if g is not None)


def test_stop_gradient_blocks_flow_into_tokenizer(digits_batch):
    assert _flow_gradient_on_front_end(True, digits_batch) == 0.0
    assert _flow_gradient_on_front_end(False, digits_batch) > 0.0


def test_full_loss_reaches_all_trainable_parts(digits_batch):
    network = tiny_network()
    randomize_outputs(network)
    loss_fn = UniteLoss(ImageReconstructionLoss(), labels_fn=lambda b: b["label"])
    loss, terms = loss_fn(network, digits_batch)
    loss.backward()
    for name in ("front_end", "decoder", "latent_norm"):
        grads = [p.grad for p in getattr(network, name).parameters()]
        assert all(g is not None for g in grads), name
    assert network.register_pos.grad is not None
    assert set(terms) >= {"recon/l1", "flow", "latent/batch_std", "loss"}


def test_flow_loss_sums_passes(digits_batch):
    network = tiny_network()
    randomize_outputs(network)
    z = network.tokenize(digits_batch).detach()
    labels = digits_batch["label"]
    one = UniteLoss(ImageReconstructionLoss(), labels_fn=None, denoising_passes=1)
    four = UniteLoss(ImageReconstructionLoss(), labels_fn=None, denoising_passes=4, chunk_size=3)
    with torch.no_grad():
        torch.manual_seed(0)
        single = torch.stack([one.flow_loss(network, z, labels) for _ in range(16)]).mean()
        torch.manual_seed(0)
        summed = torch.stack([four.flow_loss(network, z, labels) for _ in range(4)]).mean()
    # Each copy contributes its batch mean, so four passes weigh about four times one.
    assert 3.0 < float(summed / single) < 5.0


def test_flow_weight_warmup():
    loss = UniteLoss(ImageReconstructionLoss(), labels_fn=None, flow_weight=1.0, flow_weight_warmup_steps=100)
    assert loss.flow_weight_at(0) == 0.0
    assert loss.flow_weight_at(49) == 0.0
    assert 0.0 < loss.flow_weight_at(75) < 1.0
    assert loss.flow_weight_at(100) == 1.0


def test_latent_noise_modes():
    z0 = torch.randn(64, 4, 8)
    for mode in ("code", "paper"):
        augmented = UniteLoss(ImageReconstructionLoss(), labels_fn=None, latent_noise=mode).augment(z0)
        assert augmented.shape == z0.shape
        assert not torch.equal(augmented, z0)
    none = UniteLoss(ImageReconstructionLoss(), labels_fn=None, latent_noise="none").augment(z0)
    assert torch.equal(none, z0)
    with pytest.raises(ValueError):
        UniteLoss(ImageReconstructionLoss(), labels_fn=None, latent_noise="gaussian")
