"""Keras-level tests of ``tfode.layers``: ``ODELayer``, ``TimeMLP``, ``TimeConv2D``, ``configure_solver``.

Modelled on keras' layer tests (``masking_test.py``): output shapes against
``compute_output_shape``, config round trips, ``.keras`` save -> load -> same
outputs, SavedModel export served without ``tfode``, then training in every
Keras API, the test-time tolerance knob and argument validation.

Cost on a 2-core CPU: tracing a training step with an ``ODELayer`` takes
~10-20 s and an XLA compile ~20-50 s, so shapes, configs and gradients run
eagerly on tiny layers, every ``compile`` passes ``jit_compile=False`` except
``test_fit_with_jit_compile``, and the graph-mode tests share one trained
model (``trained``, module scope).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfode.layers import ODELayer, TimeConv2D, TimeMLP, configure_solver  # noqa: E402

# Vector fields by name: (factory, input shape [batch, ...]). TimeMLP acts on the
# last axis of any rank; TimeConv2D needs [batch, height, width, channels].
FIELDS = {
    "mlp_concat": (lambda: TimeMLP(hidden=(8,)), (3, 5)),
    "mlp_concatsquash": (lambda: TimeMLP(hidden=(8, 6), time_embedding="concatsquash"), (3, 5)),
    "mlp_rank3": (lambda: TimeMLP(hidden=(8,)), (2, 4, 5)),
    "conv": (lambda: TimeConv2D(filters=(4,)), (2, 5, 5, 3)),
    "conv_groups": (lambda: TimeConv2D(filters=(4,), groups=2), (2, 5, 5, 4)),
}
TIMES = (0.0, 0.25, 1.0)


def _metric(logs, suffix):
    """The one ODELayer metric ending in ``suffix`` (metric names carry the layer's name)."""
    (key,) = [k for k in logs if k.endswith("_" + suffix)]
    return logs[key]


def _inputs(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _field(name, seed=0):
    keras.utils.set_random_seed(seed)
    factory, shape = FIELDS[name]
    return factory(), _inputs(shape, seed)


def _make_model(api, field_name="mlp_concatsquash", out_dim=2, **ode_kwargs):
    """A model ``[batch, 5] -> ODELayer -> Dense(out_dim)`` built with the given Keras API."""
    field, _ = _field(field_name)
    ode = ODELayer(field, **ode_kwargs)
    head = keras.layers.Dense(out_dim)
    if api == "sequential":
        return keras.Sequential([keras.Input((5,)), ode, head])
    if api == "functional":
        inputs = keras.Input((5,))
        return keras.Model(inputs, head(ode(inputs)))
    model = _Subclassed(ode, head)
    model(np.zeros((1, 5), "float32"))  # build
    return model


class _Subclassed(keras.Model):
    def __init__(self, ode, head, **kwargs):
        super().__init__(**kwargs)
        self.ode = ode
        self.head = head

    def call(self, inputs, training=None):
        return self.head(self.ode(inputs, training=training))


def _ode_layer(model):
    return next(layer for layer in model._flatten_layers() if isinstance(layer, ODELayer))


# ---------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIELDS)
@pytest.mark.parametrize(
    "kwargs, seq_len",
    [({}, None), ({"times": TIMES}, None), ({"times": TIMES, "return_sequences": True}, len(TIMES))],
    ids=["t1", "times", "sequences"],
)
def test_output_shape(name, kwargs, seq_len):
    field, x = _field(name)
    layer = ODELayer(field, **kwargs)
    out = layer(x)
    expected = x.shape if seq_len is None else (x.shape[0], seq_len, *x.shape[1:])
    assert tuple(out.shape) == expected
    assert tuple(layer.compute_output_shape(x.shape)) == expected
    # Symbolic (functional) call with an unknown batch size.
    symbolic = layer(keras.Input(x.shape[1:]))
    assert tuple(symbolic.shape) == (None, *expected[1:])
    assert float(layer.num_fn_evals_forward) > 0


@pytest.mark.parametrize("name", ["mlp_concat", "conv_groups"])
def test_sequences_start_at_input_and_end_at_final_state(name):
    field, x = _field(name)
    final = ODELayer(field, times=TIMES)(x)
    seq = ODELayer(field, times=TIMES, return_sequences=True)(x)  # same field, same weights
    np.testing.assert_allclose(seq[:, 0], x, rtol=0, atol=0)
    np.testing.assert_allclose(seq[:, -1], final, rtol=1e-6, atol=1e-6)


def test_time_mlp_acts_on_last_axis():
    # [B, T, D] must equal the same solve on [B*T, D]: the MLP mixes only the
    # last axis and the RMS error norm (hence every step) is unchanged by a reshape.
    field, x = _field("mlp_rank3")
    layer = ODELayer(field)
    out3 = layer(x).numpy()
    out2 = layer(x.reshape(-1, x.shape[-1])).numpy()
    np.testing.assert_allclose(out3.reshape(out2.shape), out2, rtol=1e-5, atol=1e-6)


def test_reverse_time_interval():
    field, x = _field("mlp_concat")
    forward = ODELayer(field, t0=0.0, t1=1.0)(x)
    # Integrating back from t=1 to t=0 recovers the input (up to the tolerances).
    back = ODELayer(field, t0=1.0, t1=0.0, rtol=1e-6, atol=1e-6)(forward)
    np.testing.assert_allclose(back, x, atol=1e-2)


# ---------------------------------------------------------------------------
# Config round trips and saving
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp_concat", "mlp_concatsquash", "conv", "conv_groups"])
def test_vector_field_config_round_trip(name):
    field, x = _field(name)
    t = tf.constant(0.3)
    expected = field(t, x)
    clone = type(field).from_config(field.get_config())
    clone(t, x)  # build
    clone.set_weights(field.get_weights())
    assert clone.get_config() == field.get_config()
    np.testing.assert_allclose(clone(t, x), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["mlp_concat", "mlp_concatsquash", "conv", "conv_groups"])
def test_ode_layer_config_round_trip(name):
    field, x = _field(name)
    layer = ODELayer(
        field, method="tsit5", rtol=1e-2, atol=1e-3, adjoint=False, times=TIMES, return_sequences=True,
        options={"max_num_steps": 500}, adjoint_norm="full", name="ode",
    )  # fmt: skip
    expected = layer(x)
    config = layer.get_config()
    clone = ODELayer.from_config(config)
    assert type(clone.vector_field) is type(field)
    assert clone.vector_field is not field
    clone(x)
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == config
    assert (clone.method, clone.times, clone.return_sequences, clone.adjoint) == ("tsit5", TIMES, True, False)
    np.testing.assert_allclose(clone(x), expected, rtol=1e-6, atol=1e-6)


def test_config_keeps_tolerances_changed_after_build():
    field, x = _field("mlp_concat")
    layer = ODELayer(field)
    layer(x)
    layer.rtol = 1e-2
    layer.atol = 1e-4
    config = layer.get_config()
    assert (config["solver"]["rtol"], config["solver"]["atol"]) == (1e-2, 1e-4)


@pytest.mark.parametrize("name", ["mlp_concatsquash", "conv_groups"])
def test_keras_save_and_load(tmp_path, name):
    field, x = _field(name)
    model = keras.Sequential([keras.Input(x.shape[1:]), ODELayer(field, rtol=1e-2, atol=1e-4), keras.layers.Dense(3)])
    expected = model(x)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: registered under package "tfode"
    layer = _ode_layer(loaded)
    assert type(layer.vector_field) is type(field)
    assert (layer.rtol, layer.atol) == (pytest.approx(1e-2, rel=1e-6), pytest.approx(1e-4, rel=1e-6))
    np.testing.assert_array_equal(loaded(x), expected)


# ---------------------------------------------------------------------------
# Training in graph mode (one shared model), export, XLA
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    """A functional ODE-Net regression model after one ``fit`` epoch (adjoint, dopri5, rtol=atol=1e-3)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype("float32")
    y = np.tanh(x @ rng.normal(size=(5, 2))).astype("float32")
    model = _make_model("functional", field_name="mlp_concat")
    model.compile(keras.optimizers.Adam(1e-2), "mse", jit_compile=False)

    def mse():
        return float(np.mean((model(x, training=False).numpy() - y) ** 2))

    before = mse()
    history = model.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    return {"model": model, "x": x, "y": y, "history": history.history, "before": before, "after": mse()}


def test_fit_lowers_loss_and_reports_nfe(trained):
    assert trained["after"] < 0.95 * trained["before"]
    history = trained["history"]
    assert _metric(history, "nfe_forward")[-1] > 0
    assert _metric(history, "nfe_backward")[-1] > 0  # adjoint: the backward solve's evaluations


def test_tolerance_knob_needs_no_retrace(trained):
    model, x = trained["model"], trained["x"]
    layer = _ode_layer(model)
    try:
        layer.rtol = layer.atol = 1e-6
        tight = model.predict(x, batch_size=len(x), verbose=0)
        nfe_tight = float(layer.num_fn_evals_forward)
        predict_function = model.predict_function
        traces = predict_function.experimental_get_tracing_count()

        layer.rtol = 1e-1
        layer.atol = 1e-1
        loose = model.predict(x, batch_size=len(x), verbose=0)
        nfe_loose = float(layer.num_fn_evals_forward)
        assert model.predict_function is predict_function
        assert predict_function.experimental_get_tracing_count() == traces
        assert 0 < nfe_loose < nfe_tight
        assert not np.array_equal(loose, tight)
        np.testing.assert_allclose(loose, tight, atol=0.1)  # loose solve, same function
    finally:
        layer.rtol = layer.atol = 1e-3


def test_configure_solver_changes_method(trained):
    model, x = trained["model"], trained["x"]
    layer = _ode_layer(model)
    dopri5 = model.predict(x, batch_size=len(x), verbose=0)
    try:
        changed = configure_solver(model, method="tsit5")
        assert changed == [layer]
        assert layer.method == "tsit5" and layer.get_config()["solver"]["method"] == "tsit5"
        rebuilt = model.predict_function  # rebuilt: the next predict retraces with tsit5
        tsit5 = model.predict(x, batch_size=len(x), verbose=0)
        assert model.predict_function is rebuilt
        assert not np.array_equal(tsit5, dopri5)
        np.testing.assert_allclose(tsit5, dopri5, atol=1e-2)  # both within rtol=atol=1e-3 of the flow

        # Tolerances only: no retrace.
        predict_function = model.predict_function
        configure_solver(model, rtol=1e-5, atol=1e-5)
        assert (layer.rtol, layer.atol) == (pytest.approx(1e-5), pytest.approx(1e-5))
        assert model.predict_function is predict_function
    finally:
        configure_solver(model, method="dopri5", rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_export_serves_without_tfode(trained, tmp_path):
    model, x = trained["model"], trained["x"]
    expected = model(x, training=False).numpy()
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import tensorflow as tf
        sys.stdin.readline()  # wait until the parent has exported
        served = tf.saved_model.load({str(tmp_path / "export")!r})
        np.save({str(tmp_path / "y.npy")!r}, served.serve(np.load({str(tmp_path / "x.npy")!r})).numpy())
        assert "tfode" not in sys.modules, "the SavedModel must not need tfode"
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ""}
    # Start the subprocess first so that its TensorFlow import overlaps the export.
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, cwd=tmp_path,
    ) as child:  # fmt: skip
        try:
            model.export(str(tmp_path / "export"), verbose=False)
        finally:
            _, stderr = child.communicate("go\n", timeout=300)
    assert child.returncode == 0, stderr[-3000:]
    # Same graph, same float32 ops: agreement to round-off.
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_fit_with_jit_compile():
    keras.utils.set_random_seed(0)
    x = _inputs((16, 5))
    y = x[:, :2]
    model = _make_model("sequential", field_name="mlp_concat")
    weights = [w.numpy().copy() for w in model.trainable_weights]
    model.compile(keras.optimizers.SGD(1e-2), "mse", jit_compile=True)
    history = model.fit(x, y, epochs=1, batch_size=8, verbose=0).history
    assert np.isfinite(history["loss"][-1])
    assert _metric(history, "nfe_forward")[-1] > 0 and _metric(history, "nfe_backward")[-1] > 0
    assert any(not np.array_equal(w0, w.numpy()) for w0, w in zip(weights, model.trainable_weights, strict=True))


# ---------------------------------------------------------------------------
# Every Keras API, adjoint and backpropagation through the solver
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["sequential", "functional", "subclassed"])
def test_keras_apis_and_adjoint_gradients(api):
    x = _inputs((6, 5), seed=1)
    y = _inputs((6, 2), seed=2)
    # Tight tolerances: the adjoint gradient differs from backpropagation through
    # the solver by the (backward) solve's error, O(tolerance).
    tol = {"rtol": 1e-5, "atol": 1e-5}
    adjoint = _make_model(api, adjoint=True, **tol)
    direct = _make_model(api, adjoint=False, **tol)
    direct.set_weights(adjoint.get_weights())
    # Eagerly the adjoint's forward loop runs as one traced graph, the direct one op by op:
    # the same arithmetic up to float32 round-off.
    np.testing.assert_allclose(adjoint(x), direct(x), rtol=1e-6, atol=1e-7)

    def gradients(model):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(x, training=True) - y) ** 2)
        return tape.gradient(loss, model.trainable_weights)

    adjoint_grads, direct_grads = gradients(adjoint), gradients(direct)
    assert len(adjoint_grads) == len(direct_grads) == len(adjoint.trainable_weights) > 2
    for weight, a, d in zip(adjoint.trainable_weights, adjoint_grads, direct_grads, strict=True):
        assert a is not None, weight.path
        # Observed relative differences ~2e-4 at rtol=atol=1e-5.
        np.testing.assert_allclose(a, d, rtol=2e-3, atol=1e-5, err_msg=weight.path)

    if api == "subclassed":
        # The NFE metrics of a nested ODELayer reach a subclassed model's logs
        # (Sequential and functional fits are covered by the graph-mode tests).
        adjoint.compile(keras.optimizers.SGD(1e-2), "mse", run_eagerly=True)
        logs = adjoint.train_on_batch(x, y, return_dict=True)
        assert _metric(logs, "nfe_forward") > 0 and _metric(logs, "nfe_backward") > 0


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


class _Narrowing(keras.layers.Layer):
    """A broken vector field: ``f(t, y)`` drops all but one feature."""

    def call(self, t, y):
        return y[..., :1]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"vector_field": lambda t, y: -y}, TypeError, "vector_field must be a keras.layers.Layer"),
        ({"t0": 1.0, "t1": 1.0}, ValueError, "t0 and t1 must be finite and differ"),
        ({"t1": float("nan")}, ValueError, "t0 and t1"),
        ({"times": [0.0, 1.0, 0.5]}, ValueError, "strictly monotone"),
        ({"times": [0.0, 0.0, 1.0]}, ValueError, "strictly monotone"),
        ({"times": [0.0]}, ValueError, ">= 2"),
        ({"rtol": -1e-3}, ValueError, "rtol must be positive"),
        ({"atol": 0.0}, ValueError, "atol must be positive"),
        ({"adjoint_rtol": float("inf")}, ValueError, "adjoint_rtol"),
        ({"method": "rk45"}, ValueError, "Unknown method='rk45'"),
        ({"adjoint_norm": "l2"}, ValueError, "adjoint_norm must be 'seminorm' or 'full'"),
    ],
)
def test_ode_layer_rejects_bad_arguments(kwargs, error, match):
    kwargs = {"vector_field": TimeMLP(hidden=(4,)), **kwargs}
    with pytest.raises(error, match=match):
        ODELayer(**kwargs)


@pytest.mark.parametrize("symbolic", [False, True])
def test_vector_field_with_wrong_output_shape(symbolic):
    x = keras.Input((5,)) if symbolic else _inputs((3, 5))
    with pytest.raises(ValueError, match=r"input's shape .*5\).*got .*1\)"):
        ODELayer(_Narrowing())(x)


def test_vector_field_not_callable_as_f_of_t_y():
    with pytest.raises(ValueError, match=r"vector_field\(t, y\)"):
        ODELayer(keras.layers.Dense(5))(_inputs((3, 5)))


def test_tolerance_setters_validate():
    layer = ODELayer(TimeMLP(hidden=(4,)))
    layer(_inputs((3, 5)))
    with pytest.raises(ValueError, match="rtol"):
        layer.rtol = -1.0
    with pytest.raises(ValueError, match="atol"):
        layer.atol = float("nan")
    assert layer.rtol == pytest.approx(1e-3)  # unchanged by the rejected values


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda: TimeMLP(hidden=()), "hidden"),
        (lambda: TimeMLP(hidden=(8, 0)), "hidden"),
        (lambda: TimeMLP(time_embedding="film"), "time_embedding"),
        (lambda: TimeConv2D(filters=(4,), kernel_size=0), "kernel_size"),
        (lambda: TimeConv2D(filters=[]), "filters"),
    ],
)
def test_vector_fields_reject_bad_arguments(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_time_conv2d_needs_images():
    with pytest.raises(ValueError, match=r"\[batch, height, width, channels\]"):
        ODELayer(TimeConv2D(filters=(4,)))(_inputs((3, 5)))


def test_configure_solver_validation():
    with pytest.raises(ValueError, match="no ODELayer"):
        configure_solver(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
    model = _make_model("sequential")
    with pytest.raises(ValueError, match="Unknown method"):
        configure_solver(model, method="rk45")
    with pytest.raises(ValueError, match="rtol"):
        configure_solver(model, rtol=-1.0)


# ---------------------------------------------------------------------------
# Regressions (found while writing these tests, since fixed)
# ---------------------------------------------------------------------------


def test_tolerances_accept_numpy_floats():
    # Was: only Python int/float passed _positive(), so np.float32 was "not a positive finite number".
    layer = ODELayer(TimeMLP(hidden=(4,)), rtol=np.float32(1e-2), atol=np.float64(1e-3))
    layer(_inputs((3, 5)))
    layer.rtol = np.float32(1e-4)
    assert layer.rtol == pytest.approx(1e-4, rel=1e-6)


def test_unknown_adjoint_method_fails_at_construction():
    # Was: accepted by __init__, failing only inside the first training call's solve.
    with pytest.raises(ValueError, match="Unknown method='rk45'"):
        ODELayer(TimeMLP(hidden=(4,)), adjoint_method="rk45")


def test_return_sequences_needs_times():
    # Was: a dead check; return_sequences=True without times returned [batch, 2, ...].
    with pytest.raises(ValueError, match="return_sequences=True needs times"):
        ODELayer(TimeMLP(hidden=(4,)), return_sequences=True)


# --------------------------------------------------------------------------- #
# Vector fields: one time per sample, any rank of y
# --------------------------------------------------------------------------- #


def _rowwise(field, t, y):
    """``field`` evaluated with a scalar time per leading index of ``y`` (the reference)."""
    return np.stack([field(tf.constant(t[i]), y[i : i + 1])[0].numpy() for i in range(len(t))])


@pytest.mark.parametrize("name", ["mlp_concat", "mlp_concatsquash", "mlp_rank3", "conv"])
def test_vector_field_takes_one_time_per_sample(name):
    field, y = _field(name)
    t = np.linspace(0.1, 0.9, y.shape[0]).astype("float32")
    out = field(tf.constant(t), tf.constant(y)).numpy()
    assert out.shape == y.shape
    np.testing.assert_allclose(out, _rowwise(field, t, y), rtol=1e-5, atol=1e-6)
    # Per-sample times change the output: the time column is not silently a constant.
    assert np.abs(out - field(tf.constant(t[0]), tf.constant(y)).numpy()).max() > 1e-4


def test_time_mlp_time_per_batch_element_and_broadcast():
    field, y = _field("mlp_rank3")  # y [2, 4, 5]
    t = np.arange(8, dtype="float32").reshape(2, 4) / 8.0
    out = field(tf.constant(t), tf.constant(y)).numpy()
    expected = np.stack([[field(tf.constant(t[i, j]), y[i, j : j + 1])[0] for j in range(4)] for i in range(2)])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    # [2, 1] broadcasts over the second axis like [2].
    np.testing.assert_allclose(field(tf.constant(t[:, :1]), tf.constant(y)), field(tf.constant(t[:, 0]), y),
                               rtol=1e-6)  # fmt: skip
    with pytest.raises(ValueError, match="t of shape"):
        field(tf.constant(t[:1, :3]), tf.constant(y))  # [1, 3] against batch [2, 4]
    with pytest.raises(ValueError, match="t must be a scalar or one time per sample"):
        field(tf.zeros([2, 4, 5]), tf.constant(y))


@pytest.mark.parametrize("time_embedding", ["concat", "concatsquash", "none"])
def test_time_mlp_any_rank_of_y_including_unknown(time_embedding):
    field = TimeMLP(hidden=(8,), time_embedding=time_embedding)
    y = _inputs((3, 4, 2))
    reference = field(tf.constant(0.5), tf.constant(y.reshape(12, 2))).numpy()
    unknown_rank = tf.function(field.call, input_signature=[tf.TensorSpec([]), tf.TensorSpec(None)])
    for shaped in (y.reshape(12, 2), y, y.reshape(2, 3, 2, 2)):
        np.testing.assert_allclose(unknown_rank(tf.constant(0.5), shaped).numpy().reshape(12, 2), reference,
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(field(tf.constant(0.5), y[0, 0]), reference[0], rtol=1e-5, atol=1e-6)  # rank 1


def test_load_model_needs_import_tfode(tmp_path):
    """The README's rule: ``import tfode`` registers the classes that ``load_model`` looks up.

    Keras imports no module named in a ``.keras`` file except its own, so loading without
    ``import tfode`` fails (a ``TypeError`` whose config names ``tfode``); after the import it loads.
    """
    field, x = _field("mlp_concat")
    model = keras.Sequential([keras.Input(x.shape[1:]), ODELayer(field, rtol=1e-3, atol=1e-4), keras.layers.Dense(2)])
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(
        """
        import sys
        import keras
        import numpy as np
        try:
            keras.models.load_model("model.keras")
        except TypeError as error:
            assert "tfode" in str(error), str(error)[:500]
        else:
            raise SystemExit("loaded without import tfode")
        import tfode  # registers ODELayer, TimeMLP, ... under the package "tfode"
        np.save("y.npy", keras.models.load_model("model.keras")(np.load("x.npy")))
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), model(x))


def test_two_ode_layers_log_their_own_metrics_and_evaluate_reports_no_backward_solve():
    """Regression (issue 14, items 7 and 8): per-layer metric names; no stale backward NFE in evaluate."""
    keras.utils.set_random_seed(0)
    x = _inputs((16, 3))
    y = x[:, :2]
    model = keras.Sequential([
        keras.Input((3,)),
        ODELayer(TimeMLP(hidden=(8,)), name="first"),
        ODELayer(TimeMLP(hidden=(8,)), rtol=1e-6, atol=1e-6, name="second"),
        keras.layers.Dense(2),
    ])  # fmt: skip
    model.compile(keras.optimizers.SGD(1e-2), "mse", jit_compile=False)
    history = model.fit(x, y, epochs=1, batch_size=16, verbose=0).history
    for name in ("first", "second"):
        assert history[f"{name}_nfe_forward"][-1] > 0 and history[f"{name}_nfe_backward"][-1] > 0
    assert history["second_nfe_forward"][-1] > history["first_nfe_forward"][-1]  # tighter tolerance
    logs = model.evaluate(x, y, return_dict=True, verbose=0)
    assert logs["first_nfe_backward"] == logs["second_nfe_backward"] == 0.0
    assert logs["first_nfe_forward"] > 0
