"""Adaptive Dormand-Prince 5(4) solver for the probability-flow ODE.

Tableau from J. R. Dormand and P. J. Prince, "A family of embedded Runge-Kutta
formulae", Journal of Computational and Applied Mathematics 6(1), 19-26, 1980. The
step-size controller and the starting step follow E. Hairer, S. P. Norsett and
G. Wanner, "Solving Ordinary Differential Equations I", 2nd ed., Springer 1993,
section II.4.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .ode import StepCallback, VelocityFn, check_initial_state, evaluate_velocity, time_dtype

# Butcher tableau. Stage i is evaluated at t + C[i] * h from y + h * sum_j A[i][j] * k_j.
# The seventh stage is evaluated at the new point, so it is also the first stage of the
# next step ("first same as last"): 6 new evaluations per accepted step.
C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
# Fifth-order weights (equal to the last row of A) and the embedded fourth-order weights.
B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
ERROR_WEIGHTS = tuple(b5 - b4 for b5, b4 in zip(B5, B4))

# Step-size controller constants (Hairer et al., section II.4): the new step is
# h * clamp(SAFETY * err^(-1/5), MIN_FACTOR, MAX_FACTOR), and after a rejected step
# the next accepted step may not grow.
SAFETY = 0.9
MIN_FACTOR = 0.2
MAX_FACTOR = 10.0
ERROR_EXPONENT = -1.0 / 5.0


def _weighted_sum(
    y: Tensor | None, h: float, weights: tuple[float, ...], ks: list[Tensor]
) -> Tensor:
    """Return ``y + h * sum_i weights[i] * ks[i]`` (``y = None`` counts as 0), skipping zero weights."""
    out = y
    for weight, k in zip(weights, ks):
        if weight != 0.0:
            term = (h * weight) * k
            out = term if out is None else out + term
    return out


def _rms_norm(x: Tensor, scale: Tensor) -> float:
    """Return ``sqrt(mean((x / scale)^2))`` over all elements as a Python float (host sync)."""
    ratio = x.detach().to(scale.dtype) / scale
    return math.sqrt(float(ratio.square().mean()))


def _error_scale(y0: Tensor, y1: Tensor, rtol: float, atol: float) -> Tensor:
    dtype = time_dtype(y0)
    return atol + rtol * torch.maximum(y0.detach().abs(), y1.detach().abs()).to(dtype)


def _initial_step(
    velocity_at: Callable[[Tensor, float], Tensor],
    y0: Tensor,
    f0: Tensor,
    t0: float,
    span: float,
    rtol: float,
    atol: float,
) -> float:
    """Choose the first step size with the heuristic of Hairer et al., section II.4.

    Costs one velocity evaluation and raises RuntimeError if the state or the velocity
    at ``t0`` is not finite. The aim is a step whose local error is about
    ``0.01^5`` relative to the tolerance scale, estimated from the size of the state,
    its derivative and a finite-difference second derivative.
    """
    scale = _error_scale(y0, y0, rtol, atol)
    d0 = _rms_norm(y0, scale)
    d1 = _rms_norm(f0, scale)
    if not (math.isfinite(d0) and math.isfinite(d1)):
        raise RuntimeError(
            f"dopri5 got a non-finite initial state or velocity at t={t0}; check x0 and"
            f" velocity_fn for NaN or inf"
        )
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, span)

    f1 = velocity_at(y0 + h0 * f0, t0 + h0)
    d2 = _rms_norm(f1 - f0, scale) / h0
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / 5.0)
    return min(100.0 * h0, h1, span)


def dopri5(
    velocity_fn: VelocityFn,
    x0: Tensor,
    *,
    t_start: float = 0.0,
    t_end: float = 1.0,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 1000,
    first_step: float | None = None,
    callback: StepCallback | None = None,
) -> tuple[Tensor, int]:
    """Integrate ``dx/dt = velocity_fn(x, t)`` with the adaptive Dormand-Prince 5(4) method.

    Each step computes a fifth-order solution, which is kept, and an embedded
    fourth-order one. Their difference estimates the local error, measured as the RMS
    over all elements of ``err / (atol + rtol * max(|x_old|, |x_new|))``. A step is
    accepted when that norm is at most 1, and the next step size is set from it. The
    whole batch shares one step size, so the hardest sample sets the pace.

    Deciding accept or reject needs one host sync per step. The starting step, unless
    ``first_step`` is given, costs one extra evaluation and three syncs.

    Args:
        velocity_fn: ``velocity_fn(x, t) -> v`` with x (batch, ...) and t (batch,).
        x0: initial state at ``t_start``, shape (batch, ...), e.g. Gaussian noise.
        t_start: start time, in [0, 1).
        t_end: end time, in (t_start, 1].
        rtol: relative tolerance, >= 0.
        atol: absolute tolerance, >= 0; ``rtol + atol`` must be > 0.
        max_steps: maximum number of attempted steps, accepted plus rejected.
        first_step: initial step size in (0, t_end - t_start]; chosen automatically
            when None.
        callback: optional ``callback(step, t, x)`` after each accepted step.

    Returns:
        ``(x1, num_function_evaluations)``: the state at ``t_end``, shape (batch, ...),
        and the number of calls to ``velocity_fn``.

    Raises:
        ValueError: on an invalid interval, tolerance, ``max_steps`` or ``first_step``.
        RuntimeError: if ``max_steps`` attempts do not reach ``t_end``, or the step size
            underflows (usually a non-finite or exploding velocity).
    """
    check_initial_state(x0)
    if not 0.0 <= t_start < t_end <= 1.0:
        raise ValueError(
            f"expected 0 <= t_start < t_end <= 1, got t_start={t_start}, t_end={t_end}"
        )
    if rtol < 0 or atol < 0 or rtol + atol <= 0:
        raise ValueError(
            f"rtol and atol must be >= 0 and not both 0, got rtol={rtol}, atol={atol}"
        )
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    span = t_end - t_start
    if first_step is not None and not 0.0 < first_step <= span:
        raise ValueError(
            f"first_step must be in (0, t_end - t_start] = (0, {span}], got {first_step}"
        )

    batch = x0.shape[0]
    t_dtype = time_dtype(x0)
    num_evaluations = 0

    def velocity_at(x: Tensor, t: float) -> Tensor:
        nonlocal num_evaluations
        num_evaluations += 1
        t_batch = torch.full((batch,), t, dtype=t_dtype, device=x.device)
        return evaluate_velocity(velocity_fn, x, t_batch)

    t = t_start
    x = x0
    k_first = velocity_at(x, t)
    h = first_step if first_step is not None else _initial_step(
        velocity_at, x, k_first, t, span, rtol, atol
    )

    accepted = 0
    rejected = 0
    previous_rejected = False
    # Within this distance of t_end the remaining interval is treated as reached, so
    # round-off in t never forces a vanishingly small final step.
    end_tolerance = 1e-12 * max(1.0, abs(t_end))

    while t_end - t > end_tolerance:
        if accepted + rejected >= max_steps:
            raise RuntimeError(
                f"dopri5 reached max_steps={max_steps} ({accepted} accepted,"
                f" {rejected} rejected) at t={t:.6g} before t_end={t_end} with step"
                f" size {h:.3g}; raise max_steps or loosen rtol={rtol}, atol={atol}"
            )
        last_step = t + h >= t_end - end_tolerance
        if last_step:
            h = t_end - t

        ks = [k_first]
        for stage in range(1, 7):
            x_stage = _weighted_sum(x, h, A[stage], ks)
            ks.append(velocity_at(x_stage, t + C[stage] * h))
        x_new = x_stage  # the seventh stage point is the fifth-order solution (A[6] == B5)

        error = _weighted_sum(None, h, ERROR_WEIGHTS, ks)
        error_norm = _rms_norm(error, _error_scale(x, x_new, rtol, atol))

        step_accepted = math.isfinite(error_norm) and error_norm <= 1.0
        if step_accepted:
            t = t_end if last_step else t + h
            x = x_new
            k_first = ks[-1]
            if callback is not None:
                callback(accepted, torch.full((batch,), t, dtype=t_dtype, device=x.device), x)
            accepted += 1

        if not math.isfinite(error_norm):
            factor = MIN_FACTOR
        elif error_norm == 0.0:
            factor = MAX_FACTOR
        else:
            factor = min(MAX_FACTOR, max(MIN_FACTOR, SAFETY * error_norm**ERROR_EXPONENT))

        if step_accepted:
            if previous_rejected:
                factor = min(factor, 1.0)
            previous_rejected = False
        else:
            rejected += 1
            previous_rejected = True
        h = h * factor

        if t_end - t > end_tolerance and h <= 1e-14 * span:
            raise RuntimeError(
                f"dopri5 step size underflowed to {h:.3g} at t={t:.6g}; the velocity is"
                f" probably non-finite or exploding (last error norm {error_norm:.3g})"
            )

    return x, num_evaluations
