"""Per-sample solving (``SolverConfig(batch_axis=0)``): each sample equals its solve alone."""

import numpy as np
import pytest
import scipy.integrate
import tensorflow as tf

import tfode

F64 = tf.float64


def _van_der_pol(mu):
    """``x'' = mu (1 - x^2) x' - x`` for a batch ``[B, 2]`` with per-sample ``mu`` ``[B]``."""

    def f(t, y):
        x, v = y[:, 0], y[:, 1]
        return tf.stack([v, mu * (1 - x**2) * v - x], axis=1)

    return f


MUS = np.array([0.5, 2.0, 8.0, 20.0])


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
def test_each_sample_equals_its_solve_alone(method):
    """Same steps and outputs to round-off as B separate single-sample solves (float64)."""
    mu = tf.constant(MUS, F64)
    y0 = tf.constant([[2.0, 0.0]] * len(MUS), F64)
    t = tf.constant(np.linspace(0.0, 5.0, 11), F64)
    config = tfode.SolverConfig(method=method, rtol=1e-6, atol=1e-6, batch_axis=0)
    batch = tfode.solve(_van_der_pol(mu), y0, t, config)
    for i in range(len(MUS)):
        alone = tfode.solve(_van_der_pol(mu[i : i + 1]), y0[i : i + 1], t, config)
        assert int(alone.stats.num_steps[0]) == int(batch.stats.num_steps[i])
        assert int(alone.stats.num_fn_evals[0]) == int(batch.stats.num_fn_evals[i])
        np.testing.assert_allclose(batch.ys.numpy()[:, i], alone.ys.numpy()[:, 0], rtol=0, atol=1e-12)
    # The joint solver steps every sample at the batch's pace: more steps than the mean sample needs.
    joint = tfode.solve(_van_der_pol(mu), y0, t, config.replace(batch_axis=None))
    assert np.mean(batch.stats.num_steps.numpy()) < int(joint.stats.num_steps)


def test_every_sample_meets_its_tolerance_against_scipy():
    mu = tf.constant(MUS, F64)
    y0 = np.array([[2.0, 0.0]] * len(MUS))
    t = np.linspace(0.0, 5.0, 11)
    tol = 1e-7
    sol = tfode.solve(_van_der_pol(mu), tf.constant(y0), tf.constant(t),
                      tfode.SolverConfig(rtol=tol, atol=tol, batch_axis=0))  # fmt: skip
    for i, m in enumerate(MUS):
        ref = scipy.integrate.solve_ivp(lambda _, y, m=m: [y[1], m * (1 - y[0] ** 2) * y[1] - y[0]], (0, 5), y0[i],
                                        method="DOP853", rtol=1e-12, atol=1e-12, t_eval=t).y.T  # fmt: skip
        # Global error of a local-error controller: allow 1000x the tolerance (stiff-ish mu = 20).
        assert np.max(np.abs(sol.ys.numpy()[:, i] - ref)) < 1e3 * tol


def test_per_sample_output_times_match_dense_solves():
    """Rows of t [B, N] (padded by repeating the last time) equal solves at those times."""
    t = np.array([[0.0, 0.3, 0.9, 1.7], [0.0, 0.5, 0.5, 0.5], [0.2, 0.4, 1.0, 2.5]])
    rates = tf.constant([1.0, 2.0, 0.5], F64)
    y0 = tf.constant([[1.0], [2.0], [3.0]], F64)
    sol = tfode.solve(lambda t, y: -rates[:, None] * y, y0, tf.constant(t),
                      tfode.SolverConfig(rtol=1e-10, atol=1e-10, batch_axis=0))  # fmt: skip
    exact = y0.numpy()[:, :1] * np.exp(-rates.numpy()[:, None] * (t - t[:, :1]))
    np.testing.assert_allclose(sol.ys.numpy()[:, :, 0].T, exact, rtol=1e-8)
    assert sol.ys.shape == (4, 3, 1)


def test_field_receives_one_time_per_sample():
    seen = []

    def f(t, y):
        seen.append(t.shape)
        return tf.ones_like(y) * t[:, None]

    t = tf.constant([[0.0, 1.0], [0.0, 2.0]], F64)
    sol = tfode.solve(f, tf.zeros([2, 1], F64), t, tfode.SolverConfig(rtol=1e-9, atol=1e-9, batch_axis=0))
    assert all(shape == (2,) for shape in seen)
    np.testing.assert_allclose(sol.ys.numpy()[-1, :, 0], [0.5, 2.0], rtol=1e-8)  # y = t^2 / 2


def test_a_failing_sample_fails_alone():
    """NaN dynamics in one sample: its own status and NaN outputs; the others equal their solves alone."""
    bad = tf.constant([0.0, 1.0, 0.0], F64)

    def f(t, y):
        # log of a negative number: NaN for sample 1 only.
        return -y + tf.where(bad[:, None] > 0, tf.math.log(y - 10.0), tf.zeros_like(y))

    y0 = tf.ones([3, 2], F64)
    t = tf.constant([0.0, 0.5, 1.0], F64)
    config = tfode.SolverConfig(rtol=1e-8, atol=1e-8, batch_axis=0)
    sol = tfode.solve(f, y0, t, config, raise_on_failure=False)
    status = sol.stats.status.numpy()
    assert status[1] == tfode.Status.NON_FINITE and status[0] == status[2] == tfode.Status.SUCCESS
    assert np.all(np.isnan(sol.ys.numpy()[1:, 1]))
    np.testing.assert_allclose(sol.ys.numpy()[:, 0], np.exp(-t.numpy())[:, None] * np.ones(2), rtol=1e-7)
    with pytest.raises(tfode.IntegrationError, match="sample 1 of 3"):
        tfode.solve(f, y0, t, config)


def test_direct_gradients_match_finite_differences_and_the_joint_solver():
    """Gradients to y0, t and a parameter; a rejected NaN trial step in one sample does not poison them."""
    w = tf.Variable(1.0, dtype=F64)
    y0 = tf.constant([[1.0], [0.5], [2.0]], F64)
    t = tf.constant([[0.0, 1.5], [0.0, 1.0], [0.0, 0.8]], F64)
    config = tfode.SolverConfig(rtol=1e-10, atol=1e-12, batch_axis=0,
                                controller=tfode.PIController(first_step=1.4))  # fmt: skip

    def loss_of(w_value, y0, t):
        # f = -w sqrt(y): sample 0's first trial step of 1.4 leaves the domain (NaN) and is rejected.
        sol = tfode.solve(lambda t, y: -w_value * tf.sqrt(y), y0, t, config)
        return tf.reduce_sum(sol.ys[-1] ** 2), sol

    with tf.GradientTape() as tape:
        tape.watch([y0, t])
        loss, sol = loss_of(w, y0, t)
    assert int(sol.stats.num_rejected[0]) >= 1
    g_w, g_y0, g_t = tape.gradient(loss, [w, y0, t])

    def value(w_value, y0_value, t_value):
        return float(loss_of(tf.constant(w_value, F64), y0_value, t_value)[0])

    h = 1e-6
    fd_w = (value(1.0 + h, y0, t) - value(1.0 - h, y0, t)) / (2 * h)
    np.testing.assert_allclose(float(g_w), fd_w, rtol=1e-6)
    bump = np.zeros((3, 1))
    bump[1, 0] = h
    fd_y0 = (value(1.0, y0 + bump, t) - value(1.0, y0 - bump, t)) / (2 * h)
    np.testing.assert_allclose(float(g_y0[1, 0]), fd_y0, rtol=1e-6)
    bump = np.zeros((3, 2))
    bump[2, 1] = h
    fd_t = (value(1.0, y0, t + bump) - value(1.0, y0, t - bump)) / (2 * h)
    np.testing.assert_allclose(float(g_t[2, 1]), fd_t, rtol=1e-5)


def test_xla_compiles_and_matches_graph_mode():
    mu = tf.constant(MUS, tf.float32)
    y0 = tf.constant([[2.0, 0.0]] * len(MUS))
    t = tf.constant(np.linspace(0.0, 3.0, 7), tf.float32)
    config = tfode.SolverConfig(rtol=1e-5, atol=1e-5, batch_axis=0)

    def run(y0):
        sol = tfode.solve(_van_der_pol(mu), y0, t, config, raise_on_failure=False)
        return sol.ys, sol.stats.num_steps

    graph_ys, graph_steps = tf.function(run)(y0)
    xla_ys, xla_steps = tf.function(run, jit_compile=True)(y0)
    np.testing.assert_array_equal(graph_steps.numpy(), xla_steps.numpy())
    np.testing.assert_allclose(xla_ys.numpy(), graph_ys.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("copies", [1, 600], ids=["small-state", "large-state"])
def test_graph_mode_writes_every_covered_time_as_the_xla_loop_does(copies):
    """Outside XLA a small state's covered output times are written at once (one scatter); under XLA,
    and for states over ``_COVERED_AT_ONCE_MAX_ELEMENTS`` (1200 elements here), one per inner
    iteration: the same values, with many times per step, padded repeats, a backward row and a
    failed sample; and eagerly without the cache too."""
    k = tf.constant([1.0, 3.0, 0.5, 2.0], F64)
    field = lambda t, y: -y * k[:, None] * (1.0 + 0.1 * t[:, None])  # noqa: E731
    dense = np.linspace(0.0, 2.0, 41)
    times = np.stack([dense, dense * 0.5, 2.0 - dense, np.minimum(dense, 1.2)])  # row 3: padded repeats
    y0 = tf.constant(np.tile([[1.0, -2.0], [0.5, 0.0], [1.0, 1.0], [np.nan, 1.0]], [1, copies]), F64)
    config = tfode.SolverConfig(rtol=1e-8, atol=1e-8, batch_axis=0)

    def run(y0):
        sol = tfode.solve(field, y0, tf.constant(times, F64), config, raise_on_failure=False)
        return sol.ys, sol.stats.num_steps, sol.stats.status

    results = {"graph": tf.function(run)(y0), "xla": tf.function(run, jit_compile=True)(y0)}
    sol = tfode.solve(field, y0, tf.constant(times, F64), config, raise_on_failure=False, eager_cache=False)
    results["eager"] = (sol.ys, sol.stats.num_steps, sol.stats.status)
    graph_ys = results["graph"][0].numpy()
    assert int(results["graph"][1][0]) < len(dense) - 1  # several output times per step
    for name in ("xla", "eager"):
        ys, steps, status = (x.numpy() for x in results[name])
        np.testing.assert_array_equal(steps, results["graph"][1].numpy(), err_msg=name)
        np.testing.assert_array_equal(status, results["graph"][2].numpy(), err_msg=name)
        np.testing.assert_allclose(ys, graph_ys, rtol=1e-12, atol=1e-14, err_msg=name)
    assert np.all(np.isnan(graph_ys[1:, 3])) and list(results["graph"][2].numpy()[:3]) == [0, 0, 0]
    # Against the exact solution y0 exp(-k (t - t0 + 0.05 (t^2 - t0^2))) of the three rows that run.
    t_rows, t0 = times.T[:, :3, None], times.T[:1, :3, None]
    exact = y0.numpy()[None, :3] * np.exp(-k.numpy()[None, :3, None] * (t_rows - t0 + 0.05 * (t_rows**2 - t0**2)))
    np.testing.assert_allclose(graph_ys[:, :3], exact, rtol=1e-6, atol=1e-8)


def test_end_time_only_rows_hold_the_start_and_the_end():
    """With times [B, 2] no output buffer is written: row 0 is y0 as given, row 1 the final state
    where the sample reached it (NaN where it failed), in graph mode and under XLA."""
    y0 = tf.constant([[1.0], [np.nan], [2.0]], F64)
    times = tf.constant([[0.0, 1.0], [0.0, 1.0], [0.0, -0.5]], F64)
    config = tfode.SolverConfig(rtol=1e-9, atol=1e-9, batch_axis=0)
    for jit_compile in (False, True):
        sol = tf.function(lambda y: tfode.solve(lambda t, y: -y, y, times, config, raise_on_failure=False),
                          jit_compile=jit_compile)(y0)  # fmt: skip
        ys = sol.ys.numpy()
        np.testing.assert_array_equal(ys[0], y0.numpy())
        np.testing.assert_allclose(ys[1, [0, 2], 0], [np.exp(-1.0), 2.0 * np.exp(0.5)], rtol=1e-8)
        assert np.isnan(ys[1, 1, 0]) and list(sol.stats.status.numpy()) == [0, 3, 0]


def test_per_sample_rejects_what_it_cannot_do():
    with pytest.raises(ValueError, match="batch_axis must be None"):
        tfode.SolverConfig(batch_axis=1)
    config = tfode.SolverConfig(batch_axis=0)
    with pytest.raises(ValueError, match="leading batch axis"):
        tfode.solve(lambda t, y: -y, tf.constant(1.0), [0.0, 1.0], config)
    with pytest.raises(ValueError, match="rows \\[1\\] are not"):
        tfode.solve(lambda t, y: -y, tf.ones([2, 1]), tf.constant([[0.0, 1.0, 2.0], [0.0, 1.0, 0.5]]), config)


def test_constant_step_budget_covers_the_widest_row():
    """The default step budget of ConstantStepSize comes from the longest per-sample span, not row 0."""
    t = tf.constant([[0.0, 0.5], [0.0, 3.0]], F64)
    config = tfode.SolverConfig(method="rk4", controller=tfode.ConstantStepSize(0.1), batch_axis=0)
    sol = tfode.solve(lambda t, y: -y, tf.ones([2, 1], F64), t, config)
    np.testing.assert_array_equal(sol.stats.num_steps.numpy(), [5, 30])
    np.testing.assert_allclose(sol.ys.numpy()[-1, :, 0], np.exp([-0.5, -3.0]), rtol=1e-5)


def test_empty_batch():
    sol = tfode.solve(lambda t, y: -y, tf.zeros([0, 3]), tf.constant([0.0, 0.5, 1.0]),
                      tfode.SolverConfig(batch_axis=0))  # fmt: skip
    assert sol.ys.shape == (3, 0, 3) and sol.stats.num_steps.shape == (0,)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_failed_sample_does_not_drop_the_others_gradients(jit_compile):
    """``dy/dt = -k / y`` reaches y = 0 at t = y0² / 2k: the sample with k = 5 fails mid-solve, and
    ``f`` is not finite at the zero state. The others' gradients still match the exact ones
    (``y(1) = sqrt(y0² - 2k)``): the failed row stays frozen where ``f`` was finite."""
    k = tf.constant([0.1, 5.0, 0.2], F64)
    y0 = tf.constant([1.0, 1.0, 1.0], F64)
    t = tf.constant([0.0, 1.0], F64)
    config = tfode.SolverConfig(rtol=1e-10, atol=1e-10, batch_axis=0)

    def run(y0, k):
        with tf.GradientTape() as tape:
            tape.watch([y0, k])
            sol = tfode.solve(lambda t_, y, k_: -k_ / y, y0, t, config, args=(k,), raise_on_failure=False)
            loss = tf.reduce_sum(tf.gather(sol.ys[-1], [0, 2]))
        return tape.gradient(loss, [y0, k]), sol.stats.status

    (dy0, dk), status = tf.function(run, jit_compile=jit_compile)(y0, k)
    assert list(status.numpy() != 0) == [False, True, False]
    exact = np.sqrt(1.0 - 2 * k.numpy()[[0, 2]])
    np.testing.assert_allclose(dy0.numpy()[[0, 2]], 1.0 / exact, rtol=1e-6)
    np.testing.assert_allclose(dk.numpy()[[0, 2]], -1.0 / exact, rtol=1e-6)
    assert dy0.numpy()[1] == 0 and dk.numpy()[1] == 0
