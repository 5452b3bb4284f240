"""Tests for the ODE solvers on a flow with a closed-form solution.

Reference flow: data ``x1 ~ N(m, diag(s^2))`` and noise ``eps ~ N(0, I)``, independent.
Per dimension, ``x_t = t * x1 + (1 - t) * eps`` is Gaussian with mean ``t * m`` and
variance ``var_t = t^2 s^2 + (1 - t)^2``, and ``Cov(x1 - eps, x_t) = t s^2 - (1 - t)``.
Jointly Gaussian variables have a linear conditional mean, so the optimal velocity is

    v(x, t) = E[x1 - eps | x_t = x] = m + (t s^2 - (1 - t)) / var_t * (x - t m).

Its ODE solution from ``x(0) = z`` is ``x(t) = t m + sqrt(var_t) z``: differentiating
gives ``m + (t s^2 - (1 - t)) / sqrt(var_t) * z``, which equals ``v(x(t), t)``. So
every solver should map each noise sample ``z`` to ``m + s z``.
"""

import math

import pytest
import torch

from unisep.flow import SolverName, dopri5, euler, heun, solve
from unisep.flow.adaptive import A, B4, B5, C

MEAN = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
STD = torch.tensor([0.5, 2.0, 1.0, 0.1], dtype=torch.float64)
NUM_SAMPLES = 20_000


def gaussian_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Optimal velocity for N(0, I) noise and N(MEAN, STD^2) data; x (batch, 4), t (batch,)."""
    t = t[:, None].to(x.dtype)
    mean, std = MEAN.to(x.dtype), STD.to(x.dtype)
    variance = t**2 * std**2 + (1 - t) ** 2
    return mean + (t * std**2 - (1 - t)) / variance * (x - t * mean)


def exact_state(z: torch.Tensor, t: float) -> torch.Tensor:
    """Exact ODE solution at time t from noise z, shape (batch, 4)."""
    return t * MEAN + torch.sqrt(t**2 * STD**2 + (1 - t) ** 2) * z


@pytest.fixture(scope="module")
def noise() -> torch.Tensor:
    return torch.randn(NUM_SAMPLES, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def max_error(x1: torch.Tensor, z: torch.Tensor) -> float:
    return (x1 - exact_state(z, 1.0)).abs().max().item()


def assert_data_moments(x1: torch.Tensor) -> None:
    """Check the sample mean and variance of x1 against N(MEAN, STD^2).

    Standard errors for 20k samples: STD / sqrt(n) <= 0.015 for the mean, and a
    relative sqrt(2 / n) = 1% for the variance. The tolerances are five of them.
    """
    tolerance_mean = 5 * STD / math.sqrt(NUM_SAMPLES)
    assert torch.all((x1.mean(dim=0) - MEAN).abs() <= tolerance_mean), x1.mean(dim=0)
    relative_variance_error = x1.var(dim=0) / STD**2 - 1
    assert torch.all(relative_variance_error.abs() <= 5 * math.sqrt(2 / NUM_SAMPLES)), x1.var(dim=0)


def test_euler_gaussian_moments(noise):
    x1 = euler(gaussian_velocity, noise, 500)

    assert x1.shape == noise.shape
    assert_data_moments(x1)
    # Euler is first order: about 0.025 worst-case error at 500 steps.
    assert max_error(x1, noise) < 0.05


def test_heun_gaussian_moments(noise):
    x1 = heun(gaussian_velocity, noise, 50)

    assert_data_moments(x1)
    assert max_error(x1, noise) < 5e-3


def test_dopri5_gaussian_moments(noise):
    x1, evaluations = dopri5(gaussian_velocity, noise, rtol=1e-5, atol=1e-5)

    assert_data_moments(x1)
    assert max_error(x1, noise) < 1e-3
    # Every attempted step costs 6 evaluations and choosing the first step costs 2.
    assert 14 <= evaluations <= 200
    assert (evaluations - 2) % 6 == 0


def test_heun_beats_euler_at_equal_steps(noise):
    z = noise[:2000]

    euler_error = max_error(euler(gaussian_velocity, z, 20), z)
    heun_error = max_error(heun(gaussian_velocity, z, 20), z)

    assert heun_error < euler_error / 10


@pytest.mark.parametrize(("solver", "order"), [(euler, 1), (heun, 2)])
def test_fixed_step_convergence_order(noise, solver, order):
    z = noise[:2000]
    coarse = max_error(solver(gaussian_velocity, z, 40), z)
    fine = max_error(solver(gaussian_velocity, z, 80), z)

    # Halving the step divides the global error by about 2^order.
    assert coarse / fine == pytest.approx(2**order, rel=0.2)


def test_dopri5_tighter_tolerance_is_more_accurate(noise):
    z = noise[:2000]

    loose, loose_evaluations = dopri5(gaussian_velocity, z, rtol=1e-3, atol=1e-3)
    tight, tight_evaluations = dopri5(gaussian_velocity, z, rtol=1e-8, atol=1e-8)

    assert max_error(tight, z) < 1e-6
    assert max_error(tight, z) < max_error(loose, z) / 100
    assert tight_evaluations > loose_evaluations


def test_dopri5_exponential_growth():
    x0 = torch.ones(2, 1, dtype=torch.float64)

    x1, _ = dopri5(lambda x, t: x, x0, rtol=1e-10, atol=1e-10)

    assert torch.allclose(x1, torch.full_like(x0, math.e), rtol=0, atol=1e-8)


def test_dopri5_tableau_order_conditions():
    # Row sums of A equal C, and the quadrature conditions sum_i b_i c_i^(k-1) = 1 / k
    # hold up to order 5 for the kept solution and order 4 for the embedded one.
    for row, c in zip(A, C):
        assert sum(row) == pytest.approx(c, abs=1e-14)
    for k in range(1, 6):
        assert sum(b * c ** (k - 1) for b, c in zip(B5, C)) == pytest.approx(1 / k, abs=1e-14)
    for k in range(1, 5):
        assert sum(b * c ** (k - 1) for b, c in zip(B4, C)) == pytest.approx(1 / k, abs=1e-14)
    # The embedded solution must differ, otherwise the error estimate is always zero.
    assert sum(b * c**4 for b, c in zip(B4, C)) != pytest.approx(1 / 5, abs=1e-6)


@pytest.mark.parametrize("solver", ["euler", "heun", "dopri5"])
def test_solver_from_intermediate_time(noise, solver):
    z = noise[:1000]
    x_start = exact_state(z, 0.3)
    options = {"rtol": 1e-7, "atol": 1e-7} if solver == "dopri5" else {}

    x1 = solve(gaussian_velocity, x_start, solver, 400, t_start=0.3, **options)

    assert max_error(x1, z) < 0.02


@pytest.mark.parametrize(("solver", "tolerance"), [(euler, 0.15), (heun, 3e-3)])
def test_fixed_step_with_shift(noise, solver, tolerance):
    # The shifted grid must still converge. The tolerances are about twice the errors
    # measured at 100 steps (0.09 for Euler, 0.0012 for Heun).
    x1 = solver(gaussian_velocity, noise[:1000], 100, shift=0.5)

    assert max_error(x1, noise[:1000]) < tolerance


def test_heun_euler_last_step(noise):
    z = noise[:100]

    x1 = heun(gaussian_velocity, z, 50, euler_last_step=True)

    assert max_error(x1, z) < 0.01


def test_callback_sees_every_step(noise):
    records = []

    def callback(step, t, x):
        records.append((step, t.clone(), x.shape))

    heun(gaussian_velocity, noise[:8], 5, callback=callback)

    assert [step for step, _, _ in records] == [0, 1, 2, 3, 4]
    assert all(t.shape == (8,) for _, t, _ in records)
    assert records[-1][1].eq(1.0).all()
    assert records[0][1].eq(0.2).all()


def test_dopri5_callback_ends_at_t_end(noise):
    times = []

    _, _ = dopri5(gaussian_velocity, noise[:8], t_end=0.9, callback=lambda s, t, x: times.append(t[0].item()))

    assert len(times) >= 1
    assert times[-1] == 0.9
    assert times == sorted(times)


@pytest.mark.parametrize(("solver", "tolerance"), [("euler", 0.06), ("heun", 5e-3), ("dopri5", 1e-3)])
def test_solvers_propagate_gradients(noise, solver, tolerance):
    z = noise[:16].clone().requires_grad_(True)

    x1 = solve(gaussian_velocity, z, solver, 100)
    x1.sum().backward()

    # The exact flow map is x1 = MEAN + STD * z, so d x1 / d z = STD per dimension.
    relative_error = (z.grad / STD - 1).abs().max().item()
    assert relative_error < tolerance


def test_solvers_keep_float32(noise):
    z = noise[:4].float()

    assert euler(gaussian_velocity, z, 3).dtype == torch.float32
    assert heun(gaussian_velocity, z, 3).dtype == torch.float32
    assert dopri5(gaussian_velocity, z)[0].dtype == torch.float32


def test_dopri5_max_steps_error(noise):
    with pytest.raises(RuntimeError, match="reached max_steps=2"):
        dopri5(gaussian_velocity, noise[:8], rtol=1e-10, atol=1e-10, max_steps=2)


def test_dopri5_rejects_non_finite_velocity(noise):
    with pytest.raises(RuntimeError, match="non-finite"):
        dopri5(lambda x, t: torch.full_like(x, float("nan")), noise[:8])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rtol": 0.0, "atol": 0.0}, "not both 0"),
        ({"t_start": 0.5, "t_end": 0.5}, "t_start < t_end"),
        ({"max_steps": 0}, "max_steps must be >= 1"),
        ({"first_step": 2.0}, "first_step must be in"),
    ],
)
def test_dopri5_rejects_bad_options(noise, options, message):
    with pytest.raises(ValueError, match=message):
        dopri5(gaussian_velocity, noise[:4], **options)


def test_solvers_reject_wrong_velocity_shape(noise):
    with pytest.raises(ValueError, match=r"velocity_fn returned shape \(4, 2\)"):
        euler(lambda x, t: x[:, :2], noise[:4], 3)


def test_solvers_reject_integer_state():
    with pytest.raises(ValueError, match="x0 must be a floating-point tensor"):
        heun(gaussian_velocity, torch.zeros(2, 4, dtype=torch.long), 3)


@pytest.mark.parametrize(
    ("solver", "steps", "options", "expected_evaluations"),
    [
        ("euler", 7, {}, 7),
        ("heun", 7, {}, 14),
        ("heun", 7, {"euler_last_step": True}, 13),
    ],
)
def test_solve_counts_evaluations(noise, solver, steps, options, expected_evaluations):
    _, evaluations = solve(gaussian_velocity, noise[:4], solver, steps, return_evaluations=True, **options)

    assert evaluations == expected_evaluations


def test_solve_dispatches_by_name(noise):
    z = noise[:32]

    assert torch.equal(solve(gaussian_velocity, z, "euler", 9), euler(gaussian_velocity, z, 9))
    assert torch.equal(solve(gaussian_velocity, z, SolverName.HEUN, 9), heun(gaussian_velocity, z, 9))
    assert torch.equal(solve(gaussian_velocity, z, "DOPRI5"), dopri5(gaussian_velocity, z)[0])

    _, evaluations = solve(gaussian_velocity, z, "dopri5", return_evaluations=True)
    assert evaluations == dopri5(gaussian_velocity, z)[1]


def test_solve_rejects_unknown_name(noise):
    with pytest.raises(ValueError, match="unknown solver 'rk4'; valid names are: euler, heun, dopri5"):
        solve(gaussian_velocity, noise[:4], "rk4")


def test_solve_rejects_unknown_option(noise):
    with pytest.raises(TypeError, match="rtol"):
        solve(gaussian_velocity, noise[:4], "euler", 3, rtol=1e-3)
