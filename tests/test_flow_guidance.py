"""Tests for interval-limited classifier-free guidance."""

import pytest
import torch

from unisep.flow import apply_guidance, guidance_active, guided_fn


@pytest.fixture
def outputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    cond = torch.randn(4, 3, 2, generator=generator)
    uncond = torch.randn(4, 3, 2, generator=generator)
    return cond, uncond


def test_guidance_active_closed_interval():
    t = torch.tensor([0.0, 0.05, 0.1, 0.5, 1.0])

    active = guidance_active(t, interval=(0.1, 1.0))

    assert active.dtype == torch.bool
    assert active.tolist() == [False, False, True, True, True]


def test_guidance_active_rejects_reversed_interval():
    with pytest.raises(ValueError, match="lo <= hi"):
        guidance_active(torch.zeros(2), interval=(0.9, 0.1))


def test_apply_guidance_scale_one_returns_cond(outputs):
    cond, uncond = outputs
    t = torch.tensor([0.05, 0.3, 0.6, 1.0])

    assert torch.equal(apply_guidance(cond, uncond, 1.0, t), cond)


def test_apply_guidance_outside_interval_returns_cond(outputs):
    cond, uncond = outputs
    t = torch.tensor([0.0, 0.02, 0.05, 0.099])

    assert torch.equal(apply_guidance(cond, uncond, 3.0, t), cond)


def test_apply_guidance_inside_interval_formula(outputs):
    cond, uncond = outputs
    t = torch.tensor([0.1, 0.4, 0.7, 1.0])

    guided = apply_guidance(cond, uncond, 2.5, t)

    assert torch.allclose(guided, uncond + 2.5 * (cond - uncond), atol=1e-6)


def test_apply_guidance_mixed_batch(outputs):
    cond, uncond = outputs
    t = torch.tensor([0.05, 0.5, 0.0, 0.9])

    guided = apply_guidance(cond, uncond, 2.0, t)

    assert torch.equal(guided[0], cond[0])
    assert torch.equal(guided[2], cond[2])
    assert torch.allclose(guided[1], uncond[1] + 2.0 * (cond[1] - uncond[1]), atol=1e-6)
    assert torch.allclose(guided[3], uncond[3] + 2.0 * (cond[3] - uncond[3]), atol=1e-6)


def test_apply_guidance_per_sample_scale(outputs):
    cond, uncond = outputs
    t = torch.full((4,), 0.5)
    scale = torch.tensor([1.0, 1.5, 2.0, 4.0])

    guided = apply_guidance(cond, uncond, scale, t)

    assert torch.equal(guided[0], cond[0])
    for i in range(1, 4):
        expected = uncond[i] + scale[i] * (cond[i] - uncond[i])
        assert torch.allclose(guided[i], expected, atol=1e-6)


def test_apply_guidance_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="cond and uncond must have the same shape"):
        apply_guidance(torch.zeros(2, 3), torch.zeros(2, 4), 2.0, torch.zeros(2))


class RecordingModel:
    """Conditional model ``x * (1 + condition)`` that records the batch size of each call."""

    def __init__(self):
        self.batch_sizes: list[int] = []

    def __call__(self, x, t, condition):
        self.batch_sizes.append(x.shape[0])
        return x * (1.0 + condition.to(x.dtype)[:, None])


def test_guided_fn_matches_apply_guidance():
    model = RecordingModel()
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.05, 0.5, 0.9])
    labels = torch.tensor([2, 5, 7])

    guided = guided_fn(model, scale=3.0, null_condition=10)(x, t, labels)

    cond = x * (1.0 + labels[:, None])
    uncond = x * 11.0
    assert model.batch_sizes == [6]
    assert torch.equal(guided, apply_guidance(cond, uncond, 3.0, t))


def test_guided_fn_scale_one_skips_unconditional_pass():
    model = RecordingModel()
    x = torch.randn(3, 4)
    labels = torch.tensor([1, 2, 3])

    guided = guided_fn(model, scale=1.0, null_condition=10)(x, torch.full((3,), 0.5), labels)

    assert model.batch_sizes == [3]
    assert torch.equal(guided, x * (1.0 + labels[:, None]))


def test_guided_fn_rejects_bad_interval():
    with pytest.raises(ValueError, match="lo <= hi"):
        guided_fn(RecordingModel(), scale=2.0, interval=(1.0, 0.0))
