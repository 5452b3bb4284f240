"""Tests for the molecule modality networks, its reconstruction loss and its presets."""

from __future__ import annotations

import pytest
import torch

from unisep.lightning_modules.losses_molecule import MoleculeReconstructionLoss
from unisep.lightning_modules.reconstruction_losses import default_reconstruction_loss
from unisep.networks import UniteNetwork, unite_preset
from unisep.networks.modality import DecoderSize, modality_from_config
from unisep.networks.molecule import AtomDecoder, MoleculeModality, centre_positions

PADDING = 5


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def molecule_batch(batch_size: int = 4, max_atoms: int = 29, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random molecules with 3 to 12 atoms, in the data module's batch format."""
    generator = torch.Generator().manual_seed(seed)
    counts = torch.randint(3, 13, (batch_size,), generator=generator)
    mask = torch.arange(max_atoms)[None] < counts[:, None]
    elements = torch.randint(0, PADDING, (batch_size, max_atoms), generator=generator)
    elements = torch.where(mask, elements, torch.full_like(elements, PADDING))
    positions = centre_positions(torch.randn(batch_size, max_atoms, 3, generator=generator) * 1.5, mask)
    return {"elements": elements, "positions": positions, "mask": mask, "label": torch.zeros(batch_size, dtype=torch.long)}


def tiny_network() -> UniteNetwork:
    torch.manual_seed(0)
    return UniteNetwork(unite_preset("unite_tiny_qm9"), MoleculeModality(), num_classes=1)


# --------------------------------------------------------------------------- presets


def test_unite_small_qm9_parameter_count():
    with torch.device("meta"):
        network = UniteNetwork(unite_preset("unite_small_qm9"), MoleculeModality(), num_classes=1)

    # The GE has the DiT-S shape; UNITE-S is described as about 33M parameters.
    assert abs(count(network.encoder) - 33e6) / 33e6 < 0.02
    assert count(network) == 36_182_457
    assert network.size.latent_tokens == 29
    assert network.size.latent_channels == 16


def test_unite_tiny_qm9_parameter_count():
    assert count(tiny_network()) == 1_711_689


# ---------------------------------------------------------------------- front end, decoder


def test_network_shapes():
    network = tiny_network()
    batch = molecule_batch()

    z0 = network.tokenize(batch)
    output = network.decode(z0)

    assert z0.shape == (4, 29, 8)
    assert output["element_logits"].shape == (4, 29, 6)
    assert output["positions"].shape == (4, 29, 3)


def test_padding_slots_do_not_change_latent():
    network = tiny_network()
    network.eval()
    batch = molecule_batch()
    changed = dict(batch, positions=batch["positions"].clone(), elements=batch["elements"].clone())
    changed["positions"][~batch["mask"]] = 50.0
    changed["elements"][~batch["mask"]] = 1

    z_a = network.tokenize(batch, generator=torch.Generator().manual_seed(1))
    z_b = network.tokenize(changed, generator=torch.Generator().manual_seed(1))

    assert torch.allclose(z_a, z_b, atol=1e-5)


def test_front_end_translation_invariant():
    front_end = MoleculeModality().build_front_end(64)
    batch = molecule_batch()
    shifted = dict(batch, positions=batch["positions"] + torch.tensor([3.0, -1.0, 2.0]))

    tokens, mask = front_end(batch)
    shifted_tokens, _ = front_end(shifted)

    assert torch.allclose(tokens[mask], shifted_tokens[mask], atol=1e-5)
    assert torch.equal(mask, batch["mask"])


def test_front_end_rejects_wrong_atom_count():
    front_end = MoleculeModality(max_atoms=29).build_front_end(64)
    with pytest.raises(ValueError, match="max_atoms"):
        front_end(molecule_batch(max_atoms=20))


def test_decoder_with_fewer_latents_than_atoms():
    decoder = AtomDecoder(DecoderSize(32, 1, 4), latent_tokens=8, latent_channels=4, num_elements=5, max_atoms=29, position_scale=1.0)
    output = decoder(torch.randn(2, 8, 4))

    assert output["element_logits"].shape == (2, 29, 6)
    assert output["positions"].shape == (2, 29, 3)


def test_postprocess_marks_predicted_atoms():
    modality = MoleculeModality()
    logits = torch.full((1, 4, 6), -10.0)
    for slot, element in enumerate([1, 0, PADDING, PADDING]):
        logits[0, slot, element] = 10.0
    output = modality.postprocess({"element_logits": logits, "positions": torch.zeros(1, 4, 3)})

    assert output["elements"].tolist() == [[1, 0, PADDING, PADDING]]
    assert output["mask"].tolist() == [[True, True, False, False]]
    assert torch.allclose(output["probabilities"].sum(-1), torch.ones(1, 4))


def test_modality_config_round_trip():
    modality = MoleculeModality(elements=["H", "C", "S"], max_atoms=40, position_scale=2.0)
    rebuilt = modality_from_config(modality.config())

    assert rebuilt.elements == ("H", "C", "S")
    assert rebuilt.max_atoms == 40
    assert rebuilt.position_scale == 2.0


def test_modality_rejects_bad_arguments():
    with pytest.raises(ValueError, match="distinct"):
        MoleculeModality(elements=["H", "H"])
    with pytest.raises(ValueError, match="max_atoms"):
        MoleculeModality(max_atoms=0)
    with pytest.raises(ValueError, match="position_scale"):
        MoleculeModality(position_scale=0.0)


# ----------------------------------------------------------------------------- loss


def perfect_prediction(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    logits = torch.nn.functional.one_hot(batch["elements"], PADDING + 1).float() * 30.0
    return {"element_logits": logits, "positions": batch["positions"].clone()}


def test_loss_zero_for_perfect_prediction():
    loss_fn = default_reconstruction_loss(MoleculeModality())
    batch = molecule_batch()

    loss, terms = loss_fn(perfect_prediction(batch), batch)

    assert isinstance(loss_fn, MoleculeReconstructionLoss)
    assert loss.item() < 1e-6
    assert terms["element_accuracy"].item() == 1.0
    assert terms["position_rmse"].item() < 1e-6


def test_loss_ignores_translation_and_padding():
    loss_fn = MoleculeReconstructionLoss(PADDING)
    batch = molecule_batch()
    prediction = perfect_prediction(batch)
    prediction["positions"] = prediction["positions"] + torch.tensor([1.0, 2.0, 3.0])
    prediction["positions"][~batch["mask"]] = 100.0

    _, terms = loss_fn(prediction, batch)

    assert terms["position_mse"].item() < 1e-10


def test_loss_not_rotation_invariant():
    loss_fn = MoleculeReconstructionLoss(PADDING)
    batch = molecule_batch()
    prediction = perfect_prediction(batch)
    rotation = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    prediction["positions"] = prediction["positions"] @ rotation.T

    _, terms = loss_fn(prediction, batch)

    assert terms["position_mse"].item() > 0.1


def test_loss_counts_padding_class():
    loss_fn = MoleculeReconstructionLoss(PADDING)
    batch = molecule_batch()
    prediction = perfect_prediction(batch)
    # Predict an atom on the first empty slot of every molecule.
    first_empty = batch["mask"].sum(dim=1)
    prediction["element_logits"][torch.arange(4), first_empty] = torch.nn.functional.one_hot(torch.tensor(1), 6).float() * 30.0

    _, terms = loss_fn(prediction, batch)

    assert terms["element_ce"].item() > 0.1
    assert terms["element_accuracy"].item() == pytest.approx(1 - 4 / (4 * 29))


def test_loss_position_scale_units():
    batch = molecule_batch()
    prediction = perfect_prediction(batch)
    prediction["positions"][:, 0, 0] += 1.0

    _, in_angstrom = MoleculeReconstructionLoss(PADDING, position_scale=1.0)(prediction, batch)
    _, in_nanometre = MoleculeReconstructionLoss(PADDING, position_scale=10.0)(prediction, batch)

    assert in_angstrom["position_mse"].item() == pytest.approx(100 * in_nanometre["position_mse"].item(), rel=1e-5)
    assert in_angstrom["position_rmse"].item() == pytest.approx(in_nanometre["position_rmse"].item(), rel=1e-6)


def test_loss_gradients_reach_decoder_and_encoder():
    network = tiny_network()
    batch = molecule_batch()
    loss_fn = default_reconstruction_loss(MoleculeModality())

    loss, _ = loss_fn(network.decode(network.tokenize(batch)), batch)
    loss.backward()

    assert network.decoder.position_head.weight.grad.abs().sum() > 0
    assert network.decoder.element_head.weight.grad.abs().sum() > 0
    # The GE's output layer starts at zero (adaLN-Zero), so its own weights get the gradient first.
    assert network.encoder.final_layer.linear.weight.grad.abs().sum() > 0


def test_loss_rejects_mismatched_shapes():
    loss_fn = MoleculeReconstructionLoss(PADDING)
    batch = molecule_batch()
    prediction = perfect_prediction(batch)
    with pytest.raises(ValueError, match="element classes"):
        loss_fn({**prediction, "element_logits": prediction["element_logits"][..., :4]}, batch)
    with pytest.raises(ValueError, match="do not match"):
        loss_fn({**prediction, "positions": prediction["positions"][:, :10]}, batch)
