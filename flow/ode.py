"""Pieces shared by the ODE solvers: the velocity-function contract and its checks.

A velocity function maps ``(x, t)`` with ``x`` of shape (batch, ...) and ``t`` of shape
(batch,) to a velocity of the same shape as ``x``. Solvers integrate
``dx/dt = velocity_fn(x, t)`` forward in time, from noise (``t = 0``) towards data
(``t = 1``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

VelocityFn = Callable[[Tensor, Tensor], Tensor]
"""``velocity_fn(x, t) -> v`` with x (batch, ...), t (batch,), v shaped like x."""

StepCallback = Callable[[int, Tensor, Tensor], None]
"""``callback(step, t, x)`` called after each accepted step with the 0-based step index,
the time reached, shape (batch,), and the state at that time, shape (batch, ...)."""


def check_initial_state(x0: Tensor) -> None:
    """Raise ValueError unless ``x0`` is a floating-point tensor with a batch dimension."""
    if x0.ndim < 1 or not x0.is_floating_point():
        raise ValueError(
            f"x0 must be a floating-point tensor of shape (batch, ...), got dtype"
            f" {x0.dtype} and shape {tuple(x0.shape)}"
        )


def time_dtype(x: Tensor) -> torch.dtype:
    """Return the dtype for solver times: float64 for float64 states, else float32.

    bf16 rounds times in [0.5, 1) to multiples of 2^-8 (about 0.004), too coarse for
    a fine grid, so times stay in at least float32 even when the state is bf16 or fp16.
    """
    return torch.promote_types(x.dtype, torch.float32)


def evaluate_velocity(velocity_fn: VelocityFn, x: Tensor, t: Tensor) -> Tensor:
    """Call ``velocity_fn(x, t)`` and check that the velocity has the shape of ``x``.

    Args:
        velocity_fn: the velocity function.
        x: state, shape (batch, ...).
        t: times, shape (batch,).

    Returns:
        The velocity, shape (batch, ...).

    Raises:
        ValueError: if the velocity's shape differs from ``x.shape``.
    """
    v = velocity_fn(x, t)
    if v.shape != x.shape:
        raise ValueError(
            f"velocity_fn returned shape {tuple(v.shape)} for a state of shape"
            f" {tuple(x.shape)}; it must return a velocity shaped like x"
        )
    return v
