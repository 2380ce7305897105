"""Shared test helpers: a registry of ODE problems with independent reference solutions.

Each problem is written once with TensorFlow ops (so tfode can integrate it in
either float dtype), once with numpy, and has an independent reference: a
closed form where one exists (``numpy``/``scipy.linalg.expm``), otherwise
scipy's DOP853 at ``rtol = atol = 1e-12``, four orders of magnitude below the
tightest tolerance the tests ask of tfode.

Compiled solvers are cached per (method, problems): ``y0``, ``t`` and the
tolerances (or the step size) are tensor arguments, so both time directions and
every tolerance share one trace per dtype. Tracing costs about a second and an
eager step tens of milliseconds, so the suite runs its sweeps in graph mode and
keeps eager runs to a few dozen steps.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import scipy.integrate  # noqa: E402
import scipy.linalg  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfode  # noqa: E402
from tfode import tableaus  # noqa: E402

ADAPTIVE_METHODS = [m for m in tfode.method_names() if tableaus.get_tableau(m).adaptive]
FIXED_METHODS = [m for m in tfode.method_names() if not tableaus.get_tableau(m).adaptive]


@dataclasses.dataclass(frozen=True)
class Problem:
    """An initial-value problem ``y' = f(t, y)``, ``y(t0) = y0``, with a reference solution.

    Attributes:
        name: registry key.
        f: ``f(t, y) -> dy/dt`` in TensorFlow ops; ``y`` is ``[dim]``.
        f_np: the same vector field in numpy (``y`` a ``[dim]`` array).
        y0: ``[dim]`` float64 state at ``t_span[0]``.
        t_span: ``(t0, t1)``, the interval the tests integrate over.
        exact: ``exact(ts) -> [len(ts), dim]`` float64 reference at any ``ts`` in ``t_span``.
    """

    name: str
    f: Callable
    f_np: Callable
    y0: np.ndarray
    t_span: tuple
    exact: Callable

    def start(self, ts):
        """The reference state at ``ts[0]``: the initial value for a solve over ``ts``."""
        return self.exact(np.asarray(ts[:1]))[0]


def _dop853(f_np, y0, t_span):
    """``exact(ts)`` from scipy's DOP853 at rtol = atol = 1e-12, hitting each requested time."""

    @functools.cache
    def at(ts):
        ts = np.asarray(ts)
        grid = np.unique(ts)
        sol = scipy.integrate.solve_ivp(f_np, t_span, y0, method="DOP853", rtol=1e-12, atol=1e-12, t_eval=grid)
        assert sol.success, sol.message
        return sol.y.T[np.searchsorted(grid, ts)]

    return lambda ts: at(tuple(float(x) for x in np.atleast_1d(ts)))


def _exponential_decay():
    rates = np.array([0.5, 1.0, 2.0])
    y0 = np.array([1.0, -2.0, 0.5])
    return Problem(
        name="exponential_decay",
        f=lambda t, y: -tf.constant(rates, y.dtype) * y,
        f_np=lambda t, y: -rates * y,
        y0=y0,
        t_span=(0.0, 3.0),
        exact=lambda ts: y0 * np.exp(-np.outer(ts, rates)),
    )


def _linear_system():
    # A damped rotation (eigenvalues -0.1 +- 2i) driving a decaying mode: non-normal matrix.
    a = np.array([[-0.1, -2.0, 0.0], [2.0, -0.1, 0.0], [0.5, 0.0, -1.0]])
    y0 = np.array([1.0, 0.0, 1.0])
    return Problem(
        name="linear_system",
        f=lambda t, y: tf.linalg.matvec(tf.constant(a, y.dtype), y),
        f_np=lambda t, y: a @ y,
        y0=y0,
        t_span=(0.0, 3.0),
        exact=lambda ts: np.stack([scipy.linalg.expm(a * t) @ y0 for t in np.atleast_1d(ts)]),
    )


def _time_dependent():
    # y' = cos(t) y  =>  y = y0 exp(sin t): the vector field depends on t explicitly.
    y0 = np.array([1.0, 0.5])
    return Problem(
        name="time_dependent",
        f=lambda t, y: tf.cos(t) * y,
        f_np=lambda t, y: np.cos(t) * y,
        y0=y0,
        t_span=(0.0, 3.0),
        exact=lambda ts: y0 * np.exp(np.sin(np.atleast_1d(ts)))[:, None],
    )


def _lotka_volterra():
    alpha, beta, gamma, delta = 1.5, 1.0, 3.0, 1.0
    y0 = np.array([1.0, 1.0])

    def f(t, y):
        return tf.stack([alpha * y[0] - beta * y[0] * y[1], -gamma * y[1] + delta * y[0] * y[1]])

    def f_np(t, y):
        return np.array([alpha * y[0] - beta * y[0] * y[1], -gamma * y[1] + delta * y[0] * y[1]])

    t_span = (0.0, 3.0)
    return Problem("lotka_volterra", f, f_np, y0, t_span, _dop853(f_np, y0, t_span))


def _van_der_pol():
    mu = 1.0
    y0 = np.array([2.0, 0.0])

    def f(t, y):
        return tf.stack([y[1], mu * (1.0 - y[0] ** 2) * y[1] - y[0]])

    def f_np(t, y):
        return np.array([y[1], mu * (1.0 - y[0] ** 2) * y[1] - y[0]])

    t_span = (0.0, 3.0)
    return Problem("van_der_pol", f, f_np, y0, t_span, _dop853(f_np, y0, t_span))


def _gudermannian():
    # y' = cos(y), y(0) = 0  =>  y = arcsin(tanh t), the Gudermannian function. Smooth,
    # nonlinear, with a closed form accurate to round-off: the convergence-order sweeps
    # need errors down to ~1e-12, below what a DOP853 reference could certify.
    return Problem(
        name="gudermannian",
        f=lambda t, y: tf.cos(y),
        f_np=lambda t, y: np.cos(y),
        y0=np.array([0.0]),
        t_span=(0.0, 3.0),
        exact=lambda ts: np.arcsin(np.tanh(np.atleast_1d(ts)))[:, None],
    )


PROBLEMS = {
    p.name: p
    for p in (
        _exponential_decay(),
        _linear_system(),
        _time_dependent(),
        _lotka_volterra(),
        _van_der_pol(),
        _gudermannian(),
    )
}


def max_error_ratio(ys, reference, rtol, atol):
    """``max |y - ref| / (atol + rtol * |ref|)`` over every output time and element."""
    ys = np.asarray(ys, dtype=np.float64)
    return float(np.max(np.abs(ys - reference) / (atol + rtol * np.abs(reference))))


def _field(names):
    """The vector field of several problems integrated side by side as a dict state."""
    problems = [PROBLEMS[name] for name in names]
    return lambda t, y: {p.name: p.f(t, y[p.name]) for p in problems}


def initial_state(names, ts, dtype):
    """``{name: y(ts[0])}`` for a side-by-side solve over ``ts``."""
    return {name: tf.constant(PROBLEMS[name].start(ts), dtype) for name in names}


# autograph=False: tfode's loop is explicit tf.while_loop, and autograph would re-convert
# its per-call closures on every trace, doubling the cost of tracing. (The tests of
# compilation modes use a default tf.function, autograph included.)


@functools.cache
def adaptive_solver(method, names):
    """A cached ``tf.function(y0, t, rtol, atol) -> Solution`` over the problems ``names``.

    The problems are integrated side by side as one dict state, so the steps are
    those the hardest one needs; tracing one solve for several problems costs about
    half as much as tracing them separately. No assert: check ``stats.status``.
    """
    field = _field(names)

    @functools.partial(tf.function, autograph=False)
    def run(y0, t, rtol, atol):
        return tfode.solve(field, y0, t, method=method, rtol=rtol, atol=atol, raise_on_failure=False)

    return run


@functools.cache
def fixed_solver(method, names, grid=False):
    """A cached ``tf.function(y0, t, step_size) -> Solution`` for fixed-step runs.

    ``method`` may be a name or a ``ButcherTableau``. With ``grid=True`` the
    step-size argument is ignored and the solver steps on the grid of ``t``.
    Fixed steps do not depend on the other problems, so side by side is exact.
    """
    field = _field(names)

    @functools.partial(tf.function, autograph=False)
    def run(y0, t, step_size):
        options = None if grid else {"step_size": step_size}
        return tfode.solve(field, y0, t, method=method, options=options, raise_on_failure=False)

    return run
