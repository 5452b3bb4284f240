"""Flow-matching losses: x-prediction scored in velocity space, and masked velocity MSE.

Both compute in at least float32, so bf16 or fp16 inputs do not square and sum in
half precision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .path import DEFAULT_MIN_ONE_MINUS_T, broadcast_time, x_to_velocity


def _loss_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def x_prediction_velocity_loss(
    x_pred: Tensor,
    x1: Tensor,
    x_t: Tensor,
    t: Tensor,
    min_one_minus_t: float = DEFAULT_MIN_ONE_MINUS_T,
    reduce_dims: Sequence[int] | None = None,
) -> Tensor:
    """Score an x-prediction by the squared error of the velocities it implies.

    Both the prediction and the target go through :func:`x_to_velocity` with the same
    clamp, ``v = (x - x_t) / max(1 - t, c)``, so the loss equals
    ``(x_pred - x1)^2 / max(1 - t, c)^2``: an x-prediction loss that weights samples
    near the data end more, by up to ``1 / c^2`` (400 for ``c = 0.05``). UNITE trains
    its Generative Encoder with this loss.

    The caller decides whether gradients reach ``x1``; UNITE passes a detached latent.

    Args:
        x_pred: predicted clean data, shape (batch, ...), e.g. (batch, tokens, channels).
        x1: clean data target, same shape as ``x_pred``.
        x_t: noisy input at time ``t``, same shape as ``x_pred``.
        t: per-sample times in [0, 1], shape (batch,).
        min_one_minus_t: lower clamp ``c`` on ``1 - t``, in (0, 1].
        reduce_dims: dimensions to average over. ``None`` averages over every
            non-batch dimension, giving shape (batch,). Dimension 0 must not be listed.

    Returns:
        Per-sample loss of shape (batch,) (or the shape left after ``reduce_dims``), in
        float32, or float64 for float64 inputs.

    Raises:
        ValueError: on mismatched shapes, a bad ``t`` or a ``reduce_dims`` entry that
            names the batch dimension.
    """
    if x_pred.shape != x1.shape:
        raise ValueError(
            f"x_pred and x1 must have the same shape, got x_pred of shape"
            f" {tuple(x_pred.shape)} and x1 of shape {tuple(x1.shape)}; check the"
            f" model's output head"
        )
    broadcast_time(t, x1)  # validates that t has shape (batch,)

    if reduce_dims is None:
        reduce_dims = tuple(range(1, x_pred.ndim))
    else:
        reduce_dims = tuple(reduce_dims)
        if any(d % max(x_pred.ndim, 1) == 0 for d in reduce_dims):
            raise ValueError(
                f"reduce_dims must not include the batch dimension 0, got {reduce_dims};"
                f" the loss is returned per sample"
            )

    dtype = _loss_dtype(x_pred.dtype)
    x_t = x_t.to(dtype)
    v_pred = x_to_velocity(x_pred.to(dtype), x_t, t, min_one_minus_t)
    v_target = x_to_velocity(x1.to(dtype), x_t, t, min_one_minus_t)
    squared_error = (v_pred - v_target).square()
    if not reduce_dims:
        return squared_error
    return squared_error.mean(dim=reduce_dims)


def velocity_mse_loss(
    v_pred: Tensor,
    v_target: Tensor,
    mask: Tensor | None = None,
) -> Tensor:
    """Mean squared error of velocities, averaged over the elements that the mask keeps.

    The mask contains one weight per leading index, for example one per sample
    (batch,) or one per frame (batch, frames), and weights every element under that
    index. With 0/1 weights the result is the plain mean over the kept elements;
    SCD uses this to exclude frames that were kept clean. When every weight is 0 the
    result is exactly 0, still attached to the graph, with zero gradients.

    Args:
        v_pred: predicted velocity, shape (batch, ...), e.g. (batch, frames, tokens, channels).
        v_target: target velocity, same shape as ``v_pred``.
        mask: optional non-negative weights (bool or float) whose shape is a prefix of
            ``v_pred.shape``, e.g. (batch,) or (batch, frames).

    Returns:
        Scalar loss in float32 (float64 for float64 inputs).

    Raises:
        ValueError: on mismatched shapes or a mask whose shape is not a prefix.
    """
    if v_pred.shape != v_target.shape:
        raise ValueError(
            f"v_pred and v_target must have the same shape, got v_pred of shape"
            f" {tuple(v_pred.shape)} and v_target of shape {tuple(v_target.shape)}"
        )
    dtype = _loss_dtype(v_pred.dtype)
    squared_error = (v_pred.to(dtype) - v_target.to(dtype)).square()
    if mask is None:
        return squared_error.mean()

    if mask.ndim > v_pred.ndim or mask.shape != v_pred.shape[: mask.ndim]:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must be a prefix of the velocity shape"
            f" {tuple(v_pred.shape)}, e.g. (batch,) or (batch, frames)"
        )
    weights = mask.to(dtype)
    elements_per_weight = math.prod(v_pred.shape[mask.ndim :])
    weights_b = weights.reshape(*mask.shape, *([1] * (v_pred.ndim - mask.ndim)))

    # Clamping the count avoids 0 / 0 for an all-zero mask, where the sum is already 0,
    # without a host sync to branch on it.
    weighted_sum = (squared_error * weights_b).sum()
    count = (weights.sum() * elements_per_weight).clamp(min=torch.finfo(dtype).tiny)
    return weighted_sum / count
