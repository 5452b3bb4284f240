"""Classifier-free guidance restricted to a time interval.

Guidance extrapolates from the unconditional output towards the conditional one,
``uncond + scale * (cond - uncond)``. It is applied only while ``t`` lies in a
closed interval (UNITE: [0.1, 1], so the steps nearest to pure noise are unguided).
The combination is linear, so it gives the same result on x-predictions as on
velocities computed from them with the same ``x_t`` and ``t``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .path import broadcast_time

DEFAULT_GUIDANCE_INTERVAL = (0.1, 1.0)
"""Closed time interval in which guidance is applied (UNITE's setting)."""


def _check_interval(interval: tuple[float, float]) -> tuple[float, float]:
    if len(interval) != 2 or not interval[0] <= interval[1]:
        raise ValueError(
            f"interval must be a pair (lo, hi) with lo <= hi, got {interval!r}; use"
            f" (0.0, 1.0) to guide at every time"
        )
    return float(interval[0]), float(interval[1])


def guidance_active(
    t: Tensor, interval: tuple[float, float] = DEFAULT_GUIDANCE_INTERVAL
) -> Tensor:
    """Return which samples are guided: ``lo <= t <= hi``.

    Args:
        t: per-sample times, shape (batch,).
        interval: closed interval ``(lo, hi)``.

    Returns:
        Boolean tensor, shape (batch,).

    Raises:
        ValueError: if ``interval`` is not a pair with ``lo <= hi``.
    """
    lo, hi = _check_interval(interval)
    return (t >= lo) & (t <= hi)


def apply_guidance(
    cond: Tensor,
    uncond: Tensor,
    scale: float | Tensor,
    t: Tensor,
    interval: tuple[float, float] = DEFAULT_GUIDANCE_INTERVAL,
) -> Tensor:
    """Combine conditional and unconditional outputs with classifier-free guidance.

    Inside the interval the result is ``uncond + scale * (cond - uncond)``, computed as
    ``cond + (scale - 1) * (cond - uncond)`` so that ``scale = 1`` returns ``cond``
    bit for bit. Outside the interval the result is ``cond`` itself. The choice is
    made per sample with ``torch.where``, without a host sync.

    Args:
        cond: conditional output (velocity or x-prediction), shape (batch, ...).
        uncond: unconditional output, same shape as ``cond``.
        scale: guidance scale, a float or a per-sample tensor of shape (batch,).
        t: per-sample times, shape (batch,).
        interval: closed interval ``(lo, hi)`` of times where guidance is applied.

    Returns:
        Guided output, same shape as ``cond``.

    Raises:
        ValueError: on mismatched shapes, a bad ``t`` or ``scale`` shape, or a bad interval.
    """
    if cond.shape != uncond.shape:
        raise ValueError(
            f"cond and uncond must have the same shape, got cond of shape"
            f" {tuple(cond.shape)} and uncond of shape {tuple(uncond.shape)}"
        )
    if isinstance(scale, Tensor) and scale.ndim > 0:
        scale = broadcast_time(scale, cond)

    guided = cond + (scale - 1.0) * (cond - uncond)
    active = broadcast_time(guidance_active(t, interval), cond)
    return torch.where(active, guided, cond)


def guided_fn(
    fn: Callable[[Tensor, Tensor, Tensor], Tensor],
    scale: float | Tensor,
    interval: tuple[float, float] = DEFAULT_GUIDANCE_INTERVAL,
    null_condition: Tensor | int | float = 0,
) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """Wrap a conditional model ``fn(x, t, condition)`` so that it returns guided outputs.

    The wrapper runs ``fn`` once on a doubled batch, ``[x; x]`` with conditions
    ``[condition; null]``, splits the output into conditional and unconditional halves
    and combines them with :func:`apply_guidance`. Both halves are computed even where
    guidance is inactive, because skipping them would need a host sync on ``t``.
    When ``scale`` is the float 1.0 the wrapper skips the unconditional half entirely.

    To use it with a solver, bind the condition first::

        guided = guided_fn(model, scale=2.0, null_condition=num_classes)
        x1 = heun(lambda x, t: guided(x, t, labels), noise, steps=50)

    Args:
        fn: model taking ``x`` (batch, ...), ``t`` (batch,) and ``condition``
            (batch, ...) and returning a tensor of shape (batch, ...).
        scale: guidance scale, a float or a tensor of shape (batch,).
        interval: closed interval ``(lo, hi)`` of times where guidance is applied.
        null_condition: the "no condition" value, such as the null class index. A
            scalar or a tensor of shape ``condition.shape[1:]``, broadcast over the batch.

    Returns:
        A callable ``(x, t, condition) -> guided output`` of shape (batch, ...).

    Raises:
        ValueError: if ``interval`` is invalid (checked when the wrapper is built).
    """
    _check_interval(interval)

    def guided(x: Tensor, t: Tensor, condition: Tensor) -> Tensor:
        if not isinstance(scale, Tensor) and scale == 1.0:
            return fn(x, t, condition)

        null = torch.as_tensor(
            null_condition, dtype=condition.dtype, device=condition.device
        ).expand_as(condition)
        out = fn(
            torch.cat([x, x]), torch.cat([t, t]), torch.cat([condition, null])
        )
        cond_out, uncond_out = out.chunk(2, dim=0)
        return apply_guidance(cond_out, uncond_out, scale, t, interval)

    return guided
