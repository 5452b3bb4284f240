"""ODE samplers for the probability-flow ODE: fixed-step Euler and Heun, adaptive dopri5.

Every solver is a pure function of ``velocity_fn(x, t) -> v`` that integrates from
``t_start`` (noise end) to ``t_end`` (data end). Solvers run under the caller's grad
mode, so wrap sampling in ``torch.no_grad()`` unless gradients through the solve are
wanted. Fixed-step solvers need no host sync.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from torch import Tensor

from .adaptive import dopri5
from .ode import StepCallback, VelocityFn, check_initial_state, evaluate_velocity, time_dtype
from .timesteps import sampling_grid

__all__ = ["SolverName", "dopri5", "euler", "heun", "solve"]


class SolverName(str, Enum):
    """Names accepted by :func:`solve`."""

    EULER = "euler"
    HEUN = "heun"
    DOPRI5 = "dopri5"


def _integrate_on_grid(
    step_fn: Callable[[int, Tensor, Tensor, Tensor, Tensor], Tensor],
    x0: Tensor,
    steps: int,
    shift: float,
    t_start: float,
    t_end: float,
    callback: StepCallback | None,
) -> Tensor:
    """Apply one solver step per interval of a :func:`sampling_grid`, from ``t_start`` to ``t_end``.

    ``step_fn(i, x, t, t_next, dt)`` maps the state x (batch, ...) at time t to the
    state at ``t_next``. Both times are (batch,) tensors and dt is the 0-d step size.
    The optional ``callback(i, t_next, x)`` receives the state after each step.
    """
    check_initial_state(x0)
    grid = sampling_grid(
        steps,
        shift=shift,
        t_start=t_start,
        t_end=t_end,
        device=x0.device,
        dtype=time_dtype(x0),
    )
    batch = x0.shape[0]

    x = x0
    for i in range(steps):
        t, t_next = grid[i].expand(batch), grid[i + 1].expand(batch)
        x = step_fn(i, x, t, t_next, grid[i + 1] - grid[i])
        if callback is not None:
            callback(i, t_next, x)
    return x


def euler(
    velocity_fn: VelocityFn,
    x0: Tensor,
    steps: int,
    *,
    shift: float = 1.0,
    t_start: float = 0.0,
    t_end: float = 1.0,
    callback: StepCallback | None = None,
) -> Tensor:
    """Integrate with the explicit Euler method on a :func:`sampling_grid`.

    ``x_{i+1} = x_i + (t_{i+1} - t_i) * v(x_i, t_i)``: first order, ``steps``
    velocity evaluations.

    Args:
        velocity_fn: ``velocity_fn(x, t) -> v`` with x (batch, ...) and t (batch,).
        x0: state at ``t_start``, shape (batch, ...), e.g. Gaussian noise.
        steps: number of steps, >= 1.
        shift: time-grid warp factor, see :func:`shift_timesteps`; 1 is uniform.
        t_start: start time, in [0, 1).
        t_end: end time, in (t_start, 1].
        callback: optional ``callback(step, t, x)`` after each step.

    Returns:
        The state at ``t_end``, shape (batch, ...).

    Raises:
        ValueError: on a bad ``x0``, ``steps``, interval or shift, or a velocity of the
            wrong shape.
    """

    def euler_step(i: int, x: Tensor, t: Tensor, t_next: Tensor, dt: Tensor) -> Tensor:
        return x + dt * evaluate_velocity(velocity_fn, x, t)

    return _integrate_on_grid(euler_step, x0, steps, shift, t_start, t_end, callback)


def heun(
    velocity_fn: VelocityFn,
    x0: Tensor,
    steps: int,
    *,
    shift: float = 1.0,
    t_start: float = 0.0,
    t_end: float = 1.0,
    euler_last_step: bool = False,
    callback: StepCallback | None = None,
) -> Tensor:
    """Integrate with Heun's second-order method (explicit trapezoidal rule).

    Each step takes an Euler predictor ``x' = x_i + dt * v(x_i, t_i)`` and corrects it
    with the mean slope, ``x_{i+1} = x_i + dt / 2 * (v(x_i, t_i) + v(x', t_{i+1}))``.
    That costs ``2 * steps`` velocity evaluations. With ``euler_last_step=True`` the
    final step keeps the Euler predictor, as the EDM sampler does, which suits models
    whose velocity is unreliable at ``t = 1``. The cost is then ``2 * steps - 1``.

    Args:
        velocity_fn: ``velocity_fn(x, t) -> v`` with x (batch, ...) and t (batch,).
        x0: state at ``t_start``, shape (batch, ...), e.g. Gaussian noise.
        steps: number of steps, >= 1.
        shift: time-grid warp factor, see :func:`shift_timesteps`; 1 is uniform.
        t_start: start time, in [0, 1).
        t_end: end time, in (t_start, 1].
        euler_last_step: take a plain Euler step at the end, skipping one evaluation at
            ``t_end``.
        callback: optional ``callback(step, t, x)`` after each step.

    Returns:
        The state at ``t_end``, shape (batch, ...).

    Raises:
        ValueError: on a bad ``x0``, ``steps``, interval or shift, or a velocity of the
            wrong shape.
    """

    def heun_step(i: int, x: Tensor, t: Tensor, t_next: Tensor, dt: Tensor) -> Tensor:
        v = evaluate_velocity(velocity_fn, x, t)
        x_predicted = x + dt * v
        if euler_last_step and i == steps - 1:
            return x_predicted
        v_next = evaluate_velocity(velocity_fn, x_predicted, t_next)
        return x + (0.5 * dt) * (v + v_next)

    return _integrate_on_grid(heun_step, x0, steps, shift, t_start, t_end, callback)


def _parse_solver_name(solver: SolverName | str) -> SolverName:
    try:
        return SolverName(solver.lower() if isinstance(solver, str) else solver)
    except ValueError:
        valid = ", ".join(name.value for name in SolverName)
        raise ValueError(
            f"unknown solver {solver!r}; valid names are: {valid}"
        ) from None


def solve(
    velocity_fn: VelocityFn,
    x0: Tensor,
    solver: SolverName | str,
    steps: int = 50,
    *,
    return_evaluations: bool = False,
    **options,
) -> Tensor | tuple[Tensor, int]:
    """Run the solver named ``solver`` (``"euler"``, ``"heun"`` or ``"dopri5"``).

    Args:
        velocity_fn: ``velocity_fn(x, t) -> v`` with x (batch, ...) and t (batch,).
        x0: state at the start time, shape (batch, ...).
        solver: a :class:`SolverName` or its string value (case-insensitive).
        steps: number of steps for the fixed-step solvers; dopri5 ignores it and
            chooses its own steps.
        return_evaluations: also return the number of ``velocity_fn`` calls.
        **options: keyword options of the chosen solver, such as ``shift``,
            ``t_start``, ``callback``, or ``rtol`` and ``atol`` for dopri5.

    Returns:
        The state at the end time, shape (batch, ...), or ``(state, evaluations)``
        when ``return_evaluations`` is True.

    Raises:
        ValueError: for an unknown solver name, listing the valid names.
        TypeError: for an option that the chosen solver does not take.
    """
    name = _parse_solver_name(solver)

    if name is SolverName.DOPRI5:
        x1, evaluations = dopri5(velocity_fn, x0, **options)
    else:
        evaluations = 0

        def counted_velocity_fn(x: Tensor, t: Tensor) -> Tensor:
            nonlocal evaluations
            evaluations += 1
            return velocity_fn(x, t)

        fixed_step_solver = euler if name is SolverName.EULER else heun
        x1 = fixed_step_solver(counted_velocity_fn, x0, steps, **options)

    if return_evaluations:
        return x1, evaluations
    return x1
