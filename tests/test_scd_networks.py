"""Causality, isolation, cache equivalence and input checks of the SCD and causal-DiT networks."""

from __future__ import annotations

import pytest
import torch

from unisep.networks.causal_dit import CausalDiT
from unisep.networks.frame_block import frame_causal_mask
from unisep.networks.scd import SCDNetwork, next_frame_actions
from unisep.networks.scd_presets import (
    CAUSAL_DIT_PRESETS,
    SCD_PRESETS,
    SCDSize,
    causal_dit_preset,
    matching_causal_dit,
    scd_preset,
)

GRID = (2, 3)
CHANNELS = 8
SIZE = SCDSize(width=32, heads=2, encoder_depth=2, decoder_depth=2)


def perturb_weights(module: torch.nn.Module) -> None:
    """Replace the zero-initialised adaLN and output layers by random weights.

    At initialisation every block is the identity, which would make causality tests
    pass trivially.
    """
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))


@pytest.fixture
def scd() -> SCDNetwork:
    torch.manual_seed(0)
    network = SCDNetwork(SIZE, CHANNELS, GRID, num_actions=3).eval()
    perturb_weights(network)
    return network


@pytest.fixture
def causal_dit() -> CausalDiT:
    torch.manual_seed(0)
    network = CausalDiT(CHANNELS, GRID, width=32, depth=3, heads=2, num_actions=3).eval()
    perturb_weights(network)
    return network


def tokens(batch: int = 2, frames: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, frames, GRID[0] * GRID[1], CHANNELS, generator=torch.Generator().manual_seed(seed))


def test_frame_causal_mask_blocks():
    mask = frame_causal_mask(3, 2)
    expected_frames = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected_frames.repeat_interleave(2, 0).repeat_interleave(2, 1))


def test_frame_causal_mask_after_cache():
    mask = frame_causal_mask(2, 2, cached_frames=3)
    assert mask.shape == (4, 10)
    assert mask[:, :6].all()
    assert not mask[:2, 8:].any()
    assert mask[2:, 8:].all()


def test_frame_causal_mask_is_memoised():
    assert frame_causal_mask(4, 6) is frame_causal_mask(4, 6)


def test_encoder_output_shape(scd):
    context = scd.encoder(tokens())
    assert context.shape == (2, 5, 6, SIZE.width)
    # The final norm has no gain, so the context tokens have unit RMS.
    torch.testing.assert_close(context.pow(2).mean(-1), torch.ones(2, 5, 6), atol=1e-3, rtol=0)


@pytest.mark.parametrize("changed", [0, 2, 4])
def test_encoder_is_frame_causal(scd, changed):
    x = tokens()
    actions = torch.randint(0, 3, (2, 5))
    before = scd.encoder(x, None, actions)
    x_changed = x.clone()
    x_changed[:, changed] += 1.0
    after = scd.encoder(x_changed, None, actions)
    assert torch.equal(after[:, :changed], before[:, :changed])
    assert (after[:, changed] - before[:, changed]).abs().max() > 1e-3


@pytest.mark.parametrize("changed", [1, 3])
def test_scd_prediction_is_frame_causal(scd, changed):
    """Changing frame j changes no velocity predicted for frames before j."""
    x1 = tokens()
    t = torch.rand(2, 5)
    x_t = tokens(seed=1)

    def predict(clean: torch.Tensor) -> torch.Tensor:
        context = scd.context(clean)
        return scd.decode(x_t[:, 1:], context, t[:, 1:])

    before = predict(x1)
    x_changed = x1.clone()
    x_changed[:, changed] += 1.0
    after = predict(x_changed)
    # Output index k is frame k + 1, decoded from the encoder output at frame k.
    assert torch.equal(after[:, :changed], before[:, :changed])
    assert (after[:, changed] - before[:, changed]).abs().max() > 1e-4


def test_decoder_sees_only_its_frame(scd):
    x_t = tokens(frames=4)
    context = torch.randn(2, 4, 6, SIZE.width)
    t = torch.rand(2, 4)
    before = scd.decode(x_t, context, t)
    for frame in range(4):
        x_changed, context_changed = x_t.clone(), context.clone()
        x_changed[:, frame] += 1.0
        context_changed[:, frame] += 1.0
        after = scd.decode(x_changed, context_changed, t)
        others = [index for index in range(4) if index != frame]
        assert torch.equal(after[:, others], before[:, others])
        assert (after[:, frame] - before[:, frame]).abs().max() > 1e-4


@pytest.mark.parametrize("changed", [0, 2, 4])
def test_causal_dit_is_frame_causal(causal_dit, changed):
    x_t = tokens()
    t = torch.rand(2, 5)
    before = causal_dit(x_t, t)
    x_changed = x_t.clone()
    x_changed[:, changed] += 1.0
    after = causal_dit(x_changed, t)
    assert torch.equal(after[:, :changed], before[:, :changed])
    assert (after[:, changed] - before[:, changed]).abs().max() > 1e-4


def test_cached_encoder_matches_full_pass(scd):
    x = tokens(frames=6)
    actions = torch.randint(0, 4, (2, 6))
    full = scd.encoder(x, None, actions)
    cache = scd.new_cache(batch=2, max_frames=6)
    prefill = scd.encoder(x[:, :3], None, actions[:, :3], cache)
    steps = [scd.encoder(x[:, f : f + 1], None, actions[:, f : f + 1], cache) for f in range(3, 6)]
    torch.testing.assert_close(torch.cat([prefill, *steps], dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.num_frames == 6


def test_causal_dit_scratch_step_does_not_grow_cache(causal_dit):
    x = tokens(frames=3)
    t = torch.ones(2, 3)
    cache = causal_dit.new_cache(batch=2, max_frames=4)
    causal_dit(x[:, :2], t[:, :2], cache=cache, commit=True)
    keys_before = cache.keys[:, :, :, : cache.length].clone()
    scratch = causal_dit(x[:, 2:], torch.full((2, 1), 0.3), cache=cache)
    assert cache.num_frames == 2
    assert torch.equal(cache.keys[:, :, :, : cache.length], keys_before)
    full = causal_dit(x, torch.cat([t[:, :2], torch.full((2, 1), 0.3)], dim=1))
    torch.testing.assert_close(scratch, full[:, 2:], atol=1e-5, rtol=1e-5)


def test_next_frame_actions_shift():
    actions = torch.tensor([[0, 1, 2, 3]])
    assert next_frame_actions(actions).tolist() == [[1, 2, 3, 3]]
    assert next_frame_actions(None) is None


def test_gradients_reach_encoder_and_decoder(scd):
    scd.train()
    x1 = tokens()
    context = scd.context(x1)
    v = scd.decode(tokens(seed=2)[:, 1:], context, torch.rand(2, 4))
    v.square().mean().backward()
    assert scd.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert scd.decoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_wrong_token_shape_raises(scd, causal_dit):
    bad = torch.randn(2, 4, 7, CHANNELS)
    with pytest.raises(ValueError, match=r"expected frame tokens \(batch, frames, 6, 8\)"):
        scd.encoder(bad)
    with pytest.raises(ValueError, match=r"expected frame tokens"):
        causal_dit(bad, torch.rand(2, 4))
    with pytest.raises(ValueError, match="expected noisy tokens"):
        scd.decoder(torch.randn(2, 6, 5), torch.randn(2, 6, SIZE.width), torch.rand(2))


def test_actions_without_action_embedding_raise():
    network = SCDNetwork(SIZE, CHANNELS, GRID, num_actions=0)
    with pytest.raises(ValueError, match="num_actions=0"):
        network.encoder(tokens(), None, torch.zeros(2, 5, dtype=torch.long))


def test_single_frame_clip_raises(scd):
    with pytest.raises(ValueError, match="at least 2 frames"):
        scd.context(tokens(frames=1))


def test_presets_pair_with_causal_dit():
    assert scd_preset("scd_m") == SCDSize(width=1024, heads=16, encoder_depth=8, decoder_depth=4)
    for name, size in SCD_PRESETS.items():
        twin = CAUSAL_DIT_PRESETS[name.replace("scd_", "causal_dit_")]
        assert twin == matching_causal_dit(size)
        assert twin.depth == size.encoder_depth + size.decoder_depth
    assert causal_dit_preset("causal_dit_m").depth == 12


def test_unknown_preset_and_override_raise():
    with pytest.raises(ValueError, match="unknown SCD preset 'scd_x'"):
        scd_preset("scd_x")
    with pytest.raises(ValueError, match=r"override\(s\) \['depth'\]"):
        scd_preset("scd_m", depth=3)


def test_scd_m_parameter_count():
    with torch.device("meta"):
        network = SCDNetwork(scd_preset("scd_m"), token_channels=32, grid=(8, 8))
        baseline = CausalDiT(32, (8, 8), width=1024, depth=12, heads=16)
    total = sum(p.numel() for p in network.parameters())
    # 12 blocks of about 18.9M parameters each (attention 4.2M, SwiGLU 8.4M, adaLN 6.3M).
    assert 200e6 < total < 240e6
    baseline_total = sum(p.numel() for p in baseline.parameters())
    assert abs(total - baseline_total) / baseline_total < 0.02
