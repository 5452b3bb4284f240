"""Rectified-flow maths: the linear path, timesteps, losses, guidance and ODE solvers.

Convention, used by every function here and throughout unisep:

- time ``t`` lies in [0, 1]; ``t = 0`` is pure Gaussian noise and ``t = 1`` is data;
- the path is ``x_t = t * x1 + (1 - t) * noise``;
- the velocity is ``v = d x_t / d t = x1 - noise``, and samplers integrate
  ``dx/dt = v(x, t)`` forward from ``t = 0`` to ``t = 1``.

Models trained with the opposite convention (``t = 0`` data) must be converted at the
boundary, with ``t -> 1 - t`` and ``v -> -v``.

This package imports only torch and nothing else from unisep.
"""

from .guidance import DEFAULT_GUIDANCE_INTERVAL, apply_guidance, guidance_active, guided_fn
from .loss import velocity_mse_loss, x_prediction_velocity_loss
from .ode import StepCallback, VelocityFn
from .path import (
    DEFAULT_MIN_ONE_MINUS_T,
    broadcast_time,
    interpolate,
    velocity_target,
    velocity_to_x,
    x_to_velocity,
)
from .solvers import SolverName, dopri5, euler, heun, solve
from .timesteps import (
    sample_logit_normal,
    sample_training_timesteps,
    sampling_grid,
    shift_timesteps,
)

__all__ = [
    "DEFAULT_GUIDANCE_INTERVAL",
    "DEFAULT_MIN_ONE_MINUS_T",
    "SolverName",
    "StepCallback",
    "VelocityFn",
    "apply_guidance",
    "broadcast_time",
    "dopri5",
    "euler",
    "guidance_active",
    "guided_fn",
    "heun",
    "interpolate",
    "sample_logit_normal",
    "sample_training_timesteps",
    "sampling_grid",
    "shift_timesteps",
    "solve",
    "velocity_mse_loss",
    "velocity_target",
    "velocity_to_x",
    "x_prediction_velocity_loss",
    "x_to_velocity",
]
