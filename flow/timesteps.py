"""Timestep distributions for training and time grids for sampling.

All times follow the project convention: ``t`` in [0, 1], ``t = 0`` noise, ``t = 1`` data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _check_shift(shift: float) -> None:
    if not shift > 0:
        raise ValueError(
            f"shift must be > 0, got {shift}; use 1.0 for no shift, < 1 to spend more"
            f" time near the noise end (t = 0), > 1 to spend more near the data end"
        )


def shift_timesteps(t: Tensor, shift: float) -> Tensor:
    """Warp times with ``t' = shift * t / (1 + (shift - 1) * t)``.

    The map is monotone increasing and fixes 0 and 1, and ``shift = 1`` is the
    identity. With ``shift < 1`` every interior time moves towards 0, so a warped
    distribution puts more mass near the noise end. UNITE trains with ``shift = 0.5``.
    The inverse map is ``shift_timesteps(t, 1 / shift)``.

    Args:
        t: times in [0, 1], any shape.
        shift: positive warp factor, a Python float.

    Returns:
        Warped times, same shape and dtype as ``t``.

    Raises:
        ValueError: if ``shift <= 0``.
    """
    _check_shift(shift)
    if shift == 1.0:
        return t
    # Same map as shift * t / (1 + (shift - 1) * t), written so that t = 0 and t = 1
    # land exactly on 0 and 1 in floating point. The denominator is >= min(1, shift) > 0.
    shifted = shift * t
    return shifted / (shifted + (1.0 - t))


def sample_logit_normal(
    shape: int | Sequence[int],
    mean: float = 0.0,
    std: float = 1.0,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw ``sigmoid(z)`` with ``z ~ N(mean, std^2)``, a logit-normal distribution on (0, 1).

    Args:
        shape: output shape.
        mean: mean of ``z`` in logit space.
        std: standard deviation of ``z`` in logit space, > 0.
        device: device of the output; the generator, if given, must live there too.
        dtype: floating-point dtype of the output.
        generator: optional random generator for reproducible draws.

    Returns:
        Samples in (0, 1) of the given shape. In float32, ``|z| > 17`` rounds to exactly
        0 or 1, which has probability below 1e-60 for the standard parameters.

    Raises:
        ValueError: if ``std <= 0``.
    """
    if not std > 0:
        raise ValueError(f"std must be > 0, got {std}")
    if isinstance(shape, int):
        shape = (shape,)
    z = torch.randn(tuple(shape), device=device, dtype=dtype, generator=generator)
    return torch.sigmoid(z * std + mean)


def sample_training_timesteps(
    batch: int,
    *,
    mean: float = 0.0,
    std: float = 1.0,
    shift: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one training time per sample: logit-normal, then :func:`shift_timesteps`.

    UNITE uses ``mean = 0``, ``std = 1``, ``shift = 0.5``.

    Args:
        batch: number of samples.
        mean: logit-space mean of the logit-normal draw.
        std: logit-space standard deviation, > 0.
        shift: warp factor applied after the draw, > 0.
        device: device of the output.
        dtype: floating-point dtype of the output.
        generator: optional random generator.

    Returns:
        Times in (0, 1), shape (batch,).

    Raises:
        ValueError: on a negative batch size, ``std <= 0`` or ``shift <= 0``.
    """
    if batch < 0:
        raise ValueError(f"batch must be >= 0, got {batch}")
    _check_shift(shift)
    t = sample_logit_normal(
        (batch,), mean, std, device=device, dtype=dtype, generator=generator
    )
    return shift_timesteps(t, shift)


def sampling_grid(
    steps: int,
    *,
    shift: float = 1.0,
    t_start: float = 0.0,
    t_end: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Build the increasing time grid of a fixed-step sampler.

    The grid is uniform in the unwarped time ``u`` and then warped with
    :func:`shift_timesteps`. Its endpoints are exactly ``t_start`` and ``t_end``
    because the uniform grid runs between the unwarped endpoints
    ``shift_timesteps(t_start, 1 / shift)`` and ``shift_timesteps(t_end, 1 / shift)``.
    The warped grid on a sub-interval is therefore the matching piece of the
    full-interval warp, not a rescaled copy of it.

    Args:
        steps: number of solver steps, >= 1.
        shift: warp factor, > 0; ``shift < 1`` puts smaller steps near ``t = 0``.
        t_start: first time, in [0, 1).
        t_end: last time, in (t_start, 1].
        device: device of the output.
        dtype: floating-point dtype of the output; the grid is computed in float64.

    Returns:
        Times, shape (steps + 1,), strictly increasing from ``t_start`` to ``t_end``.

    Raises:
        ValueError: if ``steps < 1``, the interval is invalid or ``shift <= 0``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not 0.0 <= t_start < t_end <= 1.0:
        raise ValueError(
            f"expected 0 <= t_start < t_end <= 1, got t_start={t_start}, t_end={t_end};"
            f" time runs from noise (t = 0) to data (t = 1)"
        )
    _check_shift(shift)

    endpoints = torch.tensor([t_start, t_end], dtype=torch.float64)
    u_start, u_end = shift_timesteps(endpoints, 1.0 / shift).tolist()
    u = torch.linspace(u_start, u_end, steps + 1, dtype=torch.float64)
    t = shift_timesteps(u, shift)

    # Pin the endpoints so that float64 round-off in the warp cannot move them.
    t[0] = t_start
    t[-1] = t_end
    return t.to(device=device, dtype=dtype)
