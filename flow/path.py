"""The linear (rectified-flow) probability path and conversions between predictions.

Convention: ``t`` in [0, 1], ``t = 0`` is pure noise, ``t = 1`` is data, and
``x_t = t * x1 + (1 - t) * noise``, so the velocity along the path is ``x1 - noise``.
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_MIN_ONE_MINUS_T = 0.05
"""Lower clamp on ``1 - t`` when converting an x-prediction to a velocity (UNITE uses 0.05)."""


def broadcast_time(t: Tensor, like: Tensor) -> Tensor:
    """Reshape per-sample times so that they broadcast against a batched tensor.

    Args:
        t: per-sample times, shape (batch,).
        like: tensor of shape (batch, ...) of any rank >= 1.

    Returns:
        ``t`` viewed as shape (batch, 1, ..., 1) with ``like.ndim`` dimensions. When
        both are floating point, ``t`` is cast to the dtype of ``like`` so that results
        keep that dtype (a float32 ``t`` would otherwise promote bf16 data).

    Raises:
        ValueError: if ``t`` is not one-dimensional or its length differs from
            ``like.shape[0]``.
    """
    if like.ndim < 1:
        raise ValueError(
            f"expected a batched tensor with at least one dimension, got a 0-d tensor"
            f" of shape {tuple(like.shape)}"
        )
    if t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(
            f"t must have shape (batch,) = ({like.shape[0]},) to match a tensor of shape"
            f" {tuple(like.shape)}, got t of shape {tuple(t.shape)}; pass one time per"
            f" sample, e.g. t.expand({like.shape[0]}) for a shared time"
        )
    if like.is_floating_point() and t.is_floating_point():
        t = t.to(dtype=like.dtype)
    return t.reshape(t.shape[0], *([1] * (like.ndim - 1)))


def _check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {name_a} of shape"
            f" {tuple(a.shape)} and {name_b} of shape {tuple(b.shape)}"
        )


def _check_min_one_minus_t(min_one_minus_t: float) -> None:
    if not 0.0 < min_one_minus_t <= 1.0:
        raise ValueError(
            f"min_one_minus_t must be in (0, 1], got {min_one_minus_t}; it bounds the"
            f" division by 1 - t near the data end (the default is {DEFAULT_MIN_ONE_MINUS_T})"
        )


def interpolate(x1: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """Compute the point ``x_t = t * x1 + (1 - t) * noise`` on the linear path.

    Args:
        x1: data, shape (batch, ...).
        noise: Gaussian noise, same shape as ``x1``.
        t: per-sample times in [0, 1], shape (batch,).

    Returns:
        ``x_t``, same shape as ``x1``.

    Raises:
        ValueError: if the shapes of ``x1`` and ``noise`` differ or ``t`` is not (batch,).
    """
    _check_same_shape("x1", x1, "noise", noise)
    t_b = broadcast_time(t, x1)
    return t_b * x1 + (1.0 - t_b) * noise


def velocity_target(x1: Tensor, noise: Tensor) -> Tensor:
    """Return the velocity ``d x_t / d t = x1 - noise`` of the linear path.

    Args:
        x1: data, shape (batch, ...).
        noise: Gaussian noise, same shape as ``x1``.

    Returns:
        The velocity, same shape as ``x1``.
    """
    _check_same_shape("x1", x1, "noise", noise)
    return x1 - noise


def _clamped_one_minus_t(t: Tensor, like: Tensor, min_one_minus_t: float) -> Tensor:
    _check_min_one_minus_t(min_one_minus_t)
    return (1.0 - broadcast_time(t, like)).clamp(min=min_one_minus_t)


def x_to_velocity(
    x_pred: Tensor,
    x_t: Tensor,
    t: Tensor,
    min_one_minus_t: float = DEFAULT_MIN_ONE_MINUS_T,
) -> Tensor:
    """Convert a clean-data prediction into a velocity, ``(x_pred - x_t) / max(1 - t, c)``.

    On the linear path ``noise = (x_t - t * x1) / (1 - t)``, so the velocity implied by
    a prediction of ``x1`` is ``(x_pred - x_t) / (1 - t)``. The clamp ``c`` keeps the
    division finite as ``t -> 1``, where the exact velocity would be 0 / 0.

    Args:
        x_pred: predicted clean data, shape (batch, ...).
        x_t: the noisy input at time ``t``, same shape as ``x_pred``.
        t: per-sample times in [0, 1], shape (batch,).
        min_one_minus_t: lower clamp ``c`` on ``1 - t``, in (0, 1].

    Returns:
        The velocity, same shape as ``x_pred``.

    Raises:
        ValueError: on mismatched shapes or ``min_one_minus_t`` outside (0, 1].
    """
    _check_same_shape("x_pred", x_pred, "x_t", x_t)
    return (x_pred - x_t) / _clamped_one_minus_t(t, x_t, min_one_minus_t)


def velocity_to_x(
    v: Tensor,
    x_t: Tensor,
    t: Tensor,
    min_one_minus_t: float = DEFAULT_MIN_ONE_MINUS_T,
) -> Tensor:
    """Convert a velocity into a clean-data prediction, ``x_t + v * max(1 - t, c)``.

    This is the inverse of :func:`x_to_velocity` for the same clamp ``c``, so the two
    round-trip up to floating-point rounding at every ``t``, including ``t > 1 - c``.

    Args:
        v: velocity, shape (batch, ...).
        x_t: the noisy input at time ``t``, same shape as ``v``.
        t: per-sample times in [0, 1], shape (batch,).
        min_one_minus_t: lower clamp ``c`` on ``1 - t``, in (0, 1].

    Returns:
        The clean-data prediction, same shape as ``v``.

    Raises:
        ValueError: on mismatched shapes or ``min_one_minus_t`` outside (0, 1].
    """
    _check_same_shape("v", v, "x_t", x_t)
    return x_t + v * _clamped_one_minus_t(t, x_t, min_one_minus_t)
