"""Gradients of ``tfode.odeint``/``tfode.solve``: the adjoint method and direct backpropagation.

Every gradient is checked against an independent reference:

* central finite differences of scipy's DOP853 at ``rtol = atol = 1e-13`` (the
  exact solution's derivative, to ~1e-8) for the adaptive methods;
* central finite differences of tfode's own fixed-step solve (the *same*
  discretisation) for rk4's direct gradients, which must then agree to round-off;
* closed forms: ``expm`` and its Fréchet derivative for a linear system, and
  exponential decay;
* adjoint against direct, eager against ``tf.function`` against XLA.

Eager solves cost ~50 ms per step on CPU, so problems are small (2-4 states,
4-32 hidden units, ~10-30 steps) and expensive gradients are cached per module.
"""

from __future__ import annotations

import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.integrate  # noqa: E402
import scipy.linalg  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfode  # noqa: E402

F64 = tf.float64

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


class TinyMLP(tf.Module):
    """``f(t, y) = W2 tanh(W1 y + b1 + c t) + b2`` with ``tf.Variable`` weights.

    The same field is available with explicit weights (``apply``) for graph
    finite differences and in numpy (``numpy_field``) for scipy references.
    """

    def __init__(self, dim, hidden, seed, dtype=F64, gain=1.0, name=None):
        super().__init__(name=name)
        rng = np.random.default_rng(seed)
        shapes = {"w1": (hidden, dim), "b1": (hidden,), "c": (hidden,), "w2": (dim, hidden), "b2": (dim,)}
        scales = {"w1": gain / np.sqrt(dim), "b1": 0.3, "c": 1.0, "w2": gain / np.sqrt(hidden), "b2": 0.3}
        self.params = [
            tf.Variable(rng.normal(size=shape) * scales[key], dtype=dtype, name=key) for key, shape in shapes.items()
        ]

    @staticmethod
    def apply(params, t, y):
        w1, b1, c, w2, b2 = params
        return tf.linalg.matvec(w2, tf.tanh(tf.linalg.matvec(w1, y) + b1 + t * c)) + b2

    def __call__(self, t, y):
        return self.apply(self.params, t, y)

    def values(self):
        return [p.numpy() for p in self.params]

    def sizes(self):
        return [int(np.prod(p.shape)) for p in self.params]

    def unflatten(self, flat):
        out, start = [], 0
        for p, size in zip(self.params, self.sizes(), strict=True):
            out.append(np.reshape(flat[start : start + size], p.shape))
            start += size
        return out

    @staticmethod
    def numpy_field(values):
        w1, b1, c, w2, b2 = values
        return lambda t, y: w2 @ np.tanh(w1 @ y + b1 + c * t) + b2


def dop853(field, y0, t):
    """Reference ``[len(t), dim]`` states: scipy DOP853 at 1e-13 (about three orders below what we compare at)."""
    t = np.asarray(t, np.float64)
    sol = scipy.integrate.solve_ivp(
        field, (t[0], t[-1]), np.asarray(y0, np.float64), method="DOP853", rtol=1e-13, atol=1e-13, t_eval=t
    )
    if not sol.success:
        raise RuntimeError(sol.message)
    return sol.y.T


def central_fd(fun, x, h):
    """Central differences of a scalar ``fun`` of a flat float64 vector."""
    x = np.asarray(x, np.float64)
    grad = np.empty_like(x)
    for i in range(x.size):
        step = np.zeros_like(x)
        step[i] = h
        grad[i] = (fun(x + step) - fun(x - step)) / (2.0 * h)
    return grad


def assert_close(actual, expected, rtol, atol_scale, what):
    """``|actual - expected| <= rtol * |expected| + atol_scale * max|expected|`` element-wise."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    atol = atol_scale * float(np.max(np.abs(expected)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def multi_time_loss(weights):
    """``L = sum_i [r_i . y_i + 0.5 s_i |y_i|^2]``: every output time contributes a different cotangent."""
    r, s = (tf.constant(w) for w in weights)

    def loss(ys):
        return tf.reduce_sum(r * ys + 0.5 * s * ys**2)

    return loss


def loss_weights(num_times, dim, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(num_times, dim)), rng.uniform(0.5, 1.5, size=(num_times, dim))


def tape_gradients(func, y0, t, loss, variables=(), **kwargs):
    """Eager ``d loss(odeint(...)) / d (y0, t, variables)`` as numpy arrays."""
    y0 = tf.constant(y0, F64) if not tf.is_tensor(y0) else y0
    t = tf.constant(t, y0.dtype) if not tf.is_tensor(t) else t
    with tf.GradientTape() as tape:
        tape.watch([y0, t])
        ys = tfode.odeint(func, y0, t, **kwargs)
        value = loss(ys)
    grads = tape.gradient(value, [y0, t, *variables])
    assert all(g is not None for g in grads), [g is None for g in grads]
    return [g.numpy() for g in grads]


# ---------------------------------------------------------------------------
# Neural vector field against finite differences (y0, every t, weights)
# ---------------------------------------------------------------------------

MLP = TinyMLP(dim=2, hidden=4, seed=0)
MLP_Y0 = np.array([0.6, -0.4])
# Six output times (multi-time loss) with interior times off any step grid.
MLP_TIMES = {
    "increasing": np.array([0.0, 0.15, 0.3, 0.5, 0.65, 0.8]),
    "decreasing": np.array([0.8, 0.6, 0.45, 0.2, 0.0]),
}
TIGHT = 1e-10


@functools.cache
def mlp_reference(direction):
    """FD of the DOP853 reference loss w.r.t. ``(y0, t, flat weights)``.

    h = 1e-4: the reference loss is accurate to ~1e-13, so round-off costs
    ~1e-13 / 1e-4 = 1e-9 and truncation ~h^2 |L'''| ~ 1e-9.
    """
    t = MLP_TIMES[direction]
    loss = multi_time_loss(loss_weights(len(t), 2, seed=1))
    n_y, n_t = MLP_Y0.size, t.size

    def fun(x):
        ys = dop853(TinyMLP.numpy_field(MLP.unflatten(x[n_y + n_t :])), x[:n_y], x[n_y : n_y + n_t])
        return float(loss(tf.constant(ys)))

    x = np.concatenate([MLP_Y0, t, *[v.ravel() for v in MLP.values()]])
    fd = central_fd(fun, x, 1e-4)
    return fd[:n_y], fd[n_y : n_y + n_t], fd[n_y + n_t :]


@functools.cache
def mlp_gradients(method, adjoint, direction, options_key=None):
    t = MLP_TIMES[direction]
    options = dict(options_key) if options_key else None
    kwargs = {"rtol": TIGHT, "atol": TIGHT} if options is None else {}
    grads = tape_gradients(
        MLP, MLP_Y0, t, multi_time_loss(loss_weights(len(t), 2, seed=1)), MLP.params,
        method=method, options=options, adjoint=adjoint, **kwargs,
    )  # fmt: skip
    return grads[0], grads[1], np.concatenate([g.ravel() for g in grads[2:]])


def check_against_reference(grads, reference, rtol, atol_scale, t_bound=None):
    bounds = (rtol, t_bound or rtol, rtol)
    for name, actual, expected, bound in zip(("y0", "t", "weights"), grads, reference, bounds, strict=True):
        assert_close(actual, expected, bound, bound if atol_scale else 0.0, f"d loss / d {name}")


# At rtol = atol = 1e-10 the solution, hence both gradients, carry ~1e-9 error
# (global error a few times the tolerance, gradients of order 1); the FD
# reference carries ~1e-9. 2e-7 leaves a wide margin (observed <= 6e-8) and
# is still ~5 orders below what a missing or mis-signed term would give.
# Exception: the *direct* gradient w.r.t. an interior time is the derivative
# of the 4th-order dense-output interpolant, which is only ~5e-8 accurate
# (observed up to 1.4e-7 relative to the largest entry; it matches FD of
# tfode's own discretisation to 1e-10), hence 5e-7 there.
ADAPTIVE_BOUND = 2e-7
DIRECT_T_BOUND = 5e-7


@pytest.mark.parametrize("adjoint", [False, True], ids=["direct", "adjoint"])
@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_adaptive_gradients_match_finite_differences(method, adjoint):
    grads = mlp_gradients(method, adjoint, "increasing")
    t_bound = ADAPTIVE_BOUND if adjoint else DIRECT_T_BOUND
    check_against_reference(grads, mlp_reference("increasing"), ADAPTIVE_BOUND, True, t_bound)


@pytest.mark.parametrize("adjoint", [False, True], ids=["direct", "adjoint"])
def test_decreasing_time_gradients_match_finite_differences(adjoint):
    # Integration from t=0.8 back to t=0; same error budget as above.
    grads = mlp_gradients("dopri5", adjoint, "decreasing")
    t_bound = ADAPTIVE_BOUND if adjoint else DIRECT_T_BOUND
    check_against_reference(grads, mlp_reference("decreasing"), ADAPTIVE_BOUND, True, t_bound)


def test_multi_time_loss_adjoint_equals_direct():
    # Six output times, each with its own cotangent: the adjoint adds g_i at
    # every t_i and re-anchors; both paths approximate the same gradient to
    # the solver tolerance (1e-10), so they agree to ~1e-9 (observed 3e-9),
    # except the direct d/dt through the dense-output interpolant (observed
    # 4e-8, see DIRECT_T_BOUND).
    direct = mlp_gradients("dopri5", False, "increasing")
    adjoint = mlp_gradients("dopri5", True, "increasing")
    for name, a, d in zip(("y0", "t", "weights"), adjoint, direct, strict=True):
        bound = DIRECT_T_BOUND if name == "t" else 1e-7
        assert_close(a, d, bound, bound, f"adjoint vs direct, d loss / d {name}")
    # Every interior time matters: d L / d t_i = g_i . f(t_i, y_i) is far from zero.
    assert np.all(np.abs(direct[1]) > 1e-3)


RK4_STEP = 0.1


@functools.cache
def rk4_same_discretisation_fd():
    """FD of tfode's own rk4 (step 0.1) in a traced graph, w.r.t. ``(y0, t, flat weights)``."""
    t = MLP_TIMES["increasing"]
    loss = multi_time_loss(loss_weights(len(t), 2, seed=1))
    n_y, n_t = MLP_Y0.size, t.size
    spec = tf.TensorSpec([n_y + n_t + sum(MLP.sizes())], F64)

    @tf.function(input_signature=[spec])
    def fun_graph(x):
        params, start = [], n_y + n_t
        for p, size in zip(MLP.params, MLP.sizes(), strict=True):
            params.append(tf.reshape(x[start : start + size], p.shape))
            start += size
        ys = tfode.odeint(
            lambda tt, y: TinyMLP.apply(params, tt, y), x[:n_y], tf.ensure_shape(x[n_y : n_y + n_t], [n_t]),
            method="rk4", options={"step_size": RK4_STEP},
        )  # fmt: skip
        return loss(ys)

    x = np.concatenate([MLP_Y0, t, *[v.ravel() for v in MLP.values()]])
    # h = 1e-6: the discretisation is a smooth function of every input (the
    # last step lands on t[-1] within a 1e-3 * step slack, far wider than h),
    # round-off costs ~1e-16 / 1e-6 = 1e-10 and truncation h^2 ~ 1e-12.
    fd = central_fd(lambda z: float(fun_graph(tf.constant(z))), x, 1e-6)
    return fd[:n_y], fd[n_y : n_y + n_t], fd[n_y + n_t :]


def test_rk4_direct_gradients_equal_finite_differences_of_the_same_discretisation():
    grads = mlp_gradients("rk4", False, "increasing", (("step_size", RK4_STEP),))
    # Backpropagation through the loop is the exact derivative of the
    # discretisation: only FD round-off/truncation (~1e-10) separates them.
    check_against_reference(grads, rk4_same_discretisation_fd(), 1e-7, True)


def test_rk4_adjoint_gradients_approximate_the_discretisation():
    grads = mlp_gradients("rk4", True, "increasing", (("step_size", RK4_STEP),))
    # The backward rk4 solve (same step 0.1, restarted at each output time)
    # differs from the exact derivative of the forward discretisation by the
    # method's O(h^4) error, ~1e-6 here; 1e-4 is well below any O(1) mistake.
    check_against_reference(grads, rk4_same_discretisation_fd(), 1e-4, True)
    # ... and it is a genuinely approximate gradient, not the direct one.
    direct = mlp_gradients("rk4", False, "increasing", (("step_size", RK4_STEP),))
    assert np.max(np.abs(grads[2] - direct[2])) > 1e-12


# ---------------------------------------------------------------------------
# Closed forms
# ---------------------------------------------------------------------------

LINEAR_A = np.array([[-0.3, 1.1, 0.0], [-0.9, -0.2, 0.4], [0.2, 0.0, -0.6]])
LINEAR_Y0 = np.array([1.0, -0.5, 0.25])
LINEAR_T = np.array([0.0, 0.4, 1.1])


@pytest.mark.parametrize("adjoint", [False, True], ids=["direct", "adjoint"])
def test_linear_ode_gradients_match_expm_frechet(adjoint):
    """``y' = A y``: ``y_i = expm(A tau_i) y0``; d/dA by the Fréchet derivative of expm."""
    a_var = tf.Variable(LINEAR_A, dtype=F64)
    weights = loss_weights(len(LINEAR_T), 3, seed=2)
    g_y0, g_t, g_a = tape_gradients(
        lambda t, y: tf.linalg.matvec(a_var, y), LINEAR_Y0, LINEAR_T, multi_time_loss(weights), [a_var],
        rtol=TIGHT, atol=TIGHT, adjoint=adjoint,
    )  # fmt: skip

    r, s = weights
    taus = LINEAR_T - LINEAR_T[0]
    ys = np.stack([scipy.linalg.expm(LINEAR_A * tau) @ LINEAR_Y0 for tau in taus])
    cot = r + s * ys  # dL/dy_i
    exp_y0 = sum(scipy.linalg.expm(LINEAR_A * tau).T @ g for tau, g in zip(taus, cot, strict=True))
    exp_a = np.zeros_like(LINEAR_A)
    for i, j in np.ndindex(*LINEAR_A.shape):
        direction = np.zeros_like(LINEAR_A)
        direction[i, j] = 1.0
        exp_a[i, j] = sum(
            g @ scipy.linalg.expm_frechet(LINEAR_A * tau, direction * tau, compute_expm=False) @ LINEAR_Y0
            for tau, g in zip(taus, cot, strict=True)
        )
    exp_t = np.array([g @ (LINEAR_A @ y) for g, y in zip(cot, ys, strict=True)])
    exp_t[0] = -exp_t[1:].sum()  # shifting t0 shifts every later output back in time
    # Closed forms are exact; the solver at 1e-10 leaves ~1e-9 (see ADAPTIVE_BOUND).
    assert_close(g_y0, exp_y0, ADAPTIVE_BOUND, ADAPTIVE_BOUND, "dL/dy0")
    assert_close(g_t, exp_t, ADAPTIVE_BOUND, ADAPTIVE_BOUND, "dL/dt")
    assert_close(g_a, exp_a, ADAPTIVE_BOUND, ADAPTIVE_BOUND, "dL/dA")


@pytest.mark.parametrize("adjoint", [False, True], ids=["direct", "adjoint"])
def test_exponential_decay_rate_and_end_time_gradients(adjoint):
    """``y' = -k y``: ``y1 = y0 exp(-k (t1 - t0))``, ``L = sum(y1 + y1^2 / 2)``."""
    k = tf.Variable(0.8, dtype=F64)
    y0 = np.array([1.5, -0.7])
    t = np.array([0.2, 1.3])

    def loss(ys):
        return tf.reduce_sum(ys[-1] + 0.5 * ys[-1] ** 2)

    g_y0, g_t, g_k = tape_gradients(lambda tt, y: -k * y, y0, t, loss, [k], rtol=TIGHT, atol=TIGHT, adjoint=adjoint)
    tau = t[1] - t[0]
    y1 = y0 * np.exp(-0.8 * tau)
    g = 1.0 + y1
    assert_close(g_k, np.sum(g * y1 * -tau), 1e-8, 0, "dL/dk")
    assert_close(g_t[1], np.sum(g * -0.8 * y1), 1e-8, 0, "dL/dt1")
    assert_close(g_t[0], -np.sum(g * -0.8 * y1), 1e-8, 0, "dL/dt0")
    assert_close(g_y0, g * np.exp(-0.8 * tau), 1e-8, 0, "dL/dy0")


# ---------------------------------------------------------------------------
# Adjoint vs direct on a neural field; seminorm vs full
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, tol, agree",
    [
        # Both gradients are within ~tol * (sensitivity) of the exact one; the
        # bound is a generous multiple of tol, relative to the largest entry.
        (tf.float64, 1e-7, 5e-5),
        # float32: tol 1e-5 sits well above float32 round-off (~1e-7 per step).
        (tf.float32, 1e-5, 5e-4),
    ],
    ids=["float64", "float32"],
)
def test_adjoint_matches_direct_on_neural_field(dtype, tol, agree):
    mlp = TinyMLP(dim=3, hidden=16, seed=3, dtype=dtype, gain=1.5)
    y0 = tf.constant([0.5, -1.0, 0.3], dtype)
    t = tf.constant([0.0, 0.6, 1.2], dtype)
    loss = multi_time_loss(tuple(w.astype(dtype.as_numpy_dtype) for w in loss_weights(3, 3, seed=4)))
    results = [
        tape_gradients(mlp, y0, t, loss, mlp.params, rtol=tol, atol=tol, adjoint=adjoint) for adjoint in (False, True)
    ]
    for i, (d, a) in enumerate(zip(*results, strict=True)):
        assert d.dtype == a.dtype == dtype.as_numpy_dtype
        assert_close(a, d, agree, agree, f"gradient {i}")


def test_seminorm_matches_full_norm_with_no_more_backward_evaluations():
    # 2 -> 64 -> 2: 386 parameters, whose accumulators the full norm also
    # controls. They start at zero, so with atol << rtol their error scale is
    # atol-dominated and the full norm forces small steps: the regime the
    # seminorm is for. (With rtol = atol the two step sequences are close and
    # either may come out a few evaluations ahead: the step controller is a
    # heuristic, so "<=" is asserted only here.)
    mlp = TinyMLP(dim=2, hidden=64, seed=5)
    y0 = np.array([1.0, -0.5])
    t = np.array([0.0, 1.5])
    loss = multi_time_loss(loss_weights(2, 2, seed=6))
    out = {}
    for norm in ("seminorm", "full"):
        stats = tfode.SolveStats()
        grads = tape_gradients(
            mlp, y0, t, loss, mlp.params, rtol=1e-6, atol=1e-9, adjoint=True, adjoint_norm=norm, backward_stats=stats
        )
        assert int(stats.status) == 0 and int(stats.num_fn_evals) > 0 and int(stats.num_steps) > 0
        out[norm] = grads, int(stats.num_fn_evals), int(stats.num_steps)
    print(
        f"\nbackward NFE / steps: seminorm {out['seminorm'][1]} / {out['seminorm'][2]}, "
        f"full {out['full'][1]} / {out['full'][2]}"
    )
    assert out["seminorm"][1] <= out["full"][1]
    # Both are tolerance-limited (1e-6) approximations of one gradient.
    for i, (s, f) in enumerate(zip(out["seminorm"][0], out["full"][0], strict=True)):
        assert_close(s, f, 1e-4, 1e-4, f"gradient {i}")


# ---------------------------------------------------------------------------
# Structures, args, Keras, unused outputs
# ---------------------------------------------------------------------------

# A linear system on 4 states, split into leaves to build nested states.
NEST_A = np.array([[0.0, 1.0, 0.2, 0.0], [-1.0, -0.3, 0.0, 0.1], [0.1, 0.0, -0.5, 0.6], [0.0, -0.2, -0.6, -0.1]])
NEST_Y0 = np.array([0.8, -0.2, 0.5, 1.0])
NEST_T = np.array([0.0, 0.5, 1.0])
# These tests are about plumbing (a misplaced leaf gives O(1) errors), so a
# cheaper 1e-8 solve; the closed-form errors are then ~1e-8, bounded by 1e-6.
NEST_TOL, NEST_BOUND = 1e-8, 1e-6


def _nest_field(pack, unpack):
    a = tf.constant(NEST_A)
    return lambda t, y: pack(tf.linalg.matvec(a, unpack(y)))


STRUCTURES = {
    "tuple": (lambda v: (v[:3], v[3:]), lambda s: tf.concat(list(s), 0)),
    "dict": (lambda v: {"pos": v[:2], "vel": v[2:]}, lambda s: tf.concat([s["pos"], s["vel"]], 0)),
}


@pytest.mark.parametrize("adjoint", [False, True], ids=["direct", "adjoint"])
@pytest.mark.parametrize("structure", ["tuple", "dict"])
def test_nested_state_gradients(structure, adjoint):
    pack, unpack = STRUCTURES[structure]
    y0 = pack(tf.constant(NEST_Y0))
    t = tf.constant(NEST_T, F64)
    r, s = loss_weights(3, 4, seed=7)
    with tf.GradientTape() as tape:
        tape.watch([y0, t])
        ys = tfode.odeint(_nest_field(pack, unpack), y0, t, rtol=NEST_TOL, atol=NEST_TOL, adjoint=adjoint)
        flat = unpack_time_major(ys, unpack)
        value = tf.reduce_sum(r * flat + 0.5 * s * flat**2)
    g_y0, g_t = tape.gradient(value, [y0, t])
    tf.nest.assert_same_structure(g_y0, y0)

    exps = [scipy.linalg.expm(NEST_A * tau) for tau in NEST_T - NEST_T[0]]
    ys_np = np.stack([e @ NEST_Y0 for e in exps])
    cot = r + s * ys_np
    exp_y0 = sum(e.T @ g for e, g in zip(exps, cot, strict=True))
    exp_t = np.array([g @ (NEST_A @ y) for g, y in zip(cot, ys_np, strict=True)])
    exp_t[0] = -exp_t[1:].sum()
    assert_close(unpack(g_y0), exp_y0, NEST_BOUND, NEST_BOUND, "dL/dy0")
    assert_close(g_t, exp_t, NEST_BOUND, NEST_BOUND, "dL/dt")


def unpack_time_major(ys, unpack):
    """``[T, ...]`` leaves of a nested solution -> ``[T, 4]``."""
    return tf.stack([unpack(tf.nest.map_structure(lambda leaf, i=i: leaf[i], ys)) for i in range(len(NEST_T))])


@pytest.mark.parametrize("adjoint", [False, True], ids=["direct", "adjoint"])
def test_unused_outputs(adjoint):
    """Only the first leaf at one interior time enters the loss: the other leaf and times get no cotangent."""
    pack, unpack = STRUCTURES["tuple"]
    y0 = pack(tf.constant(NEST_Y0))
    t = tf.constant(NEST_T, F64)
    with tf.GradientTape() as tape:
        tape.watch([y0, t])
        first, _unused = tfode.odeint(_nest_field(pack, unpack), y0, t, rtol=NEST_TOL, atol=NEST_TOL, adjoint=adjoint)
        value = tf.reduce_sum(first[1] ** 2)
    g_y0, g_t = tape.gradient(value, [y0, t])
    assert g_y0[0] is not None and g_y0[1] is not None
    e = scipy.linalg.expm(NEST_A * (NEST_T[1] - NEST_T[0]))
    y1 = e @ NEST_Y0
    cot = np.concatenate([2 * y1[:3], np.zeros(1)])
    dt1 = cot @ (NEST_A @ y1)
    assert_close(unpack(g_y0), e.T @ cot, NEST_BOUND, NEST_BOUND, "dL/dy0")
    assert_close(g_t, [-dt1, dt1, 0.0], NEST_BOUND, NEST_BOUND, "dL/dt")


ARGS_W = np.array([0.7, -0.6])
ARGS_SCALE = 1.2  # a tf.Variable read next to the args: their accumulators share one buffer


def _args_field_np(w, scale):
    return lambda t, y: np.array([-scale * w[0] * y[0] + np.sin(w[1] * y[1]), w[1] * y[0] - 0.5 * y[1] * (1 + t)])


@pytest.mark.parametrize("adjoint", [False, True], ids=["direct", "adjoint"])
def test_args_gradient_matches_finite_differences(adjoint):
    scale = tf.Variable(ARGS_SCALE, dtype=F64)

    def field(t, y, w):
        return tf.stack([-scale * w[0] * y[0] + tf.sin(w[1] * y[1]), w[1] * y[0] - 0.5 * y[1] * (1 + t)])

    y0 = np.array([1.0, 0.5])
    t = np.array([0.0, 0.3, 0.6])
    loss = multi_time_loss(loss_weights(3, 2, seed=8))
    w = tf.constant(ARGS_W)
    with tf.GradientTape() as tape:
        tape.watch(w)
        ys = tfode.odeint(field, tf.constant(y0), tf.constant(t), args=(w,), rtol=TIGHT, atol=TIGHT, adjoint=adjoint)
        value = loss(ys)
    g_w, g_scale = tape.gradient(value, [w, scale])
    # FD of the DOP853 reference, h = 1e-4 (see mlp_reference).
    fd = central_fd(
        lambda x: float(loss(tf.constant(dop853(_args_field_np(x[:2], x[2]), y0, t)))), [*ARGS_W, ARGS_SCALE], 1e-4
    )
    assert_close(g_w.numpy(), fd[:2], ADAPTIVE_BOUND, ADAPTIVE_BOUND, "dL/dargs")
    assert_close(g_scale.numpy(), fd[2], ADAPTIVE_BOUND, 0.0, "dL/dvariable")


def test_keras_layers_as_vector_field():
    init = keras.initializers.GlorotUniform
    model = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(8, activation="tanh", kernel_initializer=init(seed=0), dtype="float64"),
            keras.layers.Dense(2, kernel_initializer=init(seed=1), bias_initializer="ones", dtype="float64"),
        ]
    )

    def func(t, y):
        return model(y[None, :])[0]

    y0 = np.array([0.4, -0.9])
    t = np.array([0.0, 0.5, 1.0])
    loss = multi_time_loss(loss_weights(3, 2, seed=9))
    weights = model.trainable_weights
    assert len(weights) == 4
    direct, adjoint = (
        tape_gradients(func, y0, t, loss, weights, rtol=1e-8, atol=1e-8, adjoint=adj) for adj in (False, True)
    )
    for i, (d, a) in enumerate(zip(direct, adjoint, strict=True)):
        assert np.any(d != 0)
        # Tolerance-limited agreement of two 1e-8 solves (observed ~1e-7).
        assert_close(a, d, 1e-5, 1e-5, f"gradient {i}")


# ---------------------------------------------------------------------------
# Graph modes, tapes, statistics, failures
# ---------------------------------------------------------------------------

GRAPH_MLP = TinyMLP(dim=2, hidden=4, seed=10)
GRAPH_Y0 = np.array([0.3, 0.8])
GRAPH_T = np.array([0.0, 0.5, 1.0])
# Tracing and compiling gradients of the loop dominates these tests (~10 s of
# CPU per graph). bosh3 keeps the graph small and runs the same generic step,
# controller, dense output and adjoint code as every other adaptive method.
GRAPH_METHOD = "bosh3"


def _both_gradients(y0, t, stats, xla):
    """Direct and adjoint gradients of one loss w.r.t. ``(y0, t, weights)``."""
    loss = multi_time_loss(loss_weights(3, 2, seed=11))
    out = []
    for adjoint in (False, True):
        kwargs = {"backward_stats": stats} if adjoint else {}
        if xla and not adjoint:
            kwargs["options"] = {"max_num_steps": 200}  # sizes the XLA gradient buffers
        with tf.GradientTape() as tape:
            tape.watch([y0, t])
            ys = tfode.odeint(GRAPH_MLP, y0, t, method=GRAPH_METHOD, rtol=1e-7, atol=1e-7, adjoint=adjoint, **kwargs)
            value = loss(ys)
        out.append(tape.gradient(value, [y0, t, *GRAPH_MLP.params]))
    return out


@functools.cache
def eager_graph_reference():
    stats = tfode.SolveStats()
    grads = _both_gradients(tf.constant(GRAPH_Y0), tf.constant(GRAPH_T), stats, xla=False)
    return [[g.numpy() for g in mode] for mode in grads], int(stats.num_fn_evals)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["tf_function", "xla"])
def test_gradients_in_tf_function_and_xla_equal_eager(jit_compile):
    eager, eager_nfe = eager_graph_reference()
    stats = tfode.SolveStats()
    compiled = tf.function(lambda a, b: _both_gradients(a, b, stats, xla=jit_compile), jit_compile=jit_compile)
    result = compiled(tf.constant(GRAPH_Y0), tf.constant(GRAPH_T))
    # The backward pass ran inside the graph and filled the variables.
    assert int(stats.num_fn_evals) == eager_nfe and int(stats.status) == 0
    for mode, e_grads, c_grads in zip(("direct", "adjoint"), eager, result, strict=True):
        for i, (e, c) in enumerate(zip(e_grads, c_grads, strict=True)):
            assert c is not None, (mode, i)
            # Graph mode runs the same kernels in the same order as eager:
            # equal to round-off. XLA may fuse and reorder float64 arithmetic
            # (~1e-16 per op), which leaves the step sequence, hence the
            # result, unchanged to far better than 1e-9.
            bound = 1e-9 if jit_compile else 1e-12
            assert_close(c, e, bound, bound, f"{mode} gradient {i}")


@pytest.mark.parametrize("adjoint", [False, True], ids=["direct", "adjoint"])
def test_adjoint_forward_is_not_recorded_on_outer_tape(adjoint):
    """A persistent tape sees no path from ``y0`` to the states the forward loop hands ``func``.

    Every recorded op keeps its inputs alive and grows the tape with the step
    count; no public API counts tape ops, so we probe connectivity instead:
    with ``adjoint=False`` the probe is connected (sanity), with ``adjoint=True``
    it must not be, while the gradient through ``odeint`` stays exact. The probe
    needs the eager tensors the loop hands ``func``, so the solve runs plain eagerly
    (``eager_cache=False``); a cached eager call runs the adjoint inside one graph,
    where the loop is reached only through the custom gradient.
    """
    seen = []

    def func(t, y):
        seen.append(y)
        return -0.5 * y

    y0 = tf.constant([1.0, 2.0], F64)
    t = tf.constant([0.0, 1.0], F64)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(y0)
        ys = tfode.odeint(func, y0, t, rtol=1e-8, atol=1e-8, adjoint=adjoint, eager_cache=False)
        value = tf.reduce_sum(ys[-1])
    num_forward_calls = len(seen)
    assert num_forward_calls > 5
    probe = tape.gradient(seen[-1], y0)
    assert (probe is None) == adjoint
    np.testing.assert_allclose(tape.gradient(value, y0).numpy(), np.exp(-0.5) * np.ones(2), rtol=1e-7)
    del tape


@pytest.mark.parametrize("eager_cache", [False, True], ids=["plain-eager", "cached"])
def test_backward_failure_raises_eagerly(eager_cache):
    """Plain eager: ``IntegrationError``. A cached eager call runs the backward pass as a graph,
    whose check raises ``InvalidArgumentError`` naming the status (as in any graph)."""
    stats = tfode.SolveStats()
    y0 = tf.constant([0.6, -0.4], F64)
    with tf.GradientTape() as tape:
        tape.watch(y0)
        ys = tfode.odeint(MLP, y0, tf.constant([0.0, 1.0], F64), rtol=1e-8, atol=1e-8, adjoint=True,
                          adjoint_options={"max_num_steps": 2}, backward_stats=stats,
                          eager_cache=eager_cache)  # fmt: skip
        value = tf.reduce_sum(ys**2)
    if eager_cache:
        with pytest.raises(tf.errors.InvalidArgumentError, match="backward ODE solve failed"):
            tape.gradient(value, y0)
    else:
        with pytest.raises(tfode.IntegrationError, match="Backward") as excinfo:
            tape.gradient(value, y0)
        assert excinfo.value.status == tfode.Status.MAX_STEPS_REACHED
    assert int(stats.status) == int(tfode.Status.MAX_STEPS_REACHED)
    assert int(stats.num_steps) == 2
