"""Direct-mode gradients under XLA: backpropagation by checkpoints and recomputation (``tfode/checkpoint.py``).

Under ``jit_compile=True`` with ``adjoint=False`` the loop is re-run from
checkpoints in the backward pass. The gradient must equal backpropagation through
the plain loop (graph mode) up to round-off, and central finite differences of
the same discretisation, for ``y0``, every time in ``t``, ``args``, a tensor the
field captures, a ``tf.Variable`` and a Keras layer's weights; with rejected
steps, NaN trial stages, output times inside steps and solves over several
checkpoints. ``BASE_STEPS`` is lowered where a test needs many groups and spans
from few steps (each XLA compile costs seconds, so the problems are small).
"""

from __future__ import annotations

import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfode  # noqa: E402
from tfode import checkpoint  # noqa: E402

F64 = tf.float64


def test_spans_grow_with_the_square_root_of_the_budget():
    assert checkpoint.spans(10_000) == (16, 400, 25)  # 25 span checkpoints + 25 group checkpoints, 16 taped steps
    assert checkpoint.spans(5) == (5, 5, 1)
    assert checkpoint.spans(1_000_000) == (16, 16 * 250, 250)
    for budget in (1, 7, 16, 17, 100, 4096, 12345):
        base, span, slots = checkpoint.spans(budget)
        assert span % base == 0 and slots * span >= budget and span // base <= np.sqrt(budget) + 1


class Field:
    """``f(t, y; a) = a * W2 tanh(dense(y) + c t) - 0.1 y``: an arg, a captured tensor, a variable, a Keras layer."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.c = tf.constant(rng.normal(size=4), F64)
        self.w2 = tf.Variable(rng.normal(size=(2, 4)) * 0.8, dtype=F64)
        self.dense = keras.layers.Dense(4, dtype="float64")
        self.dense.build((1, 2))
        self.dense.set_weights([rng.normal(size=(2, 4)), rng.normal(size=4) * 0.3])

    @property
    def variables(self):
        return [self.w2, *self.dense.trainable_variables]

    def __call__(self, t, y, a, c=None):
        hidden = tf.tanh(self.dense(y[None])[0] + (self.c if c is None else c) * t)
        return a * tf.linalg.matvec(self.w2, hidden) - 0.1 * y


FIELD = Field()
Y0 = np.array([0.7, -0.4])
A = np.array(1.3)
LOSS_WEIGHTS = np.random.default_rng(1).normal(size=(6, 2))


def _loss(ys):
    return tf.reduce_sum(tf.constant(LOSS_WEIGHTS[: ys.shape[0]], F64) * ys)


def _gradients(y0, t, a, options, rtol):
    """Loss and gradients w.r.t. ``(y0, t, a, c, *variables)`` of a direct-mode solve; stats too."""
    with tf.GradientTape() as tape:
        tape.watch([y0, t, a, FIELD.c])
        sol = tfode.solve(FIELD, y0, t, rtol=rtol, atol=rtol, args=(a,), options=options)
        loss = _loss(sol.ys)
    grads = tape.gradient(loss, [y0, t, a, FIELD.c, *FIELD.variables])
    return loss, grads, sol.stats


def _compiled(jit_compile, options, rtol):
    return tf.function(lambda y0, t, a: _gradients(y0, t, a, options, rtol), jit_compile=jit_compile)


def _assert_close(actual, expected, bound, what):
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(actual, expected, rtol=bound, atol=bound * scale, err_msg=what)


NAMES = ["y0", "t", "arg", "captured", "variable", "keras kernel", "keras bias"]

# (times, options, rtol, base steps): rejected first steps (first_step far too long) everywhere.
CASES = {
    # Dense output at 5 times, ~40 steps in groups of 2 and spans of 20: many checkpoints at both levels.
    "dense_several_spans": (np.linspace(0.0, 2.0, 5), {"first_step": 1.5, "max_num_steps": 200}, 1e-10, 2),
    # Two times (no output buffers), the default budget and groups of 16: one span, several groups.
    "two_times_default_budget": (np.array([0.0, 2.0]), {"first_step": 1.5}, 1e-10, None),
    # Decreasing time, one group only.
    "decreasing_one_group": (np.array([1.0, 0.3, -0.5]), {"first_step": 1.0}, 1e-6, None),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_xla_direct_gradient_equals_graph_mode(case, monkeypatch):
    ts, options, rtol, base = case
    if base is not None:
        monkeypatch.setattr(checkpoint, "BASE_STEPS", base)
    inputs = (tf.constant(Y0), tf.constant(ts), tf.constant(A, F64))
    loss_g, graph, stats_g = _compiled(False, options, rtol)(*inputs)
    loss_x, xla, stats_x = _compiled(True, options, rtol)(*inputs)
    assert int(stats_x.status) == 0 and int(stats_x.num_rejected) >= 1
    assert int(stats_x.num_steps) == int(stats_g.num_steps)
    base_steps, span, _ = checkpoint.spans(options.get("max_num_steps", 10_000), base or checkpoint.BASE_STEPS)
    if base is not None:
        assert int(stats_x.num_steps) > 2 * span  # several spans
    elif len(ts) == 2:
        assert int(stats_x.num_steps) > 2 * base_steps  # several groups
    np.testing.assert_allclose(float(loss_x), float(loss_g), rtol=1e-12)
    for name, g, x in zip(NAMES, graph, xla, strict=True):
        assert x is not None, name
        # XLA may fuse and reorder float64 arithmetic (~1e-16 per op); the step sequence is the same.
        _assert_close(tf.convert_to_tensor(x), tf.convert_to_tensor(g), 1e-9, name)


def test_xla_direct_gradient_matches_finite_differences(monkeypatch):
    """Central differences of the graph-mode forward (the same discretisation) in every input direction."""
    monkeypatch.setattr(checkpoint, "BASE_STEPS", 3)
    ts, options, rtol = np.linspace(0.0, 2.0, 4), {"first_step": 1.5, "max_num_steps": 100}, 1e-10
    inputs = (tf.constant(Y0), tf.constant(ts), tf.constant(A, F64))
    _, xla, stats = _compiled(True, options, rtol)(*inputs)
    assert int(stats.num_rejected) >= 1 and int(stats.num_steps) > checkpoint.spans(100, 3)[1]

    @tf.function
    def forward(y0, t, a, c):
        return _loss(tfode.odeint(lambda tt, y, a_: FIELD(tt, y, a_, c), y0, t, rtol=rtol, atol=rtol,
                                  args=(a,), options=options))  # fmt: skip

    def loss_at(y0, t, a, c, variables):
        for var, value in zip(FIELD.variables, variables, strict=True):
            var.assign(value)
        return float(forward(tf.constant(y0), tf.constant(t), tf.constant(a, F64), tf.constant(c)))

    values = [Y0, ts, A, FIELD.c.numpy(), *[v.numpy() for v in FIELD.variables]]
    # h = 1e-6: the discrete solution is smooth in every input (no accept/reject decision flips), so
    # truncation ~h^2 and round-off ~1e-16 / h leave ~1e-9 relative; 1e-6 catches any missing term.
    h = 1e-6
    try:
        for index, (name, value, grad) in enumerate(zip(NAMES, values, xla, strict=True)):
            fd = np.zeros(np.shape(value))
            for k in np.ndindex(np.shape(value)):
                shifted = []
                for sign in (1.0, -1.0):
                    moved = [np.array(v, dtype=np.float64, copy=True) for v in values]
                    moved[index][k] += sign * h
                    shifted.append(loss_at(moved[0], moved[1], moved[2], moved[3], moved[4:]))
                fd[k] = (shifted[0] - shifted[1]) / (2 * h)
            _assert_close(tf.convert_to_tensor(grad), fd, 1e-6, name)
    finally:
        for var, value in zip(FIELD.variables, values[4:], strict=True):
            var.assign(value)


def test_rejected_nan_trial_step_does_not_poison_the_xla_direct_gradient(monkeypatch):
    """f = -w sqrt(y): a too-long first step makes y negative (NaN stages); it is rejected and guarded."""
    monkeypatch.setattr(checkpoint, "BASE_STEPS", 2)
    w = tf.Variable(1.0, dtype=F64)

    @tf.function(jit_compile=True)
    def run(y0, t):
        with tf.GradientTape() as tape:
            tape.watch(y0)
            sol = tfode.solve(lambda t, y: -w * tf.sqrt(y), y0, t, rtol=1e-10, atol=1e-12,
                              options={"first_step": 1.4, "max_num_steps": 100})  # fmt: skip
            y1 = sol.ys[-1]
        return y1, tape.gradient(y1, [w, y0]), sol.stats

    y1, (dw, dy0), stats = run(tf.constant(1.0, F64), tf.constant([0.0, 1.5], F64))
    assert int(stats.num_rejected) >= 1 and int(stats.num_steps) > 2 * checkpoint.spans(100, 2)[1]
    # Exact: y(t) = (sqrt(y0) - w t / 2)^2 -> y(1.5) = 0.0625, dy/dw = -t (1 - w t / 2) = -0.375,
    # dy/dy0 = (1 - w t / 2) / sqrt(y0) = 0.25.
    np.testing.assert_allclose(float(y1), 0.0625, rtol=1e-6)
    np.testing.assert_allclose(float(dw), -0.375, rtol=1e-5)
    np.testing.assert_allclose(float(dy0), 0.25, rtol=1e-5)


@pytest.mark.parametrize("batch_axis", [None, 0], ids=["joint", "per_sample"])
def test_xla_gradient_buffers_do_not_scale_with_the_budget(batch_axis):
    """The lowered HLO of a direct gradient at a budget of 10^6 steps holds no array with >= 10^4 entries
    along any axis (the plain loop's gradient stacks had 10^6, per sample 2 * 10^6 + 1); checkpoints are
    O(sqrt(budget))."""
    budget = 1_000_000
    config = tfode.SolverConfig(max_num_steps=budget, batch_axis=batch_axis)

    @tf.function(jit_compile=True)
    def run(y0, t):
        with tf.GradientTape() as tape:
            tape.watch(y0)
            y1 = tfode.odeint(lambda t, y: -y, y0, t, config)[-1]
        return tape.gradient(y1, y0)

    args = (tf.constant([1.0, 2.0], F64), tf.constant([0.0, 1.0], F64))
    np.testing.assert_allclose(run(*args), np.exp(-1.0), rtol=1e-5)
    hlo = run.experimental_get_compiler_ir(*args)(stage="hlo")
    dims = [int(d) for shape in re.findall(r"\[([0-9,]+)\]", hlo) for d in shape.split(",") if d]
    assert max(dims) < 10_000, max(dims)


def test_per_sample_xla_direct_gradient_equals_graph_mode(monkeypatch):
    """Per sample (``batch_axis=0``), with per-sample times (one row padded by repeating its last time),
    a sample with NaN dynamics beside the others, rejected steps and several spans: the checkpointed XLA
    gradient equals graph mode's for every input."""
    monkeypatch.setattr(checkpoint, "BASE_STEPS", 2)
    # Row 2 takes the square root of a negative number at its start and fails alone (it stays finite
    # at the zero state it is frozen at).
    mu = tf.constant([0.5, 3.0, -1.0, 2.0], F64)
    w = tf.Variable([[0.3, -0.2], [0.1, 0.4]], dtype=F64)

    def field(t, y, scale):
        x, v = y[:, 0], y[:, 1]
        damping = tf.sqrt(1 + mu * x**2) * (1 - x**2) * v
        return scale * tf.stack([v, damping - x], axis=1) + tf.matmul(y, w) * t[:, None]

    y0 = tf.constant([[2.0, 0.0], [1.0, 0.5], [2.0, 0.0], [2.0, -0.5]], F64)
    t = tf.constant([[0.0, 0.5, 1.0, 2.0], [0.0, 0.7, 0.7, 0.7], [0.0, 0.2, 0.4, 0.6], [0.0, 1.0, 1.5, 2.0]], F64)
    scale = tf.constant(1.1, F64)
    config = tfode.SolverConfig(rtol=1e-8, atol=1e-8, batch_axis=0, max_num_steps=100,
                                controller=tfode.PIController(first_step=1.0))  # fmt: skip

    def gradients(y0, t, scale):
        with tf.GradientTape() as tape:
            tape.watch([y0, t, scale])
            sol = tfode.solve(field, y0, t, config, args=(scale,), raise_on_failure=False)
            ok = tf.gather(sol.ys, [0, 1, 3], axis=1)  # the samples that succeed
            loss = tf.reduce_sum(ok * tf.range(1.0, 5.0, dtype=F64)[:, None, None] ** 2)
        return tape.gradient(loss, [y0, t, scale, w]), sol.stats

    graph, stats_g = tf.function(gradients)(y0, t, scale)
    xla, stats_x = tf.function(gradients, jit_compile=True)(y0, t, scale)
    np.testing.assert_array_equal(stats_x.status.numpy(), stats_g.status.numpy())
    assert list(stats_x.status.numpy() != 0) == [False, False, True, False]
    np.testing.assert_array_equal(stats_x.num_steps.numpy(), stats_g.num_steps.numpy())
    assert int(tf.reduce_sum(stats_x.num_rejected)) >= 1
    assert int(tf.reduce_max(stats_x.num_steps)) > 2 * checkpoint.spans(2 * 100 + 1, 2)[1]  # several spans
    for name, g, x in zip(["y0", "t", "arg", "variable"], graph, xla, strict=True):
        assert np.all(np.isfinite(x.numpy())), name
        _assert_close(x, g, 1e-9, name)
