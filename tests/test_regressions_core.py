"""Regression tests for core solver bugs (issue 12), each written to fail before its fix."""

import numpy as np
import pytest
import tensorflow as tf

import tfode


def test_eager_adjoint_keeps_tapes_opened_by_the_vector_field():
    """A Hamiltonian field computes dH/dq with its own tape; eager adjoint must not stop it."""

    def hamiltonian_field(t, y):
        q, p = y
        with tf.GradientTape() as tape:
            tape.watch(q)
            potential = 0.5 * tf.reduce_sum(q**2)
        dv_dq = tape.gradient(potential, q)
        return (p, -dv_dq)

    q0 = tf.constant([1.0, 0.5])
    p0 = tf.constant([0.0, 0.2])
    t = tf.constant([0.0, 1.0])
    results = {}
    for adjoint in (False, True):
        with tf.GradientTape() as tape:
            tape.watch(q0)
            q1, _ = tfode.odeint(hamiltonian_field, (q0, p0), t, rtol=1e-8, atol=1e-8, adjoint=adjoint)
            loss = tf.reduce_sum(q1[-1])
        results[adjoint] = (q1[-1].numpy(), tape.gradient(loss, q0).numpy())
    # Harmonic oscillator: q(1) = q0 cos 1 + p0 sin 1, dq(1)/dq0 = cos 1.
    expected = q0.numpy() * np.cos(1.0) + p0.numpy() * np.sin(1.0)
    for adjoint, (q_end, grad) in results.items():
        np.testing.assert_allclose(q_end, expected, atol=1e-6, err_msg=f"adjoint={adjoint}")
        np.testing.assert_allclose(grad, np.cos(1.0), atol=1e-5, err_msg=f"adjoint={adjoint}")


@pytest.mark.parametrize("adjoint", [False, True])
def test_rejected_nan_trial_step_does_not_poison_direct_gradient(adjoint):
    """f = -w sqrt(y): a too-long first step makes y negative (NaN stages) and is rejected."""
    w = tf.Variable(1.0, dtype=tf.float64)
    y0 = tf.constant(1.0, tf.float64)
    t = tf.constant([0.0, 1.5], tf.float64)
    with tf.GradientTape() as tape:
        sol = tfode.solve(
            lambda t, y: -w * tf.sqrt(y), y0, t, rtol=1e-10, atol=1e-12, options={"first_step": 1.4}, adjoint=adjoint
        )
        y1 = sol.ys[-1]
    assert int(sol.stats.num_rejected) >= 1
    # Exact: y(t) = (1 - w t / 2)^2 -> y(1.5) = 0.0625, dy/dw = -t (1 - w t / 2) = -0.375.
    np.testing.assert_allclose(float(y1), 0.0625, rtol=1e-6)
    np.testing.assert_allclose(float(tape.gradient(y1, w)), -0.375, rtol=1e-5)


def test_adjoint_gradient_to_captured_tensor_is_not_silently_dropped():
    W = tf.constant([[-0.5, 0.2], [0.1, -0.3]])
    y0 = tf.constant([[1.0, 2.0]])
    t = tf.constant([0.0, 1.0])
    grads = {}
    for adjoint in (False, True):
        with tf.GradientTape() as tape:
            tape.watch(W)
            ys = tfode.odeint(lambda t, y: tf.matmul(y, W), y0, t, rtol=1e-7, atol=1e-7, adjoint=adjoint)
            loss = tf.reduce_sum(ys[-1] ** 2)
        grads[adjoint] = tape.gradient(loss, W)
    assert grads[False] is not None
    assert grads[True] is not None, "adjoint=True dropped the gradient to a captured tensor"
    np.testing.assert_allclose(grads[True].numpy(), grads[False].numpy(), rtol=1e-4, atol=1e-5)


def test_adjoint_gradient_to_captured_tensor_in_tf_function():
    W = tf.Variable([[-0.5, 0.2], [0.1, -0.3]])  # a variable: always fine
    C = tf.constant([0.3, -0.1])
    y0 = tf.constant([[1.0, 2.0]])
    t = tf.constant([0.0, 1.0])

    @tf.function
    def grad_c(c):
        with tf.GradientTape() as tape:
            tape.watch(c)
            ys = tfode.odeint(lambda t, y: tf.matmul(y, W) + c, y0, t, rtol=1e-7, atol=1e-7, adjoint=True)
            loss = tf.reduce_sum(ys[-1] ** 2)
        return tape.gradient(loss, c)

    with tf.GradientTape() as tape:
        tape.watch(C)
        ys = tfode.odeint(lambda t, y: tf.matmul(y, W) + C, y0, t, rtol=1e-7, atol=1e-7)
        loss = tf.reduce_sum(ys[-1] ** 2)
    expected = tape.gradient(loss, C)
    got = grad_c(C)
    assert got is not None
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_float32_solve_under_numpy_behavior():
    tf.experimental.numpy.experimental_enable_numpy_behavior(prefer_float32=False)
    try:
        sol = tfode.solve(lambda t, y: -y, tf.ones([3], tf.float32), tf.linspace(0.0, 1.0, 5), rtol=1e-6, atol=1e-8)
        assert sol.ys.dtype == tf.float32
        np.testing.assert_allclose(sol.ys.numpy()[:, 0], np.exp(-np.linspace(0, 1, 5)), rtol=1e-5)
        fn = tf.function(lambda y0: tfode.odeint(lambda t, y: -y, y0, tf.linspace(0.0, 1.0, 4), adjoint=True))
        with tf.GradientTape() as tape:
            y0 = tf.ones([2])
            tape.watch(y0)
            loss = tf.reduce_sum(fn(y0)[-1])
        np.testing.assert_allclose(tape.gradient(loss, y0).numpy(), np.exp(-1.0), rtol=1e-4)
    finally:
        tf.experimental.numpy.experimental_enable_numpy_behavior(False)
