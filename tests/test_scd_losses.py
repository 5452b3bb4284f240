"""Per-frame noising, prediction targets and the SCD / causal-DiT loss objects."""

from __future__ import annotations

import pytest
import torch

from unisep.flow import interpolate
from unisep.lightning_modules.causal_dit_loss import CausalDiTLoss
from unisep.lightning_modules.frame_noise import Prediction, noise_frames, output_to_velocity
from unisep.lightning_modules.scd_loss import SCDLoss
from unisep.networks.causal_dit import CausalDiT
from unisep.networks.scd import SCDNetwork
from unisep.networks.scd_presets import SCDSize

GRID = (2, 2)
CHANNELS = 6


def clip(batch: int = 3, frames: int = 5) -> torch.Tensor:
    return torch.randn(batch, frames, 4, CHANNELS, generator=torch.Generator().manual_seed(0))


def tiny_scd() -> SCDNetwork:
    torch.manual_seed(0)
    network = SCDNetwork(SCDSize(width=32, heads=2, encoder_depth=2, decoder_depth=1), CHANNELS, GRID)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return network


def test_noise_frames_keeps_clean_frames_exact():
    torch.manual_seed(0)
    x1 = clip(batch=64)
    draw = noise_frames(x1, clean_frame_prob=0.3)
    clean = ~draw.noised
    assert draw.t.shape == (64, 5)
    assert torch.all(draw.t[clean] == 1.0)
    assert torch.equal(draw.x_t[clean], x1[clean])
    assert 0.15 < clean.float().mean() < 0.45
    assert torch.all((draw.t[draw.noised] > 0) & (draw.t[draw.noised] < 1))


def test_noise_frames_follows_the_flow_path():
    torch.manual_seed(0)
    x1 = clip()
    draw = noise_frames(x1, clean_frame_prob=0.0)
    assert draw.noised.all()
    noise = x1 - draw.target
    expected = interpolate(x1.flatten(0, 1), noise.flatten(0, 1), draw.t.flatten()).view_as(x1)
    torch.testing.assert_close(draw.x_t, expected)


def test_noise_frames_rejects_bad_probability():
    with pytest.raises(ValueError, match=r"clean_frame_prob must be in \[0, 1\), got 1.0"):
        noise_frames(clip(), clean_frame_prob=1.0)


def test_exact_x_prediction_gives_target_velocity():
    torch.manual_seed(0)
    x1 = clip()
    draw = noise_frames(x1, clean_frame_prob=0.0, timestep_std=0.5)
    keep = draw.t < 0.95  # 1 - t is clamped at 0.05 above
    velocity = output_to_velocity(x1, draw.x_t, draw.t, Prediction.X)
    torch.testing.assert_close(velocity[keep], draw.target[keep], atol=1e-4, rtol=1e-4)
    assert output_to_velocity(x1, draw.x_t, draw.t, "velocity") is x1


@pytest.mark.parametrize("prediction", ["velocity", "x"])
def test_scd_loss_terms_and_gradients(prediction):
    network = tiny_scd()
    loss, terms = SCDLoss(decoder_passes=2, prediction=prediction)(network, {"tokens": clip()})
    assert set(terms) == {"loss", "noised_frames", "loss_pass0", "loss_pass1"}
    assert torch.isfinite(loss)
    torch.testing.assert_close(terms["loss"], (terms["loss_pass0"] + terms["loss_pass1"]) / 2)
    loss.backward()
    assert network.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert network.decoder.blocks[0].mlp.w3.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("encoder_input", ["noised", "clean"])
def test_scd_loss_encoder_input(encoder_input, monkeypatch):
    network = tiny_scd()
    x1 = clip()
    seen = {}
    original = network.context

    def recording_context(tokens, actions=None, t=None):
        seen["tokens"] = tokens
        seen["t"] = t
        return original(tokens, actions, t)

    monkeypatch.setattr(network, "context", recording_context)
    SCDLoss(encoder_input=encoder_input, clean_frame_prob=0.0)(network, {"tokens": x1})
    # The encoder's timestep embedding always receives "clean" (t = None means t = 1).
    assert seen["t"] is None
    if encoder_input == "clean":
        assert torch.equal(seen["tokens"], x1)
    else:
        assert not torch.equal(seen["tokens"], x1)


def test_scd_loss_rejects_bad_settings():
    with pytest.raises(ValueError, match="decoder_passes must be >= 1"):
        SCDLoss(decoder_passes=0)
    with pytest.raises(ValueError, match="'sideways' is not a valid EncoderInput"):
        SCDLoss(encoder_input="sideways")
    with pytest.raises(ValueError, match=r"frames >= 2"):
        SCDLoss()(tiny_scd(), {"tokens": clip(frames=1)})


def test_causal_dit_loss_trains_every_layer():
    torch.manual_seed(0)
    network = CausalDiT(CHANNELS, GRID, width=32, depth=2, heads=2)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    loss, terms = CausalDiTLoss(prediction="x")(network, {"tokens": clip()})
    assert set(terms) == {"loss", "noised_frames"}
    loss.backward()
    assert all(block.attn.qkv.weight.grad.abs().sum() > 0 for block in network.blocks)
