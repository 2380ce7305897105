"""Tests of ``tfode.ContinuousFlowBijector``: a continuous normalizing flow as a TFP bijector.

References the tests are checked against:
    * a linear field ``f(t, z) = A z``: ``forward`` is ``expm(A (t1 - t0)) x`` and the
      log-det is ``(t1 - t0) tr(A)`` (the trace is constant, so dopri5 integrates it
      exactly); RNODE's Frobenius term is ``(t1 - t0) ||A||_F^2`` and its kinetic term
      ``∫ ||A z(t)||^2 dt`` is a Gauss-Legendre quadrature of the exact solution;
    * nonlinear fields: ``log|det J|`` of the brute-force Jacobian of ``forward``
      (``batch_jacobian`` through a flow with ``adjoint=False``, float64);
    * Hutchinson: the sample mean over independent noise draws against the exact trace,
      within a CLT bound;
    * gradients: the adjoint against backpropagation through the solver (``adjoint=False``).

Cost on a busy 2-core CPU: every new bijector traces its solve (eager solves run as a
``tf.function``), ~1-3 s; a traced gradient through the solver loop ~5-10 s; the one XLA
case ~15-30 s. The gradient tests share one problem (module fixture).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.linalg  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402

import tfode  # noqa: E402
import tfode.bijectors  # noqa: E402
from tfode import ContinuousFlowBijector  # noqa: E402
from tfode.solvers import solve  # noqa: E402

tfd = tfp.distributions

# A non-normal 2-D matrix (tr = -0.1, A12 + A21 = 0.3) and a 3-D one.
A2 = np.array([[-0.3, 1.0], [-0.7, 0.2]])
A3 = np.array([[-0.2, 0.8, 0.1], [-0.6, 0.3, 0.0], [0.4, -0.2, -0.5]])


def _linear(a):
    def field(t, z):
        return tf.linalg.matvec(tf.constant(a, z.dtype), z)

    return field


class _MLP(tf.Module):
    """A float64 time-dependent tanh MLP ``f(t, z) = tanh([z, t] W1 + b1) W2``.

    ``calls`` counts Python calls (trace-time calls inside a ``tf.function``);
    ``evals`` is a variable that counts executed evaluations in every mode.
    """

    def __init__(self, dim, hidden=16, seed=0, gain=1.0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.w1 = tf.Variable(gain * rng.normal(size=(dim + 1, hidden)) / np.sqrt(dim + 1))
        self.b1 = tf.Variable(0.1 * rng.normal(size=hidden))
        self.w2 = tf.Variable(gain * rng.normal(size=(hidden, dim)) / np.sqrt(hidden))
        self.evals = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.calls = 0

    def __call__(self, t, z):
        self.calls += 1
        self.evals.assign_add(1)
        t_col = tf.ones_like(z[..., :1]) * tf.cast(t, z.dtype)
        return tf.matmul(tf.tanh(tf.matmul(tf.concat([z, t_col], axis=-1), self.w1) + self.b1), self.w2)


def _points(n, dim, seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=(n, dim)))


# --------------------------------------------------------------------------- #
# Exact log-det
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(("a", "t0", "t1"), [(A2, 0.0, 1.5), (A3, 1.0, -0.5)], ids=["2d", "3d-reversed"])
def test_linear_field(a, t0, t1):
    flow = ContinuousFlowBijector(_linear(a), t0, t1, rtol=1e-10, atol=1e-10, adjoint=False)
    x = _points(5, a.shape[0])
    y = flow.forward(x)
    np.testing.assert_allclose(y, x.numpy() @ scipy.linalg.expm(a * (t1 - t0)).T, rtol=1e-8, atol=1e-9)
    # The integrand tr(A) is constant and dopri5's weights sum to 1: exact up to round-off.
    expected = np.full(5, (t1 - t0) * np.trace(a))
    np.testing.assert_allclose(flow.forward_log_det_jacobian(x, event_ndims=1), expected, rtol=0, atol=1e-12)
    # A fresh tensor misses TFP's cache (which would hand back x itself): a real inverse solve.
    y_new = tf.identity(y)
    np.testing.assert_allclose(flow.inverse(y_new), x, rtol=0, atol=1e-8)
    np.testing.assert_allclose(flow.inverse_log_det_jacobian(y_new, event_ndims=1), -expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dim", [2, 3])
def test_log_det_matches_brute_force_jacobian(dim):
    field = _MLP(dim, seed=dim, gain=1.5)
    flow = ContinuousFlowBijector(field, 0.0, 1.0, rtol=1e-10, atol=1e-10, adjoint=False)
    x = _points(4, dim, seed=dim)

    @tf.function(autograph=False)
    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = flow.forward(x)
        jacobian = tape.batch_jacobian(y, x, experimental_use_pfor=False)
        fldj = flow.forward_log_det_jacobian(x, event_ndims=1)
        ildj_cached = flow.inverse_log_det_jacobian(y, event_ndims=1)  # y is in the cache
        if dim == 3:  # a new inverse solve costs a trace; once is enough
            return fldj, jacobian, ildj_cached, x, -fldj
        y_new = tf.identity(y)
        return fldj, jacobian, ildj_cached, flow.inverse(y_new), flow.inverse_log_det_jacobian(y_new, event_ndims=1)

    fldj, jacobian, ildj_cached, x_back, ildj = (t.numpy() for t in run(x))
    sign, brute = np.linalg.slogdet(jacobian)
    assert np.all(sign > 0)  # a flow preserves orientation
    assert np.all(np.abs(brute) > 0.05)  # a non-trivial volume change
    # J is the derivative of the discrete solution, the log-det an integral solved at
    # rtol = atol = 1e-10: they agree to ~1e-10 (measured 5e-11).
    np.testing.assert_allclose(fldj, brute, rtol=0, atol=1e-8)
    np.testing.assert_array_equal(ildj_cached, -fldj)
    np.testing.assert_allclose(x_back, x, rtol=0, atol=1e-8)
    np.testing.assert_allclose(ildj, -fldj, rtol=0, atol=1e-8)


# --------------------------------------------------------------------------- #
# Hutchinson's estimator
# --------------------------------------------------------------------------- #


def test_hutchinson_noise_fixed_within_a_solve_and_seeded():
    # For f = A z in 2-D with Rademacher noise drawn once per solve, each event's estimate
    # is ∫ eps^T A eps dt = t1 (tr A + eps1 eps2 (A12 + A21)): one of exactly two values.
    # Noise redrawn during the solve would average several signs and leave that set.
    x = tf.ones([64, 2])
    values = np.trace(A2) + np.array([-1.0, 1.0]) * (A2[0, 1] + A2[1, 0])

    def estimate(flow):
        return flow.forward_log_det_jacobian(tf.identity(x), event_ndims=1).numpy()

    flow = ContinuousFlowBijector(_linear(A2), trace="hutchinson", seed=7)
    first, second = estimate(flow), estimate(flow)
    for est in (first, second):
        np.testing.assert_allclose(np.min(np.abs(est[:, None] - values[None]), axis=1), 0.0, atol=1e-5)
        assert np.any(est < np.trace(A2)) and np.any(est > np.trace(A2))  # both signs drawn
    assert not np.array_equal(first, second)  # the generator advances after each solve
    np.testing.assert_array_equal(estimate(ContinuousFlowBijector(_linear(A2), trace="hutchinson", seed=7)), first)
    assert not np.array_equal(estimate(ContinuousFlowBijector(_linear(A2), trace="hutchinson", seed=8)), first)


@pytest.fixture(scope="module")
def hutchinson_problem():
    """A 3-D nonlinear field, 8 points and their exact log-dets."""
    field, x = _MLP(3, seed=11, gain=1.5), _points(8, 3, seed=12)
    exact = ContinuousFlowBijector(field, rtol=1e-7, atol=1e-7).forward_log_det_jacobian(x, event_ndims=1)
    return field, x, exact.numpy()


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(hutchinson_problem, noise):
    # The trajectory z(t) does not depend on the noise, so each event's estimate is
    # eps^T M eps with M = ∫ J(t, z(t)) dt: mean tr(M) = the exact log-det, finite variance.
    # 8 points x 1000 copies per solve, two solves (fresh noise each): n = 2000 independent
    # estimates per point. By the CLT, |mean - exact| < 5 sd / sqrt(n) fails with
    # probability ~6e-7 per point for an unbiased estimator (the noise is seeded, so the
    # test is deterministic; the bound says it would pass for almost every seed). A slack
    # of 1e-5 covers the solver error (rtol = atol = 1e-7). The bounds (measured 0.04-0.35)
    # are well below the largest log-det (2.3), and the pooled bound below 10% of the
    # summed |log-det|, so a biased estimator (e.g. mis-scaled noise) would fail.
    field, x, exact = hutchinson_problem
    points, copies = x.shape[0], 1000
    flow = ContinuousFlowBijector(field, trace="hutchinson", noise=noise, rtol=1e-7, atol=1e-7, seed=1)
    tiled = tf.tile(x, [copies, 1])  # row i is point i % points
    draws = np.concatenate(
        [flow.forward_log_det_jacobian(tf.identity(tiled), event_ndims=1).numpy().reshape(copies, points)
         for _ in range(2)]
    )  # fmt: skip
    n = draws.shape[0]
    sd = draws.std(axis=0, ddof=1)
    assert np.all(sd > 1e-3)  # really an estimate, not the exact trace
    bound = 5.0 * sd / np.sqrt(n) + 1e-5
    np.testing.assert_array_less(np.abs(draws.mean(axis=0) - exact), bound)
    pooled_bound = 5.0 * np.sqrt(np.sum(sd**2) / n) + 1e-5
    assert abs(np.sum(draws.mean(axis=0) - exact)) < pooled_bound
    assert np.all(bound < 0.25 * np.abs(exact).max())
    assert pooled_bound < 0.1 * np.sum(np.abs(exact))


# --------------------------------------------------------------------------- #
# Inside a TransformedDistribution
# --------------------------------------------------------------------------- #


def _distribution(flow, dim):
    return tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros([dim], tf.float64)), flow)


def test_transformed_distribution_shapes_and_one_solve_per_log_prob():
    dim = 2
    field = _MLP(dim, seed=3)
    x = _points(6, dim, seed=4)

    # One log_prob against one inverse on fresh bijectors (same field, same x, so the same
    # steps). Eager solves run as a tf.function: the Python counter sees the evaluations
    # traced (one solve = one trace per direction), the variable those executed (NFE).
    dist = _distribution(ContinuousFlowBijector(field, rtol=1e-7, atol=1e-7), dim)
    calls, evals = field.calls, int(field.evals.numpy())
    log_prob = dist.log_prob(x)
    log_prob_calls, log_prob_evals = field.calls - calls, int(field.evals.numpy()) - evals

    flow = ContinuousFlowBijector(field, rtol=1e-7, atol=1e-7)
    calls, evals = field.calls, int(field.evals.numpy())
    z = flow.inverse(x)
    inverse_calls, inverse_evals = field.calls - calls, int(field.evals.numpy()) - evals
    assert log_prob_calls == inverse_calls > 0
    assert log_prob_evals == inverse_evals > 10
    calls, evals = field.calls, int(field.evals.numpy())
    ildj = flow.inverse_log_det_jacobian(x, event_ndims=1)  # from the cache: no solve
    assert (field.calls, int(field.evals.numpy())) == (calls, evals)

    assert log_prob.shape == (6,)
    np.testing.assert_allclose(log_prob, dist.distribution.log_prob(z) + ildj, rtol=1e-12)
    np.testing.assert_allclose(dist.prob(x), np.exp(log_prob), rtol=1e-6)
    samples = dist.sample([3, 4], seed=5)
    assert samples.shape == (3, 4, dim)
    assert np.all(np.isfinite(samples))


@pytest.fixture(scope="module")
def gradient_problem():
    """Field, data and the reference gradient of mean log p by backpropagation (float64)."""
    dim = 2
    field = _MLP(dim, seed=5, gain=1.5)
    x = _points(16, dim, seed=6)
    variables = [field.w1, field.b1, field.w2]
    direct = _distribution(ContinuousFlowBijector(field, rtol=1e-9, atol=1e-9, adjoint=False), dim)

    @tf.function(autograph=False)
    def reference(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(direct.log_prob(x))
        return tape.gradient(loss, variables)

    return field, x, variables, [g.numpy() for g in reference(x)]


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_adjoint_gradient_matches_backpropagation(gradient_problem, mode):
    field, x, variables, expected = gradient_problem
    dist = _distribution(ContinuousFlowBijector(field, rtol=1e-9, atol=1e-9, adjoint=True), 2)

    def gradient(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(dist.log_prob(x))
        return tape.gradient(loss, variables)

    if mode != "eager":
        gradient = tf.function(gradient, autograph=False, jit_compile=mode == "xla")
    grads = [g.numpy() for g in gradient(x)]
    flat, flat_ref = np.concatenate([g.ravel() for g in grads]), np.concatenate([g.ravel() for g in expected])
    # Both are accurate to ~1e-9 relative (the solves' tolerance); measured difference ~1e-8.
    assert np.linalg.norm(flat - flat_ref) < 1e-6 * np.linalg.norm(flat_ref)
    assert np.linalg.norm(flat_ref) > 1e-2


def test_gradient_matches_finite_differences(gradient_problem):
    # Central differences of L(θ) = mean log p(x; θ) along random unit directions v of all
    # the weights, against v·∇L by backpropagation (which the adjoint matches above). The
    # solves run at 1e-10, so L is accurate to ~1e-10 and the difference quotient to
    # ~1e-10 / h = 1e-6, plus a truncation error ~h² |L'''(θ)| ~ 1e-8.
    field, x, variables, expected = gradient_problem
    dist = _distribution(ContinuousFlowBijector(field, rtol=1e-10, atol=1e-10), 2)
    flat_grad = np.concatenate([g.ravel() for g in expected])
    initial = [v.numpy() for v in variables]
    sizes = [value.size for value in initial]

    def loss_at(offset):
        for variable, value, delta in zip(variables, initial, np.split(offset, np.cumsum(sizes)[:-1])):
            variable.assign(value + delta.reshape(value.shape))
        return float(tf.reduce_mean(dist.log_prob(tf.identity(x))))  # a new tensor: no cached solve

    rng, h = np.random.default_rng(7), 1e-4
    try:
        for _ in range(3):
            v = rng.normal(size=flat_grad.size)
            v /= np.linalg.norm(v)
            difference = (loss_at(h * v) - loss_at(-h * v)) / (2 * h)
            assert abs(flat_grad @ v) > 1e-3  # a direction the loss depends on
            np.testing.assert_allclose(difference, flat_grad @ v, rtol=1e-4, atol=1e-6)
    finally:
        loss_at(np.zeros(flat_grad.size))


# --------------------------------------------------------------------------- #
# RNODE regularizers
# --------------------------------------------------------------------------- #


def _kinetic_energy(a, y, t0, t1, nodes=40):
    """``∫_{t0}^{t1} ||A z(t)||^2 dt`` with ``z(t) = expm(A (t - t1)) y``, Gauss-Legendre.

    The integrand is analytic in t, so 40 nodes give machine precision.
    """
    s, w = np.polynomial.legendre.leggauss(nodes)
    ts = 0.5 * (t1 - t0) * s + 0.5 * (t1 + t0)
    values = [np.sum((y @ (a @ scipy.linalg.expm(a * (t - t1))).T) ** 2, axis=-1) for t in ts]
    return 0.5 * (t1 - t0) * np.tensordot(w, np.stack(values), axes=1)


def test_regularization_closed_forms():
    a, t0, t1 = A3, 0.0, 1.5
    flow = ContinuousFlowBijector(_linear(a), t0, t1, rtol=1e-10, atol=1e-10)
    y = _points(5, 3, seed=8)
    x, ildj, terms = flow.inverse_and_regularization(y)
    assert set(terms) == {"kinetic_energy", "jacobian_frobenius"}
    for value in terms.values():
        assert value.shape == (5,)
    np.testing.assert_allclose(x, y.numpy() @ scipy.linalg.expm(-a * (t1 - t0)).T, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(ildj, np.full(5, -(t1 - t0) * np.trace(a)), rtol=0, atol=1e-12)
    kinetic = _kinetic_energy(a, y.numpy(), t0, t1)
    np.testing.assert_allclose(terms["kinetic_energy"], kinetic, rtol=1e-7)
    # ||A||_F^2 is constant in time: exact up to round-off.
    np.testing.assert_allclose(terms["jacobian_frobenius"], np.full(5, (t1 - t0) * np.sum(a**2)), rtol=1e-12)
    # Forward from x retraces the same path: same (positive) regularizers, fldj = -ildj.
    y_back, fldj, forward_terms = flow.forward_and_regularization(x)
    np.testing.assert_allclose(y_back, y, rtol=0, atol=1e-8)
    np.testing.assert_allclose(fldj, -ildj, rtol=0, atol=1e-12)
    np.testing.assert_allclose(forward_terms["kinetic_energy"], kinetic, rtol=1e-7)


@pytest.fixture
def solve_sizes(monkeypatch):
    """The number of state leaves of every ``tfode.solve`` the bijector traces (a list)."""
    sizes = []

    def recording_solve(func, y0, *args, **kwargs):
        sizes.append(len(tf.nest.flatten(y0)))
        return solve(func, y0, *args, **kwargs)

    monkeypatch.setattr(tfode.bijectors, "solve", recording_solve)
    return sizes


def test_rnode_channels_only_when_asked(solve_sizes):
    # (z, log-det) is 2 leaves, with RNODE's kinetic and Frobenius channels 4: only
    # *_and_regularization carry them.
    y = _points(5, 2, seed=8)
    legacy = ContinuousFlowBijector(_linear(A2))
    dist = _distribution(legacy, 2)
    dist.log_prob(y)
    legacy.forward(y)
    dist.sample(3, seed=1)
    assert solve_sizes == [2, 2, 2]
    legacy_terms = legacy.inverse_and_regularization(y)[2]
    assert solve_sizes[-1] == 4
    x, ildj, terms = ContinuousFlowBijector(_linear(A2)).inverse_and_regularization(y)
    _, fldj, _ = ContinuousFlowBijector(_linear(A2)).forward_and_regularization(x)
    assert solve_sizes[-2:] == [4, 4]
    np.testing.assert_allclose(fldj, -ildj, rtol=0, atol=1e-9)
    for key in ("kinetic_energy", "jacobian_frobenius"):
        np.testing.assert_array_equal(terms[key], legacy_terms[key])
        assert np.all(terms[key].numpy() > 0)


# --------------------------------------------------------------------------- #
# Solver statistics and tolerance overrides
# --------------------------------------------------------------------------- #


def test_solver_stats_under_tf_function():
    # The field counts its executed evaluations (a variable), so the counts the bijector
    # records can be checked exactly: the forward solve evaluates the augmented dynamics
    # (one field call each) num_fn_evals times; the adjoint's backward count is its
    # augmented evaluations plus one field call per output time, again one field call each.
    field = _MLP(2, seed=9)
    backward = tfode.SolveStats()  # a user-supplied recorder
    flow = ContinuousFlowBijector(field, rtol=1e-6, atol=1e-6, backward_stats=backward)
    assert flow.backward_stats is backward
    dist = _distribution(flow, 2)
    variables = [field.w1, field.b1, field.w2]

    @tf.function(autograph=False)
    def step(x):
        start = field.evals.read_value()
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(dist.log_prob(x))
        with tf.control_dependencies([loss]):
            after_forward = field.evals.read_value()
        grads = tape.gradient(loss, variables)
        with tf.control_dependencies(grads):
            after_backward = field.evals.read_value()
        return after_forward - start, after_backward - after_forward

    forward_evals, backward_evals = (int(n) for n in step(_points(8, 2, seed=10)))
    assert forward_evals > 10 and backward_evals > 10
    assert int(flow.solve_stats.num_fn_evals) == forward_evals
    assert int(backward.num_fn_evals) == backward_evals
    assert int(flow.solve_stats.num_steps) > 0 and int(backward.num_steps) > 0
    assert int(flow.solve_stats.status) == int(backward.status) == 0
    # A sample (forward direction, eagerly) overwrites the solve counters; no gradient, so
    # the backward counters keep the last backward pass.
    before = int(field.evals.numpy())
    dist.sample(4, seed=2)
    assert int(flow.solve_stats.num_fn_evals) == int(field.evals.numpy()) - before
    assert int(backward.num_fn_evals) == backward_evals


def test_per_call_solver_applies_to_eager_calls():
    # A SolverConfig passed per call reaches the solve, also after calls with the bijector's own.
    field = _MLP(2, seed=13, gain=1.5)
    flow = ContinuousFlowBijector(field, rtol=1e-3, atol=1e-3)
    x = _points(4, 2, seed=14)
    loose = flow.forward_log_det_jacobian(tf.identity(x), event_ndims=1)
    loose_nfe = int(flow.solve_stats.num_fn_evals)
    _, tight = flow.forward_and_log_det(x, solver=flow.solver.replace(rtol=1e-10, atol=1e-10))
    assert int(flow.solve_stats.num_fn_evals) > 3 * loose_nfe
    reference = ContinuousFlowBijector(field, rtol=1e-10, atol=1e-10).forward_log_det_jacobian(x, event_ndims=1)
    np.testing.assert_allclose(tight, reference, rtol=0, atol=1e-12)  # same solver, same settings
    assert np.abs(loose - reference).max() > 1e-8  # the loose solve really was loose


def test_eager_adjoint_flow_with_a_field_that_opens_its_own_tape():
    """Regression (issue 12, bug 2): eagerly, the adjoint must not stop tapes the field opens.

    The exact trace opens a tape inside the dynamics; without the old private cached
    functions the eager adjoint forward runs as one traced call, unseen by outer tapes.
    """
    field = _MLP(2, seed=3, gain=1.0)
    flow = ContinuousFlowBijector(field, rtol=1e-7, atol=1e-7)
    direct = ContinuousFlowBijector(field, rtol=1e-7, atol=1e-7, adjoint=False)
    x = _points(6, 2, seed=4)
    grads = []
    for bijector in (flow, direct):
        with tf.GradientTape() as tape:
            value = tf.reduce_sum(bijector.inverse_log_det_jacobian(tf.identity(x), event_ndims=1))
        grads.append(tape.gradient(value, field.trainable_variables))
    for adjoint_grad, direct_grad in zip(*grads):
        np.testing.assert_allclose(adjoint_grad.numpy(), direct_grad.numpy(), rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(trace="approximate"), ValueError, "trace must be one of"),
        (dict(trace=None), ValueError, "trace must be one of"),
        (dict(noise="uniform"), ValueError, "noise must be one of"),
        (dict(t0=1.0, t1=1.0), ValueError, "t0 and t1 must differ"),
        (dict(t0=0.0, t1=0), ValueError, "t0 and t1 must differ"),
        (dict(vector_field=3.0), TypeError, "vector_field must be callable"),
        (dict(vector_field=None), TypeError, "vector_field must be callable"),
        (dict(noise=None), ValueError, "noise must be one of"),
        (dict(seed="0"), TypeError, "seed must be an int or None"),
        (dict(seed=1.5), TypeError, "seed must be an int or None"),
        (dict(seed=True), TypeError, "seed must be an int or None"),
    ],
)
def test_rejects_bad_arguments(kwargs, error, match):
    kwargs = {"vector_field": _linear(A2), **kwargs}
    with pytest.raises(error, match=match):
        ContinuousFlowBijector(**kwargs)


def test_field_not_a_function_of_t_and_z():
    flow = ContinuousFlowBijector(lambda z: -z)
    with pytest.raises(TypeError, match="positional argument"):
        flow.forward(tf.ones([3, 2]))


def _wide(t, z):
    return tf.concat([z, z[..., :1]], axis=-1)


@pytest.mark.parametrize(
    ("field", "error", "match"),
    [
        (_wide, ValueError, r"vector_field must return dz/dt with z's shape \[4, 2\] \(\[\.\.\., D\]\), got \[4, 3\]"),
        (lambda t, z: tf.reduce_sum(z, axis=0), ValueError, r"z's shape \[4, 2\] .*got \[2\]"),
        (lambda t, z: tf.cast(z, tf.float64), TypeError, "vector_field must return dz/dt in z's dtype float32"),
        (lambda t, z: None, TypeError, "vector_field must return a tensor"),
    ],
    ids=["wider", "reduced", "dtype", "none"],
)
@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_rejects_bad_vector_field_output_at_first_call(field, error, match, trace):
    calls = []

    def counted(t, z):
        calls.append(z.shape)
        return field(t, z)

    flow = ContinuousFlowBijector(counted, trace=trace)
    with pytest.raises(error, match=match):
        flow.forward(tf.ones([4, 2]))
    assert len(calls) == 1  # raised at the first evaluation, before any step


@pytest.mark.parametrize(
    ("method", "value", "match"),
    [
        ("forward", tf.constant(1.0), "x must have rank >= 1"),
        ("inverse", tf.constant(1.0), "y must have rank >= 1"),
        ("forward", tf.ones([3, 0]), r"x must have event size D >= 1 .*\[3, 0\]"),
    ],
)
def test_rejects_bad_events(method, value, match):
    flow = ContinuousFlowBijector(lambda t, z: -z)
    with pytest.raises(ValueError, match=match):
        getattr(flow, method)(value)


def test_exact_trace_needs_a_static_event_size():
    flow = ContinuousFlowBijector(lambda t, z: -z)
    forward = tf.function(flow.forward, input_signature=[tf.TensorSpec([None, None])], autograph=False)
    with pytest.raises(ValueError, match="trace='exact' needs a static event size D"):
        forward(tf.ones([4, 2]))


def test_hutchinson_seeded_compiles_under_xla():
    # An int seed hands each solve a stateless seed: XLA compiles it and draws the same
    # noise as the graph (two bijectors with one seed start from the same generator state).
    x = tf.ones([16, 2], tf.float64)

    def log_det(jit):
        flow = ContinuousFlowBijector(_linear(A2), trace="hutchinson", seed=4)
        run = tf.function(lambda x: flow.forward_log_det_jacobian(x, event_ndims=1), jit_compile=jit)
        return run(x).numpy()

    xla, graph = log_det(True), log_det(False)
    values = np.trace(A2) + np.array([-1.0, 1.0]) * (A2[0, 1] + A2[1, 0])  # see the Rademacher test above
    np.testing.assert_allclose(np.min(np.abs(xla[:, None] - values[None]), axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(xla, graph, rtol=0, atol=1e-12)


def test_hutchinson_without_seed():
    # seed=None: TF's stateful RNG, a fresh draw per solve; refused under XLA with an error
    # that names the argument (XLA would compile it without reproducible noise).
    flow = ContinuousFlowBijector(_linear(A2), trace="hutchinson", seed=None)
    x = tf.ones([64, 2], tf.float64)
    first = flow.forward_log_det_jacobian(tf.identity(x), event_ndims=1).numpy()
    second = flow.forward_log_det_jacobian(tf.identity(x), event_ndims=1).numpy()
    assert not np.array_equal(first, second)
    with pytest.raises(ValueError, match=r"seed=None .*XLA .*pass an int seed"):
        tf.function(lambda x: flow.forward(x), jit_compile=True)(x)
    # The exact trace draws no noise: seed=None is fine there, XLA included.
    exact = ContinuousFlowBijector(_linear(A2), seed=None)
    np.testing.assert_allclose(
        tf.function(lambda x: exact.forward_log_det_jacobian(x, event_ndims=1), jit_compile=True)(x),
        np.full(64, np.trace(A2)),
        rtol=0,
        atol=1e-12,
    )


# --------------------------------------------------------------------------- #
# TFP citizenship: variables, batch shapes
# --------------------------------------------------------------------------- #


def test_keras_field_weights_are_bijector_and_distribution_variables():
    """The standard TFP loop over ``dist.trainable_variables`` trains a Keras vector field."""
    tfb = tfp.bijectors
    field = tfode.layers.TimeMLP(hidden=(16,))
    flow = ContinuousFlowBijector(field, rtol=1e-3, atol=1e-3)
    dist = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(2)), flow)
    chained = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(2)), tfb.Chain([tfb.Scale(2.0), flow]))
    x = tf.constant(np.random.default_rng(0).normal(size=(256, 2)) * 0.5 + [1.5, -1.0], tf.float32)
    dist.log_prob(x[:1])  # builds the field
    expected = {id(w.value) for w in field.trainable_weights}
    assert len(expected) == 4
    for owner in (flow, dist, tfb.Chain([flow]), chained):
        assert {id(v) for v in owner.trainable_variables} == expected
        assert expected <= {id(v) for v in owner.variables}
    optimizer = keras.optimizers.Adam(0.05)
    losses = []
    for _ in range(4):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(dist.log_prob(x))
        grads = tape.gradient(loss, dist.trainable_variables)
        assert all(g is not None for g in grads)
        optimizer.apply_gradients(zip(grads, dist.trainable_variables))
        losses.append(float(loss))
    # The data sit ~1.8 standard deviations off the base's mean: a few Adam steps
    # at lr 0.05 cut the NLL by well over 0.5 nats (measured: 3.30 -> 2.29).
    assert losses[-1] < losses[0] - 0.5, losses


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_any_batch_shape_on_one_bijector(trace):
    """event_ndims=1: batches of any rank, in any order, on one bijector (eager solves retrace)."""
    flow = ContinuousFlowBijector(tfode.layers.TimeMLP(hidden=(8,)), trace=trace, rtol=1e-6, atol=1e-6)
    dist = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(2)), flow)
    x = tf.constant(np.random.default_rng(1).normal(size=(4, 8, 2)), tf.float32)
    rows = dist.log_prob(tf.reshape(x, [32, 2]))
    batched = dist.log_prob(x)
    single = dist.log_prob(x[0, 0])
    assert rows.shape == [32] and batched.shape == [4, 8] and single.shape == []
    assert dist.log_prob(tf.reshape(x, [2, 2, 8, 2])).shape == [2, 2, 8]
    assert dist.sample([3, 5], seed=1).shape == [3, 5, 2]
    y, fldj, terms = flow.forward_and_regularization(x)
    assert y.shape == x.shape and fldj.shape == [4, 8] and terms["kinetic_energy"].shape == [4, 8]
    if trace == "exact":  # deterministic: the batched answer is the per-row one
        np.testing.assert_allclose(tf.reshape(batched, [32]), rows, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(single, rows[0], rtol=1e-5, atol=1e-5)
    else:  # fresh noise per solve: only finite values
        assert np.isfinite(batched.numpy()).all()


def test_bijector_cache_serves_stale_log_prob_while_the_inverse_is_held():
    """The README's warning and workarounds: TFP's cache keys on the tensor while the output lives."""
    field = tfode.layers.TimeMLP(hidden=(8,))
    flow = ContinuousFlowBijector(field, rtol=1e-4, atol=1e-4)
    dist = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(2)), flow)
    x = tf.constant(np.random.default_rng(0).normal(size=(16, 2)), tf.float32)
    z = flow.inverse(x)
    before = dist.log_prob(x)
    for weight in field.trainable_weights:  # "training"
        weight.assign(weight + 0.3)
    np.testing.assert_array_equal(dist.log_prob(x), before)  # stale: served from the cache
    fresh = dist.log_prob(tf.identity(x))
    assert np.abs(fresh - before).max() > 0.1  # measured 2.3
    del z
    np.testing.assert_allclose(dist.log_prob(x), fresh, rtol=1e-6)


def test_several_bijectors_trigger_no_retracing_warning(caplog):
    """Regression (issue 14, item 3): creating and using several flows traces nothing per instance."""
    import logging

    caplog.set_level(logging.WARNING, logger="tensorflow")
    x = _points(4, 2, seed=21)
    for seed in range(6):
        flow = ContinuousFlowBijector(_MLP(2, seed=seed, gain=0.5), rtol=1e-3, atol=1e-3)
        flow.forward_log_det_jacobian(tf.identity(x), event_ndims=1)
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]
