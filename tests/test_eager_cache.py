"""Eager ``solve`` calls run as cached traced functions (``tfode/_eager_cache.py``)."""

import gc
import weakref

import numpy as np
import pytest
import tensorflow as tf

import tfode
from tfode import _eager_cache

F64 = tf.float64
T = tf.constant([0.0, 0.5, 1.0], F64)
Y0 = tf.constant([[1.0, -0.5], [0.3, 0.8]], F64)
W = tf.constant([[-0.5, 0.3], [-0.2, -0.4]], F64)


@pytest.fixture(autouse=True)
def fresh_cache():
    _eager_cache.clear_cache()
    yield
    _eager_cache.clear_cache()


def counting_field(counter):
    def field(t, y):
        counter.append(1)  # runs only while tracing (or on every call, plain eagerly)
        return tf.tanh(y @ tf.cast(W, y.dtype)) * (1.0 + 0.1 * t)

    return field


def test_repeated_calls_trace_once_and_new_values_need_no_retrace():
    traces = []
    field = counting_field(traces)
    first = tfode.solve(field, Y0, T, rtol=1e-7, atol=1e-7)
    n = len(traces)
    assert n > 0
    for scale in (1.0, 2.0, 3.0):  # new y0, t and tensor-tolerance values: same trace
        tfode.solve(field, Y0 * scale, T * scale, rtol=tf.constant(1e-6, F64), atol=1e-7)
        tfode.solve(field, Y0 * scale, T * scale, rtol=tf.constant(1e-7, F64), atol=1e-7)
    assert len(traces) == 2 * n  # one more trace for the tensor rtol (an input instead of a constant)
    again = tfode.solve(field, Y0, T, rtol=1e-7, atol=1e-7)
    assert len(traces) == 2 * n
    np.testing.assert_array_equal(first.ys.numpy(), again.ys.numpy())
    info = _eager_cache.cache_info()
    assert info["entries"] == 2 and info["misses"] == 2


@pytest.mark.parametrize(
    "change",
    [
        dict(y0=tf.constant([[1.0, -0.5]], F64)),  # shape
        dict(y0=tf.cast(Y0, tf.float32), t=tf.cast(T, tf.float32)),  # dtype
        dict(t=tf.constant([0.0, 1.0], F64)),  # number of times
        dict(method="tsit5"),  # static config
        dict(rtol=1e-5),  # a Python-float tolerance is static
        dict(adjoint=True),
        dict(y0=(Y0, Y0), structure=True),  # structure
    ],
    ids=["shape", "dtype", "t-length", "method", "float-rtol", "adjoint", "structure"],
)
def test_what_changes_the_graph_retraces(change):
    traces = []
    field = counting_field(traces)

    def call(y0=Y0, t=T, structure=False, **kwargs):
        f = (lambda t, y: (field(t, y[0]), field(t, y[1]))) if structure else field
        return tfode.solve(f, y0, t, **{"rtol": 1e-7, "atol": 1e-7, **kwargs})

    call()
    n = len(traces)
    call(**change)
    assert len(traces) > n
    m = len(traces)
    call(**change)
    assert len(traces) == m


def test_new_closure_per_call_hits_the_cache_and_closure_tensors_are_inputs():
    """A layer builds ``lambda t, y: self.field(t, y)`` per call; noise drawn per call sits in a cell."""
    traces = []
    field = counting_field(traces)

    def shifted(noise):  # a new closure per call, with a new tensor in its cell
        return lambda t, y: field(t, y) + noise

    results = []
    for seed in range(3):
        noise = tf.random.stateless_normal([2], seed=[seed, 0], dtype=F64)
        results.append(tfode.solve(shifted(noise), Y0, T, rtol=1e-7, atol=1e-7).ys.numpy())
    assert _eager_cache.cache_info()["entries"] == 1
    for seed, got in enumerate(results):
        noise = tf.random.stateless_normal([2], seed=[seed, 0], dtype=F64)
        want = tfode.solve(shifted(noise), Y0, T, rtol=1e-7, atol=1e-7, eager_cache=False)
        np.testing.assert_allclose(got, want.ys.numpy(), rtol=1e-12, atol=1e-12)
    assert not np.allclose(results[0], results[1])


def test_closure_scalar_and_rebound_global_change_the_key():
    outs = [tfode.solve(lambda t, y, k=k: -k * y, Y0, T).ys.numpy() for k in (1.0, 2.0)]
    np.testing.assert_allclose(outs[1][-1], np.exp(-2.0) * Y0.numpy(), rtol=1e-4)
    global RATE
    RATE = tf.constant(1.0, F64)

    def decay(t, y):
        return -RATE * y

    first = tfode.solve(decay, Y0, T).ys.numpy()
    RATE = tf.constant(3.0, F64)  # a rebound global tensor: another key, not the stale capture
    second = tfode.solve(decay, Y0, T).ys.numpy()
    np.testing.assert_allclose(first[-1], np.exp(-1.0) * Y0.numpy(), rtol=1e-4)  # default tolerances
    np.testing.assert_allclose(second[-1], np.exp(-3.0) * Y0.numpy(), rtol=1e-4)


V = tf.Variable([[0.2, -0.1], [0.05, 0.3]], dtype=F64)
B = tf.constant([0.1, -0.2], F64)


def _values_and_gradients(adjoint, eager_cache=True):
    """Values and gradients (y0, t, args, a captured tensor, a variable) of one solve."""

    def field(t, y, bias):
        return tf.tanh(y @ W + bias) @ V - 0.1 * t * y

    with tf.GradientTape() as tape:
        tape.watch([Y0, T, B, W])
        sol = tfode.solve(field, Y0, T, rtol=1e-9, atol=1e-9, args=(B,), adjoint=adjoint, eager_cache=eager_cache)
        loss = tf.reduce_sum(sol.ys**2)
    return [sol.ys] + tape.gradient(loss, [Y0, T, B, W, V])


@pytest.mark.parametrize("adjoint", [False, True], ids=["direct", "adjoint"])
def test_values_and_gradients_match_plain_eager_and_graph(adjoint):
    cached = [x.numpy() for x in _values_and_gradients(adjoint)]
    plain = [x.numpy() for x in _values_and_gradients(adjoint, eager_cache=False)]
    graph = [x.numpy() for x in tf.function(lambda: _values_and_gradients(adjoint))()]
    names = ["ys", "y0", "t", "args", "captured", "variable"]
    for name, c, p, g in zip(names, cached, plain, graph, strict=True):
        assert np.all(np.isfinite(c)) and np.any(c != 0), name
        # The graph ops of tf.function: equal to rounding. Plain eager runs other kernels
        # (and the adjoint's eager backward pass); both at 1e-9 tolerances.
        np.testing.assert_allclose(c, g, rtol=1e-10, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(c, p, rtol=1e-7, atol=1e-9, err_msg=name)


def test_backward_stats_are_filled_and_stats_come_back():
    stats = tfode.SolveStats()
    with tf.GradientTape() as tape:
        tape.watch(Y0)
        sol = tfode.solve(counting_field([]), Y0, T, rtol=1e-7, atol=1e-7, adjoint=True, backward_stats=stats)
        loss = tf.reduce_sum(sol.ys)
    plain = tfode.solve(counting_field([]), Y0, T, rtol=1e-7, atol=1e-7, adjoint=True, eager_cache=False)
    for name in ("num_fn_evals", "num_steps", "num_accepted", "num_rejected", "status"):
        assert int(getattr(sol.stats, name)) == int(getattr(plain.stats, name)), name
    assert int(sol.stats.num_fn_evals) > 0
    assert int(stats.num_fn_evals) == 0
    tape.gradient(loss, Y0)
    assert int(stats.num_fn_evals) > 0 and int(stats.status) == 0


def test_forward_failure_still_raises_integration_error():
    with pytest.raises(tfode.IntegrationError, match="MAX_STEPS_REACHED"):
        tfode.solve(counting_field([]), Y0, T, rtol=1e-12, atol=1e-12, options={"max_num_steps": 3})
    sol = tfode.solve(counting_field([]), Y0, T, rtol=1e-12, atol=1e-12, options={"max_num_steps": 3},
                      raise_on_failure=False)  # fmt: skip
    assert int(sol.stats.status) == int(tfode.Status.MAX_STEPS_REACHED)


def test_eager_argument_checks_keep_their_errors():
    with pytest.raises(ValueError, match="strictly increasing"):
        tfode.solve(counting_field([]), Y0, tf.constant([0.0, 1.0, 0.5], F64))
    with pytest.raises(ValueError, match="rtol must be positive"):
        tfode.solve(counting_field([]), Y0, T, rtol=tf.constant(-1.0, F64))


@pytest.mark.parametrize(
    "numpy_field",
    [
        lambda t, y: tf.constant(-np.asarray(y)),  # NotImplementedError when traced
        lambda t, y: -y * float(np.cos(t.numpy())),  # AttributeError (.numpy() of a symbolic tensor)
        lambda t, y: -y if float(t) >= 0 else y,  # TypeError
    ],
    ids=["asarray", "numpy()", "float()"],
)
def test_untraceable_field_falls_back_to_eager_and_remembers(numpy_field):
    for _ in range(2):
        sol = tfode.solve(numpy_field, Y0, T, rtol=1e-7, atol=1e-7)
        assert np.all(np.isfinite(sol.ys.numpy()))
    info = _eager_cache.cache_info()
    assert info["eager_fallbacks"] == 1 and info["hits"] == 1


@pytest.mark.parametrize("how", ["keyword", "run_functions_eagerly"])
def test_plain_eager_can_be_forced(how):
    calls = []
    field = counting_field(calls)
    if how == "keyword":
        sol = tfode.solve(field, Y0, T, eager_cache=False)
    else:
        tf.config.run_functions_eagerly(True)
        try:
            sol = tfode.solve(field, Y0, T)
        finally:
            tf.config.run_functions_eagerly(False)
    assert len(calls) == int(sol.stats.num_fn_evals)  # every evaluation ran in Python
    assert _eager_cache.cache_info()["entries"] == 0


def test_lambdas_and_their_closures_are_not_kept_alive():
    class Scale:
        def __call__(self, y):
            return -y

    def make_field(scale):
        return lambda t, y: scale(y)

    scale = Scale()
    tfode.solve(make_field(scale), Y0, T)
    ref = weakref.ref(scale)
    assert _eager_cache.cache_info()["entries"] == 1
    del scale
    gc.collect()
    assert ref() is None
    assert _eager_cache.cache_info()["entries"] == 0  # its entry went with it


def test_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(_eager_cache, "MAX_ENTRIES", 3)
    for n in range(1, 6):
        tfode.solve(lambda t, y: -y, tf.ones([n], F64), T)
    assert _eager_cache.cache_info()["entries"] == 3


def test_odelayer_called_eagerly_uses_the_cache():
    layer = tfode.ODELayer(tfode.layers.TimeMLP(hidden=(8,)), t1=1.0)
    x = tf.random.stateless_normal([4, 3], seed=[1, 2])
    first = layer(x)
    info = _eager_cache.cache_info()
    second = layer(x * 2.0)
    after = _eager_cache.cache_info()
    assert after["entries"] == info["entries"] and after["hits"] == info["hits"] + 1
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x, training=True) ** 2)
    grads = tape.gradient(loss, layer.trainable_variables)
    assert grads and all(g is not None for g in grads)
    assert int(layer.num_fn_evals_backward.numpy()) > 0  # the adjoint's backward_stats
    np.testing.assert_array_equal(first.shape, second.shape)
