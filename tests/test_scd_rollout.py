"""KV-cached rollouts: equal to full recomputation, one cached frame per step, input checks."""

from __future__ import annotations

import pytest
import torch

from unisep.lightning_modules.video_rollout import causal_dit_rollout, scd_rollout
from unisep.networks.causal_dit import CausalDiT
from unisep.networks.kv_cache import KVCache
from unisep.networks.scd import SCDNetwork
from unisep.networks.scd_presets import SCDSize

GRID = (2, 2)
CHANNELS = 6
NUM_ACTIONS = 3


def perturb_weights(module: torch.nn.Module) -> None:
    """Randomise the zero-initialised layers so that every block does real work."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))


@pytest.fixture
def scd() -> SCDNetwork:
    torch.manual_seed(0)
    network = SCDNetwork(SCDSize(width=32, heads=2, encoder_depth=2, decoder_depth=1), CHANNELS, GRID, NUM_ACTIONS)
    perturb_weights(network)
    return network.eval()


@pytest.fixture
def causal_dit() -> CausalDiT:
    torch.manual_seed(0)
    network = CausalDiT(CHANNELS, GRID, width=32, depth=3, heads=2, num_actions=NUM_ACTIONS)
    perturb_weights(network)
    return network.eval()


def context(frames: int = 3) -> torch.Tensor:
    return torch.randn(2, frames, GRID[0] * GRID[1], CHANNELS, generator=torch.Generator().manual_seed(0))


def actions(total_frames: int) -> torch.Tensor:
    return torch.randint(0, NUM_ACTIONS, (2, total_frames), generator=torch.Generator().manual_seed(0))


def run(rollout, network, use_cache: bool, **options) -> torch.Tensor:
    frames = rollout(network, context(), 4, steps=3, generator=torch.Generator().manual_seed(5), use_cache=use_cache, **options)
    return torch.stack(list(frames), dim=1)


@pytest.mark.parametrize("guidance_scale", [1.0, 1.5])
@pytest.mark.parametrize("with_actions", [False, True])
def test_scd_cached_rollout_equals_recompute(scd, guidance_scale, with_actions):
    options = dict(guidance_scale=guidance_scale, actions=actions(7) if with_actions else None)
    cached = run(scd_rollout, scd, True, **options)
    recomputed = run(scd_rollout, scd, False, **options)
    assert cached.shape == (2, 4, 4, CHANNELS)
    torch.testing.assert_close(cached, recomputed, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("guidance_scale", [1.0, 2.0])
def test_causal_dit_cached_rollout_equals_recompute(causal_dit, guidance_scale):
    options = dict(guidance_scale=guidance_scale, actions=actions(7))
    cached = run(causal_dit_rollout, causal_dit, True, **options)
    recomputed = run(causal_dit_rollout, causal_dit, False, **options)
    torch.testing.assert_close(cached, recomputed, atol=1e-5, rtol=1e-5)


def test_causal_dit_unconditional_rollout_equals_recompute(causal_dit):
    torch.testing.assert_close(run(causal_dit_rollout, causal_dit, True), run(causal_dit_rollout, causal_dit, False), atol=1e-5, rtol=1e-5)


def capture_caches(network, monkeypatch) -> list[KVCache]:
    caches: list[KVCache] = []
    original = network.new_cache

    def recording_new_cache(*args, **kwargs):
        cache = original(*args, **kwargs)
        caches.append(cache)
        return cache

    monkeypatch.setattr(network, "new_cache", recording_new_cache)
    return caches


@pytest.mark.parametrize("model", ["scd", "causal_dit"])
def test_cache_grows_one_frame_per_step(model, scd, causal_dit, monkeypatch):
    network, rollout = (scd, scd_rollout) if model == "scd" else (causal_dit, causal_dit_rollout)
    caches = capture_caches(network, monkeypatch)
    frames = rollout(network, context(3), 4, steps=2, generator=torch.Generator().manual_seed(0))
    tokens_per_frame = GRID[0] * GRID[1]
    previous_keys = None
    for step, _frame in enumerate(frames):
        (cache,) = caches
        # When frame `step` is yielded, the context and the frames before it are cached.
        assert cache.num_frames == 3 + step
        assert cache.length == (3 + step) * tokens_per_frame
        committed = cache.keys[:, :, :, : cache.length]
        for layer in range(cache.num_layers):
            # The newest frame's keys were written in every layer.
            assert committed[layer, :, :, -tokens_per_frame:].abs().sum() > 0
        if previous_keys is not None:
            # Past frames are never recomputed or moved.
            assert torch.equal(committed[:, :, :, : previous_keys.shape[3]], previous_keys)
        previous_keys = committed.clone()
    assert caches[0].max_frames == 3 + 4


def test_kv_cache_update_and_commit():
    cache = KVCache(num_layers=2, batch=1, heads=2, head_dim=4, tokens_per_frame=3, max_frames=2)
    k, v = torch.ones(1, 2, 3, 4), torch.full((1, 2, 3, 4), 2.0)
    keys, values = cache.update(0, k, v)
    assert keys.shape == (1, 2, 3, 4)
    assert cache.length == 0
    cache.commit(3)
    keys, values = cache.update(1, k, v)
    assert keys.shape == (1, 2, 6, 4)
    assert cache.num_frames == 1


def test_kv_cache_overflow_raises():
    cache = KVCache(num_layers=1, batch=1, heads=1, head_dim=2, tokens_per_frame=2, max_frames=1)
    cache.commit(2)
    with pytest.raises(ValueError, match="exceed max_frames=1"):
        cache.update(0, torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))


def test_kv_cache_rejects_partial_frames_and_bad_shapes():
    cache = KVCache(num_layers=1, batch=2, heads=1, head_dim=2, tokens_per_frame=2, max_frames=3)
    with pytest.raises(ValueError, match="whole frames of 2 tokens"):
        cache.commit(3)
    with pytest.raises(ValueError, match=r"\(batch=2, heads=1, new_tokens, head_dim=2\)"):
        cache.update(0, torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    with pytest.raises(IndexError, match="layer 1 is out of range"):
        cache.update(1, torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2))


def test_rollout_needs_a_context_frame(scd):
    with pytest.raises(ValueError, match="at least one given frame"):
        next(scd_rollout(scd, torch.zeros(2, 0, 4, CHANNELS), 2, steps=2))


def test_rollout_checks_action_length(scd):
    with pytest.raises(ValueError, match=r"actions must be \(batch, context frames \+ new frames\) = \(2, 7\)"):
        next(scd_rollout(scd, context(), 4, steps=2, actions=actions(6)))


def test_causal_dit_guidance_needs_actions(causal_dit):
    with pytest.raises(ValueError, match="action-conditioned model and actions"):
        next(causal_dit_rollout(causal_dit, context(), 2, steps=2, guidance_scale=1.5))
