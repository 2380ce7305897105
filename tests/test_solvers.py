"""Tests for tfode/solvers.py: the public API, argument validation and failure reporting.

Every malformed argument must raise ``ValueError``/``TypeError`` with a message
naming it; every failed solve must end (quickly) with the right ``Status``,
raised as ``IntegrationError`` eagerly, as ``InvalidArgumentError`` in a graph,
and returned as a status under XLA or with ``raise_on_failure=False``.
"""

from __future__ import annotations

import functools
import signal

import numpy as np
import pytest
import tensorflow as tf
from conftest import ADAPTIVE_METHODS, FIXED_METHODS

import tfode
from tfode import Status


def decay(t, y):
    return -y


Y0 = tf.constant([1.0, 2.0])
T01 = [0.0, 1.0]


@pytest.fixture
def no_hang():
    """Fail instead of hanging: every failure mode must end within seconds (60 s allowed)."""

    def on_alarm(signum, frame):
        raise TimeoutError("the solve did not terminate within 60 s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------- malformed arguments


def _call(**overrides):
    kwargs = {"func": decay, "y0": Y0, "t": T01, "method": "dopri5"}
    kwargs.update(overrides)
    return tfode.solve(kwargs.pop("func"), kwargs.pop("y0"), kwargs.pop("t"), **kwargs)


BAD_ARGUMENTS = {
    # method
    "unknown method": ({"method": "rk45"}, ValueError, r"method='rk45'; valid methods are: dopri5, tsit5, .*rk4"),
    "method not a string": ({"method": 5}, ValueError, r"Unknown method=5"),
    # t
    "t not monotone": ({"t": [0.0, 1.0, 0.5]}, ValueError, r"t must be strictly increasing or strictly decreasing"),
    "t repeated": ({"t": [0.0, 1.0, 1.0]}, ValueError, r"t must be strictly increasing or strictly decreasing"),
    "t empty": ({"t": tf.zeros([0])}, ValueError, r"t must contain at least one time"),
    "t integer tensor": ({"t": tf.constant([0, 1])}, TypeError, r"t must have a floating dtype, got .*int32"),
    "t integer array": ({"t": np.array([0, 1])}, TypeError, r"t must have a floating dtype, got int64"),
    "t 2-D": ({"t": [[0.0, 1.0]]}, ValueError, r"t must be a 1-D tensor"),
    "t infinite": ({"t": [0.0, np.inf]}, ValueError, r"t must be finite"),
    "t NaN": ({"t": [0.0, np.nan]}, ValueError, r"t must be finite"),
    # y0
    "y0 integer tensor": ({"y0": tf.constant([1, 2])}, TypeError, r"y0 must have a floating dtype .*got .*int32"),
    "y0 integer array": ({"y0": np.array([1, 2])}, TypeError, r"y0 must have a floating dtype .*got int64"),
    "y0 mixed dtypes": (
        {"func": lambda t, y: (-y[0], -y[1]), "y0": (tf.ones([1]), tf.ones([1], tf.float64))},
        TypeError,
        r"all leaves of y0 must share one dtype",
    ),
    "y0 empty structure": ({"y0": ()}, ValueError, r"y0 must contain at least one tensor"),
    # func
    "func not callable": ({"func": 3}, TypeError, r"func must be callable"),
    "func output shape": (
        {"func": lambda t, y: tf.zeros([3])},
        ValueError,
        r"func\(t, y\) returned shape \(3,\), but y0 has shape \(2,\)",
    ),
    "func output dtype": (
        {"func": lambda t, y: tf.cast(-y, tf.float64)},
        TypeError,
        r"func\(t, y\) returned dtype .*float64.*, but y0 has dtype .*float32",
    ),
    "func output structure": (
        {"func": lambda t, y: (-y, -y)},
        ValueError,
        r"func\(t, y\) must return a value with y0's structure",
    ),
    "func output dict keys": (
        {"func": lambda t, y: {"b": -y["a"]}, "y0": {"a": Y0}},
        ValueError,
        r"func\(t, y\) must return a value with y0's structure",
    ),
    "func returns None": ({"func": lambda t, y: None}, TypeError, r"func\(t, y\) must return dy/dt .*got None"),
    "func returns a None leaf": (
        {"func": lambda t, y: (-y[0], None), "y0": (Y0, Y0)},
        TypeError,
        r"func\(t, y\) must return dy/dt with y0's structure, got .*None",
    ),
    # tolerances
    "atol string": ({"atol": "1e-6"}, TypeError, r"atol must be a number, a float tensor .*got '1e-6'"),
    "rtol string array": ({"rtol": np.array(["1e-3"])}, TypeError, r"rtol must be a number"),
    "rtol negative": ({"rtol": -1e-6}, ValueError, r"rtol must be positive and finite"),
    "rtol zero": ({"rtol": 0.0}, ValueError, r"rtol must be positive and finite"),
    "rtol NaN": ({"rtol": float("nan")}, ValueError, r"rtol must be positive and finite"),
    "rtol inf": ({"rtol": float("inf")}, ValueError, r"rtol must be positive and finite"),
    "atol negative": ({"atol": -1e-6}, ValueError, r"atol must be positive and finite"),
    "atol zero": ({"atol": 0.0}, ValueError, r"atol must be positive and finite"),
    "atol NaN": ({"atol": float("nan")}, ValueError, r"atol must be positive and finite"),
    "rtol tensor with a negative element": (
        {"rtol": tf.constant([1e-3, -1.0])},
        ValueError,
        r"rtol must be positive and finite",
    ),
    "rtol shape": ({"rtol": tf.constant([1e-3] * 3)}, ValueError, r"rtol of shape \(3,\) does not broadcast"),
    # options
    "fixed method without step_size, two times": (
        {"method": "rk4"},
        ValueError,
        r"Fixed-step method 'rk4' needs a step size \(options=\{'step_size': h\}",
    ),
    "unknown option": (
        {"options": {"stepsize": 0.1}},
        ValueError,
        r"Unknown options \['stepsize'\]; valid options are: first_step, .*step_size",
    ),
    "step_size with an adaptive method": (
        {"options": {"step_size": 0.1}},
        ValueError,
        r"options\['step_size'\] applies to fixed-step methods only; method 'dopri5' is adaptive",
    ),
    "max_num_steps zero": ({"options": {"max_num_steps": 0}}, ValueError, r"options\['max_num_steps'\] must be"),
    "max_num_steps negative": ({"options": {"max_num_steps": -5}}, ValueError, r"options\['max_num_steps'\] must be"),
    "max_num_steps float": ({"options": {"max_num_steps": 10.5}}, ValueError, r"options\['max_num_steps'\] must be"),
    "max_num_steps bool": ({"options": {"max_num_steps": True}}, ValueError, r"options\['max_num_steps'\] must be"),
    "first_step negative": ({"options": {"first_step": -0.1}}, ValueError, r"options\['first_step'\] must be positive"),
    "max_step zero": ({"options": {"max_step": 0.0}}, ValueError, r"options\['max_step'\] must be positive"),
    "min_step negative": ({"options": {"min_step": -1.0}}, ValueError, r"options\['min_step'\] must be non-negative"),
    "step_size zero": (
        {"method": "rk4", "options": {"step_size": 0.0}},
        ValueError,
        r"options\['step_size'\] must be positive",
    ),
    "safety zero": ({"options": {"safety": 0.0}}, ValueError, r"safety must be positive"),
    "min_factor above one": ({"options": {"min_factor": 2.0}}, ValueError, r"min_factor <= 1 <= max_factor"),
}


@pytest.mark.parametrize("overrides, error, match", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_malformed_arguments_raise(overrides, error, match):
    with pytest.raises(error, match=match):
        _call(**overrides)


def test_odeint_validates_like_solve():
    with pytest.raises(ValueError, match=r"rtol must be positive"):
        tfode.odeint(decay, Y0, T01, rtol=-1.0)


def test_odeint_names_itself_for_unknown_keywords():
    with pytest.raises(TypeError, match=r"^odeint\(\) got unexpected keyword arguments \['tol'\]; it accepts .*rtol"):
        tfode.odeint(decay, Y0, T01, tol=1e-3)


# --------------------------------------------------------------------------- accepted argument forms


@pytest.mark.parametrize("method", ADAPTIVE_METHODS + FIXED_METHODS)
def test_single_time_returns_y0(method):
    options = {"step_size": 0.1} if method in FIXED_METHODS else None
    y0 = {"a": tf.constant([[1.0, -2.0]]), "b": tf.constant(3.0)}
    sol = tfode.solve(lambda t, y: {"a": -y["a"], "b": -y["b"]}, y0, [0.5], method=method, options=options)
    assert int(sol.stats.status) == Status.SUCCESS and int(sol.stats.num_steps) == 0
    for key in y0:
        np.testing.assert_array_equal(sol.ys[key], y0[key][None])
    np.testing.assert_array_equal(tfode.odeint(decay, Y0, [0.5], method=method, options=options), Y0[None])


@pytest.mark.parametrize("method", FIXED_METHODS)
def test_single_time_fixed_method_without_step_size(method):
    # Regression: this used to raise "needs options['step_size']" with nothing to step.
    np.testing.assert_array_equal(tfode.odeint(decay, Y0, [0.5], method=method), Y0[None])


def test_fixed_method_accepts_no_tolerances():
    # Regression: this used to raise "rtol must be given for an adaptive method".
    ys = tfode.odeint(decay, Y0, T01, method="rk4", rtol=None, atol=None, options={"step_size": 0.25})
    np.testing.assert_allclose(ys[-1], Y0 * np.exp(-1.0), rtol=1e-4)


def test_python_numbers_and_lists():
    # A Python float/int state becomes float32; a Python list of ints for t is accepted as times.
    ys = tfode.odeint(decay, 1, [0, 1], rtol=1e-5, atol=1e-5)
    assert ys.dtype == tf.float32 and ys.shape == (2,)
    np.testing.assert_allclose(ys[-1], np.exp(-1.0), rtol=1e-4)


def test_list_of_numbers_is_one_tensor_and_list_of_tensors_a_structure():
    ys = tfode.odeint(decay, [1.0, 2.0], T01, rtol=1e-6, atol=1e-8)
    assert tf.is_tensor(ys) and ys.dtype == tf.float32 and ys.shape == (2, 2)
    np.testing.assert_allclose(ys[-1], np.array([1.0, 2.0]) * np.exp(-1.0), rtol=1e-5)
    np.testing.assert_allclose(tfode.odeint(decay, [[1.0], [2]], T01)[-1], [[np.exp(-1.0)], [2 * np.exp(-1.0)]],
                               rtol=1e-5)  # fmt: skip
    structure = tfode.odeint(lambda t, y: [-y[0], -2.0 * y[1]], [tf.constant(1.0), tf.constant([1.0, 1.0])], T01)
    assert isinstance(structure, list) and structure[1].shape == (2, 2)
    np.testing.assert_allclose(structure[1][-1], np.exp(-2.0), rtol=1e-5)


def test_float64_state_with_float32_times():
    """The documented conversion: times take float64 when the state is float64; func sees t in y0's dtype."""
    seen = []

    def func(t, y):
        seen.append(t.dtype)
        return -y

    sol = tfode.solve(func, tf.constant([1.0, 2.0], tf.float64), tf.constant([0.0, 0.5]), rtol=1e-12, atol=1e-12)
    assert sol.ys.dtype == tf.float64 and sol.ts.dtype == tf.float64 and set(seen) == {tf.float64}
    # float32 0.5 is exact: float64 accuracy at float64 tolerances.
    np.testing.assert_allclose(sol.ys[-1], np.array([1.0, 2.0]) * np.exp(-0.5), rtol=1e-10)


def test_float32_state_with_float64_times():
    seen = []

    def func(t, y):
        seen.append(t.dtype)
        return -y

    sol = tfode.solve(func, Y0, tf.constant(T01, tf.float64), rtol=1e-5, atol=1e-5)
    assert sol.ys.dtype == tf.float32 and sol.ts.dtype == tf.float64
    assert set(seen) == {tf.float32}  # func sees t in the state's dtype
    np.testing.assert_allclose(sol.ys[-1], Y0 * np.exp(-1.0), rtol=1e-4)


def test_odeint_returns_solve_ys():
    ys = tfode.odeint(decay, Y0, [0.0, 0.5, 1.0], method="tsit5", rtol=1e-5, atol=1e-5)
    sol = tfode.solve(decay, Y0, [0.0, 0.5, 1.0], method="tsit5", rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ys, sol.ys)
    assert bool(sol.success)


def test_max_step_is_respected():
    sol = tfode.solve(decay, Y0, T01, rtol=1e-3, atol=1e-3, options={"max_step": 0.1})
    assert int(sol.stats.num_accepted) >= 10
    np.testing.assert_allclose(sol.ys[-1], Y0 * np.exp(-1.0), rtol=1e-3)


# --------------------------------------------------------------------------- failures, eagerly


def test_max_num_steps_exhausted_raises(no_hang):
    with pytest.raises(tfode.IntegrationError, match=r"MAX_STEPS_REACHED.*max_num_steps") as info:
        tfode.solve(decay, Y0, [0.0, 10.0], options={"max_num_steps": 3})
    assert info.value.status == Status.MAX_STEPS_REACHED
    assert 0.0 < info.value.t_reached < 10.0


def test_failure_without_raising_returns_status_and_nan(no_hang):
    ts = [0.0, 0.01, 5.0, 10.0]
    sol = tfode.solve(decay, Y0, ts, options={"max_num_steps": 3}, raise_on_failure=False)
    assert int(sol.stats.status) == Status.MAX_STEPS_REACHED and not bool(sol.success)
    assert int(sol.stats.num_steps) == 3
    assert 0.01 <= float(sol.stats.t_reached) < 5.0
    # Reached outputs are right; the unreached ones are NaN.
    np.testing.assert_allclose(sol.ys[:2], Y0[None] * np.exp(-np.array(ts[:2]))[:, None], rtol=1e-5)
    assert np.all(np.isnan(sol.ys[2:]))


def test_non_finite_initial_state_raises(no_hang):
    with pytest.raises(tfode.IntegrationError, match="NON_FINITE") as info:
        tfode.solve(decay, tf.constant([1.0, np.nan]), T01)
    assert info.value.status == Status.NON_FINITE and info.value.t_reached == 0.0


def _nan_after(t_nan):
    return lambda t, y: tf.where(t < t_nan, -y, tf.fill(tf.shape(y), tf.constant(np.nan, y.dtype)))


def test_non_finite_fixed_step_raises(no_hang):
    with pytest.raises(tfode.IntegrationError, match="NON_FINITE") as info:
        tfode.solve(_nan_after(0.25), Y0, T01, method="rk4", options={"step_size": 0.1})
    assert info.value.status == Status.NON_FINITE
    assert info.value.t_reached == pytest.approx(0.2)  # the last finite step


def test_step_size_underflow_below_min_step_raises(no_hang):
    # y' = y^2, y(0) = 1 blows up at t = 1; min_step stops the approach early.
    with pytest.raises(tfode.IntegrationError, match=r"STEP_SIZE_UNDERFLOW.*min_step") as info:
        tfode.solve(lambda t, y: y**2, tf.constant([1.0], tf.float64), [0.0, 2.0], rtol=1e-3, atol=1e-3,
                    options={"min_step": 1e-3})  # fmt: skip
    assert info.value.status == Status.STEP_SIZE_UNDERFLOW
    assert 0.95 < info.value.t_reached < 1.0


# --------------------------------------------------------------------------- failures in graphs


@functools.partial(tf.function, autograph=False)
def _graph_solve_blowup(y0):
    return tfode.solve(lambda t, y: y**2, y0, tf.constant([0.0, 0.5, 2.0], tf.float64), raise_on_failure=False)


def test_finite_time_blowup_underflows(no_hang):
    """Without min_step the step shrinks to the resolution of t near the singularity at t = 1."""
    sol = _graph_solve_blowup(tf.constant([1.0], tf.float64))
    assert int(sol.stats.status) == Status.STEP_SIZE_UNDERFLOW
    # Errors of ~rtol shift the numerical pole by ~1e-6 (it is where 1/y + t vanishes).
    assert float(sol.stats.t_reached) == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(sol.ys[1], [2.0], rtol=1e-5)
    assert np.isnan(sol.ys[2, 0])


def test_non_finite_adaptive_in_graph(no_hang):
    run = tf.function(lambda y0: tfode.solve(_nan_after(0.25), y0, T01, raise_on_failure=False), autograph=False)
    sol = run(Y0)
    assert int(sol.stats.status) == Status.NON_FINITE
    assert 0.2 < float(sol.stats.t_reached) <= 0.25  # it creeps up to where f turns NaN
    assert np.all(np.isnan(sol.ys[1]))


def test_invalid_tensor_inputs_in_graph(no_hang):
    @functools.partial(tf.function, autograph=False)
    def run(t, rtol, raise_on_failure):
        return tfode.solve(decay, Y0, t, rtol=rtol, raise_on_failure=raise_on_failure)

    t = tf.constant([0.0, 0.5, 1.0])
    # The values are unknown while tracing: they are checked in-graph.
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"ODE solve failed"):
        run(t, tf.constant(-1.0), True)
    for bad_t, bad_rtol in [(t, -1.0), (t, float("nan")), (tf.constant([0.0, 1.0, 0.5]), 1e-6)]:
        sol = run(bad_t, tf.constant(bad_rtol), False)
        assert int(sol.stats.status) == Status.INVALID_INPUT and int(sol.stats.num_steps) == 0
        np.testing.assert_array_equal(sol.ys[0], Y0)
        assert np.all(np.isnan(sol.ys[1:]))
    ok = run(t, tf.constant(1e-6), False)
    assert int(ok.stats.status) == Status.SUCCESS


def test_failures_under_xla_return_a_status(no_hang):
    @functools.partial(tf.function, jit_compile=True)
    def run(rtol):
        return tfode.solve(
            decay, Y0, [0.0, 0.01, 10.0], rtol=rtol, options={"max_num_steps": 3}, raise_on_failure=False
        )

    exhausted = run(tf.constant(1e-6))
    assert int(exhausted.stats.status) == Status.MAX_STEPS_REACHED
    np.testing.assert_allclose(exhausted.ys[1], Y0 * np.exp(-0.01), rtol=1e-5)
    assert np.all(np.isnan(exhausted.ys[2]))
    invalid = run(tf.constant(-1.0))
    assert int(invalid.stats.status) == Status.INVALID_INPUT
    assert np.all(np.isnan(invalid.ys[1:]))


def test_integration_error_message():
    error = tfode.IntegrationError(Status.STEP_SIZE_UNDERFLOW, 0.5, 1e-9, 1.0)
    assert error.status == Status.STEP_SIZE_UNDERFLOW
    assert "STEP_SIZE_UNDERFLOW" in str(error) and "t=0.5" in str(error)
    assert isinstance(error, RuntimeError)


# ---------------------------------------------------------------------------
# Complex states (solved on their real view)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "dopri8", "rk4"])
def test_complex_state_matches_analytic_solution(method):
    """dz/dt = (a + i w) z: z(t) = z0 exp((a + i w) t), at every output time (dense output too)."""
    rate = tf.constant(-0.3 + 2.0j, tf.complex128)
    z0 = tf.constant([1.0 + 0.5j, -0.2 + 1.0j], tf.complex128)
    t = tf.constant(np.linspace(0.0, 3.0, 7), tf.float64)
    options = {"step_size": 0.01} if method == "rk4" else None
    solve = tf.function(lambda: tfode.odeint(lambda t, z: rate * z, z0, t, method=method, rtol=1e-10, atol=1e-12,
                                             options=options))  # fmt: skip
    ys = solve()
    assert ys.dtype == tf.complex128 and ys.shape == (7, 2)
    expected = z0.numpy()[None] * np.exp(rate.numpy() * t.numpy()[:, None])
    np.testing.assert_allclose(ys.numpy(), expected, rtol=1e-7, atol=1e-9)


def test_complex_adjoint_gradient_matches_direct_and_analytic():
    """L = Re(sum(conj(c) * z(T))) with z(T) = z0 exp(k T); gradients w.r.t. k's real and imaginary parts."""
    c = tf.constant([0.3 - 1.0j, 1.0 + 0.2j], tf.complex64)
    z0 = tf.constant([1.0 + 0.5j, -0.2 + 1.0j], tf.complex64)
    t = tf.constant([0.0, 1.5])
    parts = tf.Variable([-0.2, 1.3])

    def loss(adjoint):
        with tf.GradientTape() as tape:  # the field reads the variable (what the adjoint differentiates)
            ys = tfode.odeint(lambda t, z: tf.complex(parts[0], parts[1]) * z, z0, t, rtol=1e-7, atol=1e-9,
                              adjoint=adjoint)  # fmt: skip
            value = tf.math.real(tf.reduce_sum(tf.math.conj(c) * ys[-1]))
        return value, tape.gradient(value, parts).numpy()

    (value, direct), (_, adjoint) = loss(False), loss(True)
    k = complex(*parts.numpy())
    zt = z0.numpy() * np.exp(k * 1.5)
    np.testing.assert_allclose(value, np.real(np.sum(np.conj(c.numpy()) * zt)), rtol=1e-5)
    # d/dk_re = Re(sum(conj(c) T z(T))), d/dk_im = Re(sum(conj(c) i T z(T)))
    analytic = [np.real(np.sum(np.conj(c.numpy()) * 1.5 * zt)), np.real(np.sum(np.conj(c.numpy()) * 1.5j * zt))]
    np.testing.assert_allclose(direct, analytic, rtol=1e-4)
    np.testing.assert_allclose(adjoint, analytic, rtol=1e-4)


def test_complex_nested_state_and_per_element_tolerances():
    y0 = {"z": tf.constant([1.0 + 1.0j, 2.0j], tf.complex128), "w": tf.constant(0.5 + 0.0j, tf.complex128)}
    sol = tfode.solve(lambda t, y: {"z": 1j * y["z"], "w": -y["w"]}, y0, tf.constant([0.0, 1.0], tf.float64),
                      rtol=1e-9, atol={"z": tf.constant([1e-12, 1e-12], tf.float64), "w": 1e-12})  # fmt: skip
    np.testing.assert_allclose(sol.ys["z"][-1].numpy(), y0["z"].numpy() * np.exp(1j), rtol=1e-7)
    np.testing.assert_allclose(sol.ys["w"][-1].numpy(), 0.5 * np.exp(-1.0), rtol=1e-7)
    assert int(sol.stats.status) == 0


def test_complex_mixed_with_real_leaves_is_rejected():
    with pytest.raises(TypeError, match="y0 must share one dtype"):
        tfode.odeint(lambda t, y: y, (tf.constant([1.0 + 0j]), tf.constant([1.0])), tf.constant([0.0, 1.0]))
