"""``tfode.SolverConfig`` and the step-size controllers: validation, serialisation, behaviour."""

import json

import numpy as np
import pytest
import tensorflow as tf

import tfode
from tfode.config import DEFAULTS


def test_defaults_table_holds_every_owner():
    assert DEFAULTS["solve"] == tfode.SolverConfig()
    assert DEFAULTS["ODELayer"].adjoint and DEFAULTS["ODELayer"].rtol == 1e-3
    assert tfode.ODELayer(tfode.layers.TimeMLP((4,))).solver == DEFAULTS["ODELayer"]


@pytest.mark.parametrize(
    "fields, error, match",
    [
        ({"method": "rk45"}, ValueError, "method='rk45'"),
        ({"rtol": -1.0}, ValueError, "rtol must be positive"),
        ({"atol": "1e-6"}, TypeError, "atol must be a number, a float tensor"),
        ({"max_num_steps": 0}, ValueError, "max_num_steps must be a positive int"),
        ({"adjoint": "yes"}, TypeError, "adjoint must be True or False"),
        ({"adjoint_norm": "l2"}, ValueError, "adjoint_norm must be 'seminorm' or 'full'"),
        ({"controller": "pi"}, TypeError, "controller must be a tfode step-size controller"),
        ({"method": "rk4", "controller": tfode.PIController()}, ValueError, "needs an adaptive method"),
    ],
)
def test_bad_fields_raise_naming_the_field(fields, error, match):
    with pytest.raises(error, match=match):
        tfode.SolverConfig(**fields)


def test_replace_validates_and_rejects_unknown_fields():
    config = tfode.SolverConfig()
    assert config.replace(rtol=1e-3).rtol == 1e-3
    with pytest.raises(TypeError, match="no fields \\['tol'\\]"):
        config.replace(tol=1e-3)
    with pytest.raises(ValueError, match="rtol must be positive"):
        config.replace(rtol=0.0)


def test_config_round_trips_through_json():
    config = tfode.SolverConfig(
        method="tsit5", rtol=1e-4, atol=1e-7, controller=tfode.PIController(beta2=0.04, max_step=0.5),
        max_num_steps=500, adjoint=True, adjoint_method="bosh3", adjoint_rtol=1e-3,
        adjoint_controller=tfode.PIController(safety=0.8), adjoint_norm="full",
    )  # fmt: skip
    restored = tfode.SolverConfig.from_config(json.loads(json.dumps(config.get_config())))
    assert restored == config
    fixed = tfode.SolverConfig(method="rk4", controller=tfode.ConstantStepSize(0.1))
    assert tfode.SolverConfig.from_config(json.loads(json.dumps(fixed.get_config()))) == fixed


def test_config_with_tensor_tolerance_is_not_serialisable():
    with pytest.raises(ValueError, match="rtol holds a tensor"):
        tfode.SolverConfig(rtol=tf.constant(1e-3)).get_config()


def test_options_dict_maps_onto_controllers():
    config = tfode.SolverConfig().with_options({"first_step": 0.1, "beta2": 0.04, "max_num_steps": 7})
    assert config.controller == tfode.PIController(first_step=0.1, beta2=0.04)
    assert config.max_num_steps == 7
    fixed = tfode.SolverConfig(method="rk4").with_options({"step_size": 0.25})
    assert fixed.controller == tfode.ConstantStepSize(0.25)


def test_solve_keywords_override_the_config():
    f = lambda t, y: -y  # noqa: E731
    y0, t = tf.ones([2], tf.float64), tf.constant([0.0, 1.0], tf.float64)
    loose = tfode.solve(f, y0, t, tfode.SolverConfig(rtol=1e-2, atol=1e-2))
    tight = tfode.solve(f, y0, t, tfode.SolverConfig(rtol=1e-2, atol=1e-2), rtol=1e-9, atol=1e-9)
    assert int(tight.stats.num_fn_evals) > int(loose.stats.num_fn_evals)
    np.testing.assert_allclose(tight.ys[-1].numpy(), np.exp(-1.0), rtol=1e-8)


@pytest.mark.parametrize("method", ["dopri5", "rk4", "euler"])
def test_constant_step_size_takes_exactly_the_steps_it_is_given(method):
    """ConstantStepSize(h) on any tableau: ceil(T/h) steps and the method's order of accuracy."""
    y0, t = tf.ones([1], tf.float64), tf.constant([0.0, 0.5, 1.0], tf.float64)
    config = tfode.SolverConfig(method=method, controller=tfode.ConstantStepSize(0.01))
    sol = tfode.solve(lambda t, y: -y, y0, t, config)
    assert int(sol.stats.num_steps) == 100
    order = {"dopri5": 5, "rk4": 4, "euler": 1}[method]
    error = np.max(np.abs(sol.ys.numpy()[:, 0] - np.exp(-t.numpy())))
    assert error < 10 * 0.01**order


def test_step_to_output_times_takes_one_step_per_interval():
    t = tf.constant(np.linspace(0.0, 1.0, 21))
    config = tfode.SolverConfig(method="dopri5", controller=tfode.StepToOutputTimes())
    sol = tfode.solve(lambda t, y: -y, tf.ones([1], tf.float64), t, config)
    assert int(sol.stats.num_steps) == 20
    np.testing.assert_allclose(sol.ys.numpy()[:, 0], np.exp(-t.numpy()), rtol=1e-8)


def test_pi_controller_bounds_apply():
    config = tfode.SolverConfig(rtol=1e-3, atol=1e-3, controller=tfode.PIController(max_step=0.01))
    sol = tfode.solve(lambda t, y: -y, tf.ones([1], tf.float64), tf.constant([0.0, 1.0], tf.float64), config)
    assert int(sol.stats.num_accepted) >= 100
    with pytest.raises(ValueError, match="max_step must be positive"):
        tfode.PIController(max_step=0.0)


def test_per_call_tolerances_reach_an_already_traced_function():
    """Tolerances as tensors in the config flow into a traced graph: no retrace, different NFE."""
    layer = tfode.ODELayer(tfode.layers.TimeMLP((16,), activation="tanh"))
    x = tf.random.stateless_normal([8, 3], seed=[1, 2])
    layer(x)
    traces = []

    @tf.function
    def predict(x, rtol, atol):
        traces.append(1)
        layer(x, training=False, solver=layer.solver.replace(rtol=rtol, atol=atol))
        return layer.last_solve_stats.num_fn_evals

    loose = int(predict(x, tf.constant(1e-1), tf.constant(1e-1)))
    tight = int(predict(x, tf.constant(1e-6), tf.constant(1e-6)))
    assert len(traces) == 1
    assert tight > loose


def test_knob_variable_changes_predict_without_retrace():
    import keras

    model = keras.Sequential([keras.Input((3,)), tfode.ODELayer(tfode.layers.TimeMLP((16,), activation="tanh"))])
    layer = model.layers[0]
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    model.predict(x, verbose=0)
    before = layer.num_fn_evals_forward.numpy()
    layer.rtol = layer.atol = 1e-7
    model.predict(x, verbose=0)
    assert layer.num_fn_evals_forward.numpy() > before
    assert layer.solver.rtol == 1e-7


def test_per_call_config_reaches_mirrored_replicas():
    """A config passed into strategy.run reaches every replica (no thread-local state to lose)."""
    devices = tf.config.list_logical_devices("CPU")
    strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:1]] if len(devices) < 2 else
                                              [devices[0].name, devices[1].name])  # fmt: skip
    with strategy.scope():
        layer = tfode.ODELayer(tfode.layers.TimeMLP((16,), activation="tanh"))
        layer.build((None, 3))
    x = tf.random.stateless_normal([8, 3], seed=[3, 4])

    def nfe(config):
        def replica_fn(x):
            layer(x, training=False, solver=config)
            return layer.last_solve_stats.num_fn_evals

        result = strategy.run(tf.function(replica_fn), args=(x,))
        return [int(v) for v in strategy.experimental_local_results(result)]

    loose, tight = nfe(layer.solver.replace(rtol=1e-1, atol=1e-1)), nfe(layer.solver.replace(rtol=1e-6, atol=1e-6))
    assert all(t > lo for t, lo in zip(tight, loose))


def test_odernn_encoder_with_a_fixed_step_method():
    """Regression: ODERNNEncoder(3, method="rk4") failed at its first call (issue 12, bug 4)."""
    encoder = tfode.models.ODERNNEncoder(3, method="rk4")
    times = tf.constant([[0.1, 0.4, 0.9]])
    values = tf.ones([1, 3, 2])
    mean, log_var = encoder(times, values, tf.ones_like(values))
    assert mean.shape == (1, 3) and np.all(np.isfinite(mean.numpy()))


def test_latent_ode_hands_its_solver_to_the_encoder():
    model = tfode.models.LatentODE(obs_dim=2, encoder="ode_rnn", method="bosh3", rtol=1e-2, atol=1e-3)
    assert model.encoder.solver.method == "bosh3"
    assert (model.encoder.solver.rtol, model.encoder.solver.atol) == (1e-2, 1e-3)
    assert not model.encoder.solver.adjoint
