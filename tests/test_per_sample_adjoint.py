"""The per-sample adjoint (``SolverConfig(batch_axis=0, adjoint=True)``): per-sample backward steps,
parameter gradients summed over the batch."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfode

F64 = tf.float64
B, D = 5, 3


def _field(dtype=F64, seed=0):
    """``f(t, y) = tanh(y W) + c t`` (``t`` ``[B]``), with ``W`` and ``c`` variables."""
    rng = np.random.RandomState(seed)
    w = tf.Variable(rng.normal(scale=0.6, size=[D, D]), dtype=dtype, name="w")
    c = tf.Variable(rng.normal(scale=0.3, size=[D]), dtype=dtype, name="c")

    def f(t, y):
        return tf.tanh(y @ w) + c * tf.reshape(t, [-1, 1])

    return f, [w, c]


def _problem(dtype=F64):
    rng = np.random.RandomState(1)
    y0 = tf.constant(rng.normal(size=[B, D]), dtype)
    # Per-sample times: every row its own grid on [0, 2]; row 3 padded by repeating its last time.
    rows = np.sort(rng.uniform(0.1, 2.0, size=[B, 4]), axis=1)
    rows[3, 2:] = rows[3, 1]
    t = tf.constant(np.concatenate([np.zeros([B, 1]), rows], axis=1), dtype)
    weights = tf.constant(rng.uniform(0.5, 2.0, size=[5, B, D]), dtype)
    return y0, t, weights


def _gradients(f, variables, y0, t, weights, config):
    with tf.GradientTape() as tape:
        tape.watch([y0, t])
        sol = tfode.solve(f, y0, t, config)
        loss = tf.reduce_sum(weights * sol.ys**2)
    return [g.numpy() for g in tape.gradient(loss, [y0, t, *variables])], sol


def _relative(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


def _merge_padding(grad_t):
    """Row 3's padded times (columns 2-4, one time repeated) as one column holding their sum.

    Only their sum is defined (moving one of them alone breaks the row's order): the adjoint
    credits each output ``g_i · f`` to its own time, backpropagation credits the last one.
    """
    merged = grad_t.copy()
    merged[3, 2] = grad_t[3, 2:].sum()
    merged[3, 3:] = 0.0
    return merged


def test_matches_direct_per_sample_gradients():
    """Adjoint and backpropagation through the per-sample loop agree to the tolerance (float64)."""
    f, variables = _field()
    y0, t, weights = _problem()
    config = tfode.SolverConfig(rtol=1e-10, atol=1e-10, batch_axis=0)
    direct, _ = _gradients(f, variables, y0, t, weights, config)
    adjoint, sol = _gradients(f, variables, y0, t, weights, config.replace(adjoint=True))
    adjoint[1], direct[1] = _merge_padding(adjoint[1]), _merge_padding(direct[1])
    for name, a, d in zip(["y0", "t", "w", "c"], adjoint, direct):
        assert _relative(a, d) < 1e-6, name
    assert sol.stats.num_steps.shape == [B]


def test_matches_finite_differences():
    f, (w, c) = _field()
    y0, t, weights = _problem()
    config = tfode.SolverConfig(rtol=1e-11, atol=1e-11, batch_axis=0, adjoint=True)
    grads, _ = _gradients(f, [w, c], y0, t, weights, config)

    def loss(y0_, t_):
        return float(tf.reduce_sum(weights * tfode.solve(f, y0_, t_, config).ys ** 2))

    eps = 1e-6
    rng = np.random.RandomState(2)
    for _ in range(3):
        dy = rng.normal(size=[B, D])
        fd = (loss(y0 + eps * dy, t) - loss(y0 - eps * dy, t)) / (2 * eps)
        np.testing.assert_allclose(np.sum(grads[0] * dy), fd, rtol=1e-5)
    merged = _merge_padding(grads[1])
    for b, i in [(0, 2), (3, 2), (4, 0)]:  # an inner time, the padded block (moved together), a start time
        dt = np.zeros([B, 5])
        dt[b, i:] = 1.0 if b == 3 else 0.0
        dt[b, i] = 1.0
        fd = (loss(y0, t + eps * dt) - loss(y0, t - eps * dt)) / (2 * eps)
        np.testing.assert_allclose(merged[b, i], fd, rtol=1e-5, atol=1e-8)
    dc = rng.normal(size=[D])
    c0 = c.numpy()
    values = []
    for sign in (1, -1):
        c.assign(c0 + sign * eps * dc)
        values.append(loss(y0, t))
    c.assign(c0)
    np.testing.assert_allclose(np.sum(grads[3] * dc), (values[0] - values[1]) / (2 * eps), rtol=1e-5)


def test_each_sample_gradient_equals_its_solve_alone():
    """A sample's y0 and t gradients equal its single-sample adjoint's (same backward steps, float64
    round-off), and the parameter gradient is the sum of the single-sample ones."""
    f, variables = _field()
    y0, t, weights = _problem()
    config = tfode.SolverConfig(rtol=1e-7, atol=1e-7, batch_axis=0, adjoint=True)
    batch, _ = _gradients(f, variables, y0, t, weights, config)
    param_sum = [np.zeros_like(g) for g in batch[2:]]
    for b in range(B):
        stats = tfode.SolveStats()
        with tf.GradientTape() as tape:
            y0_b, t_b = y0[b : b + 1], t[b : b + 1]
            tape.watch([y0_b, t_b])
            ys = tfode.odeint(f, y0_b, t_b, config, backward_stats=stats)
            loss = tf.reduce_sum(weights[:, b : b + 1] * ys**2)
        alone = [g.numpy() for g in tape.gradient(loss, [y0_b, t_b, *variables])]
        np.testing.assert_allclose(batch[0][b], alone[0][0], rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(batch[1][b], alone[1][0], rtol=1e-11, atol=1e-12)
        assert int(stats.status) == 0 and int(stats.num_steps) > 0
        param_sum = [s + g for s, g in zip(param_sum, alone[2:])]
    for total, g in zip(param_sum, batch[2:]):
        np.testing.assert_allclose(g, total, rtol=1e-10, atol=1e-12)


def test_shared_trajectory_matches_joint_adjoint():
    """On a batch of copies of one sample the per-sample and joint adjoints take the same steps."""
    f, variables = _field()
    y0 = tf.tile(tf.constant([[0.3, -0.5, 0.8]], F64), [4, 1])
    t = tf.constant([0.0, 0.5, 1.5, 2.0], F64)
    weights = tf.ones([4, 4, D], F64)
    config = tfode.SolverConfig(rtol=1e-6, atol=1e-6, adjoint=True)
    joint, _ = _gradients(f, variables, y0, t, weights, config)
    per_sample, _ = _gradients(f, variables, y0, t, weights, config.replace(batch_axis=0))
    for name, a, j in zip(["y0", "t", "w", "c"], per_sample, joint):
        np.testing.assert_allclose(a, j, rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_compiles_with_keras_weights_and_args(jit_compile):
    """A Keras layer's weights and an explicit ``args`` tensor get gradients, in graphs and under XLA."""
    dense = keras.layers.Dense(D, activation="tanh", dtype="float32")
    dense.build([None, D])
    scale = tf.constant(0.7)
    y0, t, weights = (tf.cast(x, tf.float32) for x in _problem())

    def f(t_, y, s):
        return s * dense(y) - 0.1 * y

    def gradients(config):
        with tf.GradientTape() as tape:
            tape.watch([y0, scale])
            ys = tfode.odeint(f, y0, t, config, args=(scale,))
            loss = tf.reduce_sum(weights * ys**2)
        return tape.gradient(loss, [y0, scale, *dense.trainable_variables])

    config = tfode.SolverConfig(rtol=1e-6, atol=1e-6, batch_axis=0)
    compiled = tf.function(gradients, jit_compile=jit_compile)(config.replace(adjoint=True))
    direct = gradients(config)
    for a, d in zip(compiled, direct):
        assert a is not None
        assert _relative(a.numpy(), d.numpy()) < 2e-3


def test_full_norm_is_rejected_per_sample():
    with pytest.raises(ValueError, match="adjoint_norm='full' cannot be per sample"):
        tfode.SolverConfig(batch_axis=0, adjoint=True, adjoint_norm="full")


def test_backward_stats_are_recorded():
    f, variables = _field()
    y0, t, weights = _problem()
    stats = tfode.SolveStats()
    with tf.GradientTape() as tape:
        ys = tfode.odeint(f, y0, t, tfode.SolverConfig(batch_axis=0, adjoint=True), backward_stats=stats)
        loss = tf.reduce_sum(ys)
    tape.gradient(loss, variables)
    assert int(stats.status) == 0 and int(stats.num_fn_evals) > 2 * B


def test_ode_layer_and_flow_train_per_sample():
    """``ODELayer`` and ``ContinuousFlowBijector`` take the per-sample adjoint through their ``solver``:
    their weight gradients agree with per-sample backpropagation (layer) and with the joint adjoint (flow)."""
    import tensorflow_probability as tfp

    x = tf.random.stateless_normal([16, 2], seed=[1, 2])
    config = tfode.SolverConfig(rtol=1e-6, atol=1e-6, batch_axis=0)

    def layer_grads(solver):
        keras.utils.set_random_seed(0)
        layer = tfode.ODELayer(tfode.layers.TimeMLP((16,)), solver=solver)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x) ** 2)
        return tape.gradient(loss, layer.trainable_variables), layer.last_solve_stats

    adjoint, stats = layer_grads(config.replace(adjoint=True))
    direct, _ = layer_grads(config)
    assert stats.num_steps.shape == [16]
    for a, d in zip(adjoint, direct):
        assert _relative(a.numpy(), d.numpy()) < 1e-3

    def flow_grads(solver):
        keras.utils.set_random_seed(0)
        flow = tfode.ContinuousFlowBijector(tfode.layers.TimeMLP((16,)), solver=solver)
        dist = tfp.distributions.TransformedDistribution(tfp.distributions.MultivariateNormalDiag(tf.zeros(2)), flow)
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(dist.log_prob(x))
        return tape.gradient(loss, dist.trainable_variables)

    per_sample = flow_grads(config.replace(adjoint=True))
    joint = flow_grads(config.replace(adjoint=True, batch_axis=None))
    assert len(per_sample) == len(joint) > 0
    for a, j in zip(per_sample, joint):
        assert _relative(a.numpy(), j.numpy()) < 1e-3


def test_flow_per_sample_takes_any_batch_shape():
    """Per sample, the flow treats every event of a ``[..., D]`` input as one sample: the same
    ``log_prob`` for ``[4, 8, 2]`` as for the ``[32, 2]`` rows, and for one event ``[2]`` alone."""
    keras.utils.set_random_seed(0)
    config = tfode.SolverConfig(rtol=1e-6, atol=1e-6, batch_axis=0)
    flow = tfode.ContinuousFlowBijector(tfode.layers.TimeMLP((16,)), solver=config)
    x = tf.random.stateless_normal([4, 8, 2], seed=[3, 4])
    nested = flow.inverse_log_det_jacobian(x, event_ndims=1)
    flat = flow.inverse_log_det_jacobian(tf.reshape(x, [32, 2]), event_ndims=1)
    assert nested.shape == [4, 8]
    np.testing.assert_allclose(nested.numpy().reshape(-1), flat.numpy(), rtol=1e-6, atol=1e-6)
    single = flow.inverse_log_det_jacobian(x[1, 2], event_ndims=1)
    assert single.shape == []
    np.testing.assert_allclose(single.numpy(), nested.numpy()[1, 2], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("in_function", [False, True])
def test_captured_tensor_gets_its_gradient(in_function):
    """A tensor the field closes over (neither an argument nor a variable) gets the same gradient from the
    per-sample adjoint as from backpropagation, eagerly and inside a ``tf.function``."""
    y0, t, weights = _problem()
    matrix = tf.constant(np.random.RandomState(5).normal(scale=0.5, size=[D, D]), F64)

    def gradient(config):
        def run(m):
            with tf.GradientTape() as tape:
                tape.watch(m)
                ys = tfode.odeint(lambda t_, y: tf.tanh(y @ m), y0, t, config)
                loss = tf.reduce_sum(weights * ys**2)
            return tape.gradient(loss, m)

        return (tf.function(run) if in_function else run)(matrix)

    config = tfode.SolverConfig(rtol=1e-9, atol=1e-9, batch_axis=0)
    adjoint, direct = gradient(config.replace(adjoint=True)), gradient(config)
    assert float(tf.reduce_max(tf.abs(adjoint))) > 0
    assert _relative(adjoint.numpy(), direct.numpy()) < 1e-6
