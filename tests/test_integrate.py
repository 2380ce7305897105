"""Tests for tfode/integrate.py: the integration loop, driven through ``tfode.solve``.

Accuracy is measured against independent references (closed forms, scipy's
DOP853 and a numpy Runge–Kutta loop), convergence orders by regression on
fixed-step sweeps, and the loop's bookkeeping (function evaluations, steps,
dense output, nested states, per-leaf tolerances) against exact identities.
Sweeps run through the cached compiled solvers of ``conftest.py``.
"""

from __future__ import annotations

import dataclasses
import functools

import keras
import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf
from conftest import (
    ADAPTIVE_METHODS,
    FIXED_METHODS,
    PROBLEMS,
    adaptive_solver,
    fixed_solver,
    initial_state,
    max_error_ratio,
)

import tfode
from tfode.tableaus import get_tableau

# --------------------------------------------------------------------------- adaptive accuracy

# Tolerances (rtol = atol) for float64. Steps scale as tol**(-1/q), so the low-order
# methods get looser ones to keep step counts in the hundreds to low thousands.
TOL64 = {"dopri5": 1e-8, "tsit5": 1e-8, "dopri8": 1e-8, "bosh3": 1e-7, "fehlberg2": 1e-7, "adaptive_heun": 1e-5}
TOL32 = 1e-5

# Bound on max |y - ref| / (tol * (1 + |ref|)) over all outputs. Step control bounds the
# error per step, so over t in [0, 3] the global error is a small multiple of tol: measured
# at most 14 (dopri5 at tol 1e-5 on lotka_volterra, at an interior output; scipy's RK45
# gives 13 there) and at most 6 for tsit5, bosh3, adaptive_heun and dopri8.
ERROR_FACTOR = dict.fromkeys(ADAPTIVE_METHODS, 25.0)
# fehlberg2 propagates its 2nd-order solution but controls the 1st-order estimate, whose
# error constant is 1/512 (b_error = +-1/512): global error / tol ~ 512 * T * |y'''| / |y''|
# is independent of tol and grows with the problem's frequency. README says 10-100x; here
# it is measured 14-800x (800x on linear_system, eigenvalues -0.1 +- 2i; up to 1200x with
# the earlier PI controller). A first-order solver would be off by > 1e4 x tol.
ERROR_FACTOR["fehlberg2"] = 2500.0

FLOAT64_PROBLEMS = ("exponential_decay", "linear_system", "time_dependent", "lotka_volterra", "van_der_pol")
# Backwards in time, exponential decay grows like exp(6) and van der Pol leaves its attracting
# limit cycle: errors are amplified far beyond the local tolerance, so the reverse direction
# is checked on the problems whose flow is not strongly contracting.
REVERSIBLE_PROBLEMS = ("linear_system", "time_dependent", "lotka_volterra")
FLOAT32_PROBLEMS = ("time_dependent", "lotka_volterra")
ACCURACY_CASES = (
    [(name, "float64", False) for name in FLOAT64_PROBLEMS]
    + [(name, "float64", True) for name in REVERSIBLE_PROBLEMS]
    + [(name, "float32", reverse) for name in FLOAT32_PROBLEMS for reverse in (False, True)]
)


def _times(reverse, num=7):
    ts = np.linspace(0.0, 3.0, num)
    return ts[::-1].copy() if reverse else ts


def _solve_side_by_side(method, names, dtype, tol, ts):
    run = adaptive_solver(method, names)
    tol = tf.constant(tol, dtype)
    return run(initial_state(names, ts, dtype), tf.constant(ts, dtype), tol, tol)


@functools.cache
def _accuracy_solve(method, dtype, reverse):
    """One solve of all the problems of a dtype side by side, shared by the per-problem tests."""
    names = FLOAT64_PROBLEMS if dtype == "float64" else FLOAT32_PROBLEMS
    tol = TOL64[method] if dtype == "float64" else TOL32
    return tol, _solve_side_by_side(method, names, dtype, tol, _times(reverse))


@pytest.mark.parametrize("problem_name, dtype, reverse", ACCURACY_CASES)
@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_adaptive_accuracy(method, problem_name, dtype, reverse):
    """All 7 outputs (5 interior, from dense output) are within a small multiple of tol."""
    problem = PROBLEMS[problem_name]
    ts = _times(reverse)
    tol, sol = _accuracy_solve(method, dtype, reverse)
    assert int(sol.stats.status) == tfode.Status.SUCCESS
    ys = sol.ys[problem_name]
    assert ys.dtype == dtype and ys.shape == (7, len(problem.y0))
    np.testing.assert_array_equal(ys[0], tf.constant(problem.start(ts), dtype))
    ratio = max_error_ratio(ys, problem.exact(ts), tol, tol)
    assert ratio < ERROR_FACTOR[method], f"error is {ratio:.3g} x tol"


def _max_scaled_error(sol, names, ts):
    errors = []
    for name in names:
        exact = PROBLEMS[name].exact(ts)
        errors.append(np.max(np.abs(sol.ys[name].numpy() - exact) / (1.0 + np.abs(exact))))
    return max(errors)


@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_tighter_tolerance_lowers_error_and_raises_cost(method):
    ts = _times(False)
    tight, tight_sol = _accuracy_solve(method, "float64", False)
    loose_sol = _solve_side_by_side(method, FLOAT64_PROBLEMS, "float64", 100 * tight, ts)
    assert int(loose_sol.stats.status) == tfode.Status.SUCCESS
    loose_error = _max_scaled_error(loose_sol, FLOAT64_PROBLEMS, ts)
    tight_error = _max_scaled_error(tight_sol, FLOAT64_PROBLEMS, ts)
    # The global error tracks tol: expect ~100x smaller, require at least 10x.
    assert tight_error < loose_error / 10
    assert int(tight_sol.stats.num_fn_evals) > int(loose_sol.stats.num_fn_evals)


LV = ("lotka_volterra",)


def test_output_times_do_not_change_the_steps():
    """Dense output: asking for 5 interior times costs nothing and leaves the end state unchanged."""
    ts = _times(False)
    dense = _solve_side_by_side("dopri5", LV, "float64", 1e-8, ts)
    ends = _solve_side_by_side("dopri5", LV, "float64", 1e-8, ts[[0, -1]])
    assert int(dense.stats.num_fn_evals) == int(ends.stats.num_fn_evals)
    assert int(dense.stats.num_steps) == int(ends.stats.num_steps)
    np.testing.assert_allclose(dense.ys[LV[0]][-1], ends.ys[LV[0]][-1], rtol=1e-14)


# --------------------------------------------------------------------------- fixed-step accuracy

FIXED_PROBLEMS = ("time_dependent", "lotka_volterra")
FIXED_H = {"euler": 0.005, "midpoint": 0.02, "rk4": 0.05}
# Bounds on max |y - ref| over the outputs of both problems, ~3x the measured errors
# (euler 0.15, midpoint 7.6e-3, rk4 4.4e-5 with Hermite dense output; lotka_volterra
# dominates). The exact check is the comparison with the numpy loop; these bounds catch
# a loop that is consistent with itself but wrong.
FIXED_ERROR_BOUND = {"euler": 0.45, "midpoint": 0.025, "rk4": 1.3e-4}


def _numpy_rk(tableau, f_np, y0, ts):
    """An independent explicit Runge–Kutta loop over the grid ``ts`` (numpy, float64)."""
    ys = [np.asarray(y0, dtype=np.float64)]
    for t0, t1 in zip(ts[:-1], ts[1:], strict=True):
        h, y = t1 - t0, ys[-1]
        k = []
        for i in range(tableau.num_stages):
            y_stage = y + h * sum((a_ij * k_j for a_ij, k_j in zip(tableau.a[i], k, strict=True)), np.zeros_like(y))
            k.append(f_np(t0 + tableau.c[i] * h, y_stage))
        ys.append(y + h * sum(b_i * k_i for b_i, k_i in zip(tableau.b, k, strict=True)))
    return np.stack(ys)


def _max_fixed_error(sol, ts):
    return max(np.max(np.abs(sol.ys[name].numpy() - PROBLEMS[name].exact(ts))) for name in FIXED_PROBLEMS)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("method", FIXED_METHODS)
def test_fixed_step_on_grid_matches_numpy_and_reference(method, reverse):
    tableau = get_tableau(method)
    n = round(3.0 / FIXED_H[method])
    ts = _times(reverse, n + 1)
    run = fixed_solver(method, FIXED_PROBLEMS, grid=True)
    sol = run(initial_state(FIXED_PROBLEMS, ts, "float64"), tf.constant(ts), tf.constant(0.0, tf.float64))
    assert int(sol.stats.status) == tfode.Status.SUCCESS
    # One step per grid interval, one evaluation for f(t0, y0), and per step the new stages.
    assert int(sol.stats.num_steps) == int(sol.stats.num_accepted) == n
    assert int(sol.stats.num_fn_evals) == 1 + n * tableau.fn_evals_per_step
    for name in FIXED_PROBLEMS:
        problem = PROBLEMS[name]
        expected = _numpy_rk(tableau, problem.f_np, problem.start(ts), ts)
        np.testing.assert_allclose(sol.ys[name], expected, rtol=1e-10, atol=1e-12)
    assert _max_fixed_error(sol, ts) < FIXED_ERROR_BOUND[method]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("method", FIXED_METHODS)
def test_fixed_step_size_with_dense_output(method, reverse):
    """``options={"step_size": h}``: outputs off the step grid come from the Hermite interpolant."""
    tableau, h = get_tableau(method), FIXED_H[method]
    ts = np.array([0.0, 0.3127, 1.2345, 2.2222, 3.0])  # interior times are not multiples of h
    ts = ts[::-1].copy() if reverse else ts
    run = fixed_solver(method, FIXED_PROBLEMS)
    sol = run(initial_state(FIXED_PROBLEMS, ts, "float64"), tf.constant(ts), tf.constant(h, tf.float64))
    assert int(sol.stats.status) == tfode.Status.SUCCESS
    n = round(3.0 / h)
    assert int(sol.stats.num_steps) == n
    assert int(sol.stats.num_fn_evals) == 1 + n * tableau.fn_evals_per_step
    assert _max_fixed_error(sol, ts) < FIXED_ERROR_BOUND[method]
    # The end state is the numpy loop's over the same steps.
    grid = np.linspace(ts[0], ts[-1], n + 1)
    for name in FIXED_PROBLEMS:
        problem = PROBLEMS[name]
        expected = _numpy_rk(tableau, problem.f_np, problem.start(ts), grid)[-1]
        np.testing.assert_allclose(sol.ys[name][-1], expected, rtol=1e-9)


# --------------------------------------------------------------------------- convergence order

# Step counts over t in [0, 3] per order, chosen so the errors fall between ~1e-3 and
# ~1e-12: in the asymptotic regime and above float64 round-off.
STEP_COUNTS = {
    1: (64, 128, 256, 512),
    2: (32, 64, 128, 256),
    3: (16, 32, 64, 128),
    4: (16, 32, 64, 128),
    5: (8, 16, 32, 64),
    8: (6, 8, 10, 12),
}


def _fixed_step_tableau(method):
    """The method's tableau with its error estimate removed, so that it takes fixed steps."""
    tableau = get_tableau(method)
    return dataclasses.replace(tableau, b_error=None, embedded_order=None) if tableau.adaptive else tableau


@functools.cache
def _convergence_sweep(method):
    """Fixed-step errors on the gudermannian problem: ``(hs, end_errors, mid_step_errors)``.

    Mid-step errors are the max over three outputs at theta = 1/2 of steps near
    t = T/4, T/2, 3T/4, so they measure the dense output, not the step's solution.
    """
    problem = PROBLEMS["gudermannian"]
    tableau = _fixed_step_tableau(method)
    run = fixed_solver(tableau, ("gudermannian",))
    t_end = problem.t_span[1]
    hs, end_errors, mid_errors = [], [], []
    for n in STEP_COUNTS[tableau.order]:
        h = t_end / n
        ts = np.array([0.0, *((k + 0.5) * h for k in (n // 4, n // 2, 3 * n // 4)), t_end])
        sol = run(initial_state(("gudermannian",), ts, "float64"), tf.constant(ts), tf.constant(h, tf.float64))
        assert int(sol.stats.status) == tfode.Status.SUCCESS and int(sol.stats.num_steps) == n
        errors = np.abs(sol.ys["gudermannian"].numpy() - problem.exact(ts))[:, 0]
        hs.append(h)
        end_errors.append(errors[-1])
        mid_errors.append(errors[1:-1].max())
    return np.array(hs), np.array(end_errors), np.array(mid_errors)


def _slope(hs, errors):
    return np.polyfit(np.log(hs), np.log(errors), 1)[0]


@pytest.mark.parametrize("method", tfode.method_names())
def test_convergence_order(method):
    hs, end_errors, _ = _convergence_sweep(method)
    order = get_tableau(method).order
    slope = _slope(hs, end_errors)
    assert abs(slope - order) <= 0.5, f"empirical order {slope:.2f}, nominal {order}"


@pytest.mark.parametrize("method", tfode.method_names())
def test_dense_output_convergence_order(method):
    """Error at mid-step outputs: global error O(h^p) plus interpolation error O(h^(p*+1)).

    dopri5/tsit5/dopri8 must converge at least at order 4 (measured: 5.6, 5.7, 6.4).
    The cubic Hermite interpolant of the other methods converges at min(p, 4).
    """
    hs, _, mid_errors = _convergence_sweep(method)
    slope = _slope(hs, mid_errors)
    if get_tableau(method).dense.shape[1] > 3:  # the method's own continuous extension
        assert slope >= 4 - 0.5, f"dense-output order {slope:.2f}"
    else:
        expected = min(get_tableau(method).order, 4)
        assert abs(slope - expected) <= 0.5, f"dense-output order {slope:.2f}, expected {expected}"


# --------------------------------------------------------------------------- compilation modes


@pytest.mark.parametrize("method, options", [("dopri5", None), ("rk4", {"step_size": 0.1})])
def test_eager_graph_and_xla_agree(method, options):
    """The same call eagerly, in a (default, autograph) tf.function and under XLA."""
    problem = PROBLEMS["time_dependent"]  # a cheap vector field: XLA compiles cost seconds
    ts = np.linspace(0.0, 1.5, 4)

    def run(y0):
        return tfode.solve(problem.f, y0, ts, method=method, rtol=1e-6, atol=1e-6, options=options)

    y0 = tf.constant(problem.y0)
    eager = run(y0)
    for compiled in (tf.function(run)(y0), tf.function(run, jit_compile=True)(y0)):
        for field in ("num_fn_evals", "num_steps", "num_accepted", "num_rejected", "status"):
            assert int(getattr(compiled.stats, field)) == int(getattr(eager.stats, field)), field
        np.testing.assert_allclose(compiled.ys, eager.ys, rtol=1e-10, atol=1e-12)
    # And the common answer is right (measured 4.4x tol for dopri5, 0.3x for rk4 with h = 0.1).
    assert max_error_ratio(eager.ys, problem.exact(ts), 1e-6, 1e-6) < ERROR_FACTOR["dopri5"]


def test_tensor_tolerances_do_not_retrace():
    problem = PROBLEMS["lotka_volterra"]
    ts = _times(False, 4)
    traces = []

    @tf.function
    def num_fn_evals(rtol, atol):
        traces.append(1)  # runs only while tracing
        return tfode.solve(problem.f, tf.constant(problem.y0), ts, rtol=rtol, atol=atol).stats.num_fn_evals

    evals = [
        int(num_fn_evals(tf.constant(tol, tf.float64), tf.constant(tol, tf.float64))) for tol in (1e-3, 1e-5, 1e-7)
    ]
    assert len(traces) == 1
    assert num_fn_evals.experimental_get_tracing_count() == 1
    assert evals[0] < evals[1] < evals[2]  # the tensors' values are really used


# --------------------------------------------------------------------------- nested states and tolerances


def test_tuple_state_eager():
    decay, cos = PROBLEMS["exponential_decay"], PROBLEMS["time_dependent"]
    ts = np.array([0.0, 0.5, 1.5])
    tol = 1e-5
    ys = tfode.odeint(
        lambda t, y: (decay.f(t, y[0]), cos.f(t, y[1])),
        (tf.constant(decay.y0), tf.constant(cos.y0)),
        ts,
        method="tsit5",
        rtol=tol,
        atol=tol,
    )
    assert isinstance(ys, tuple) and len(ys) == 2
    assert ys[0].shape == (3, 3) and ys[1].shape == (3, 2)
    assert max_error_ratio(ys[0], decay.exact(ts), tol, tol) < ERROR_FACTOR["tsit5"]
    assert max_error_ratio(ys[1], cos.exact(ts), tol, tol) < ERROR_FACTOR["tsit5"]


def test_dict_state_with_per_leaf_tolerances():
    """Each leaf's tolerance applies to that leaf: the norm is the max over leaves.

    Two copies of one problem with tolerances {tight, loose} must take exactly the
    steps of the single problem at the tight tolerance, whichever key is tight.
    """
    problem = PROBLEMS["lotka_volterra"]
    ts = _times(False)
    tight, loose = 1e-8, 1e-3

    @functools.partial(tf.function, autograph=False)
    def run(rtol, atol):
        y0 = tf.constant(problem.y0)
        return tfode.solve(
            lambda t, y: {"a": problem.f(t, y["a"]), "b": problem.f(t, y["b"])},
            {"a": y0, "b": y0},
            ts,
            rtol=rtol,
            atol=atol,
        )

    single = _solve_side_by_side("dopri5", LV, "float64", tight, ts)
    single_ys = single.ys[LV[0]]

    def tols(a, b):
        return {"a": tf.constant(a, tf.float64), "b": tf.constant(b, tf.float64)}

    for rtol in (tols(tight, loose), tols(loose, tight)):
        sol = run(rtol, rtol)
        assert set(sol.ys) == {"a", "b"}
        assert int(sol.stats.num_fn_evals) == int(single.stats.num_fn_evals)
        for key in ("a", "b"):
            np.testing.assert_allclose(sol.ys[key], single_ys, rtol=1e-13)
    both_loose = run(tols(loose, loose), tols(loose, loose))
    assert int(both_loose.stats.num_fn_evals) < int(single.stats.num_fn_evals)


def test_per_element_tolerance_tensor():
    """Per-element tolerances enter the RMS element by element.

    Two copies of a 2-d problem stacked into [4] with tolerances (tau, tau, loose, loose):
    the loose half contributes ~1e-10 of the squared norm, so this is the single problem
    at tolerance tau * sqrt(2) (the RMS over 4 elements instead of 2).
    """
    problem = PROBLEMS["lotka_volterra"]
    ts = _times(False)
    tau, loose = 1e-8, 1e-3

    @functools.partial(tf.function, autograph=False)
    def run(rtol, atol):
        y0 = tf.constant(np.concatenate([problem.y0, problem.y0]))

        def field(t, y):
            return tf.concat([problem.f(t, y[:2]), problem.f(t, y[2:])], axis=0)

        return tfode.solve(field, y0, ts, rtol=rtol, atol=atol)

    tol = tf.constant([tau, tau, loose, loose], tf.float64)
    sol = run(tol, tol)
    single = _solve_side_by_side("dopri5", LV, "float64", tau * np.sqrt(2.0), ts)
    assert int(sol.stats.num_fn_evals) == int(single.stats.num_fn_evals)
    np.testing.assert_allclose(sol.ys[:, :2], single.ys[LV[0]], rtol=1e-9)
    assert max_error_ratio(sol.ys[:, :2], problem.exact(ts), tau, tau) < ERROR_FACTOR["dopri5"]


def test_zero_size_leaf():
    """An empty leaf (e.g. an empty batch) has nothing to control: the others solve as usual.

    Regression: its RMS norm used to be sqrt(mean([])) = NaN, so every step was rejected.
    """
    y0 = {"a": tf.constant([1.0, 2.0]), "b": tf.zeros([0, 3])}
    sol = tfode.solve(
        lambda t, y: {"a": -y["a"], "b": -y["b"]},
        y0,
        [0.0, 1.0],
        rtol=1e-3,
        atol=1e-3,
        options={"max_num_steps": 30},  # ~6 steps when it works; keeps a failure cheap
        raise_on_failure=False,
    )
    assert int(sol.stats.status) == tfode.Status.SUCCESS
    assert sol.ys["b"].shape == (2, 0, 3)
    np.testing.assert_allclose(sol.ys["a"][-1], np.exp(-1.0) * np.array([1.0, 2.0]), rtol=1e-2)


# --------------------------------------------------------------------------- bookkeeping


@pytest.mark.parametrize("method", tfode.method_names())
def test_num_fn_evals_counts_every_call(method):
    """Eagerly, ``num_fn_evals`` equals the number of times ``func`` ran, rejected steps included."""
    problem = PROBLEMS["lotka_volterra"]
    tableau = get_tableau(method)
    calls = []

    def func(t, y):
        calls.append(float(t))
        return problem.f(t, y)

    # An oversized first step forces at least one rejection (the 5th/8th-order methods
    # need a tighter tolerance to reject it); few enough steps to run eagerly.
    options = {"first_step": 1.0} if tableau.adaptive else {"step_size": 0.25}
    tol = 1e-6 if tableau.order >= 5 else 1e-3
    sol = tfode.solve(
        func, tf.constant(problem.y0), [0.0, 0.7, 1.5], method=method, rtol=tol, atol=tol, options=options
    )
    stats = sol.stats
    assert len(calls) == int(stats.num_fn_evals)
    assert int(stats.num_steps) == int(stats.num_accepted) + int(stats.num_rejected)
    assert int(stats.num_fn_evals) == 1 + tableau.fn_evals_per_step * int(stats.num_steps)
    if tableau.adaptive:
        assert int(stats.num_rejected) >= 1
    else:
        assert int(stats.num_steps) == 6 and int(stats.num_rejected) == 0


def test_num_fn_evals_includes_initial_step_selection():
    calls = []

    def func(t, y):
        calls.append(1)
        return -y

    # Counting calls needs every evaluation in Python: plain eager (a cached eager call traces once).
    sol = tfode.solve(func, tf.constant([1.0, 2.0]), [0.0, 1.0], method="bosh3", rtol=1e-3, atol=1e-3,
                      eager_cache=False)  # fmt: skip
    # f(t0, y0), one explicit Euler probe for Hairer's initial step, then 3 per step.
    assert len(calls) == int(sol.stats.num_fn_evals) == 2 + 3 * int(sol.stats.num_steps)


# --------------------------------------------------------------------------- Keras vector field


def _dense_layer_exact(layer, y0, ts):
    """y' = y W + b for a row-vector batch: exp of the augmented matrix [[W^T, b], [0, 0]]."""
    kernel, bias = (np.asarray(w, dtype=np.float64) for w in layer.get_weights())
    dim = kernel.shape[0]
    m = np.zeros((dim + 1, dim + 1))
    m[:dim, :dim], m[:dim, dim] = kernel.T, bias
    aug = np.concatenate([np.asarray(y0, np.float64), np.ones((len(y0), 1))], axis=1)
    return np.stack([aug @ scipy.linalg.expm(m * t).T for t in ts])[..., :dim]


def test_keras_layer_as_vector_field():
    layer = keras.layers.Dense(
        3,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=1),
        bias_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=2),
    )
    y0 = tf.constant(np.random.default_rng(0).normal(size=(4, 3)), tf.float32)
    ts = np.array([0.0, 0.4, 1.0])
    tol = 1e-5

    def run(y0):
        return tfode.odeint(lambda t, y: layer(y), y0, ts, method="dopri5", rtol=tol, atol=tol)

    eager = run(y0)
    graph = tf.function(run)(y0)
    assert eager.shape == graph.shape == (3, 4, 3) and eager.dtype == tf.float32
    np.testing.assert_allclose(graph, eager, rtol=1e-5, atol=1e-6)
    assert max_error_ratio(eager, _dense_layer_exact(layer, y0, ts), tol, tol) < ERROR_FACTOR["dopri5"]


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_many_outputs_per_step_batched_writes_match_xla_loop(direction):
    """Graph mode writes all output times covered by a step at once; XLA writes them one by one.

    Nested leaves of different ranks, 101 output times (several per step, one repeated forward), both
    directions of time: both paths give the same outputs, and they match the exact solution.
    """
    # Repeated times (internal option, used by the latent models) only for increasing t.
    ts = np.concatenate([np.linspace(0.0, 2.0, 100), [2.0]]) if direction > 0 else np.linspace(0.0, -2.0, 101)

    def run():
        y0 = {"scalar": tf.constant(1.0, tf.float64), "matrix": tf.ones([3, 2], tf.float64)}
        return tfode.solve(lambda t, y: {"scalar": -y["scalar"], "matrix": 0.5 * y["matrix"]}, y0,
                           tf.constant(ts), rtol=1e-9, atol=1e-12, _allow_repeated_times=direction > 0)  # fmt: skip

    graph, xla = tf.function(run)(), tf.function(run, jit_compile=True)()
    assert int(graph.stats.num_steps) < 50  # several outputs per step
    for key in ("scalar", "matrix"):
        np.testing.assert_allclose(graph.ys[key], xla.ys[key], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(graph.ys["scalar"], np.exp(-ts), rtol=1e-7)
    np.testing.assert_allclose(graph.ys["matrix"], np.exp(0.5 * ts)[:, None, None] * np.ones([1, 3, 2]), rtol=1e-7)
