"""Keras-level tests of ``tfode.models.ContinuousFlow``: training, RNODE losses, saving, sampling.

Cost on a 2-core CPU: tracing one training step (forward solve + adjoint) takes
~20-30 s of CPU, so the graph-mode tests share one model trained for a few steps
(``trained``, module scope) and every ``compile`` passes ``jit_compile=False`` (the
XLA gradient path is covered once in ``test_bijectors.py``). The RNODE loss is
checked eagerly through ``compute_loss``, the function ``fit``'s train step calls.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfode.bijectors  # noqa: E402
from tfode.datasets import toy_2d  # noqa: E402
from tfode.layers import TimeMLP  # noqa: E402
from tfode.models import ContinuousFlow  # noqa: E402

# Loose tolerances and a small net keep a training step cheap; the flow is still a
# proper density (the log-det is integrated with the state).
FLOW_KWARGS = dict(rtol=1e-3, atol=1e-3)


def _model(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    return ContinuousFlow(TimeMLP(hidden=(16, 16)), dim=2, **{**FLOW_KWARGS, **kwargs})


@pytest.fixture(scope="module")
def data():
    return toy_2d("8gaussians", 512, seed=0), toy_2d("8gaussians", 256, seed=1)


@pytest.fixture(scope="module")
def trained(data):
    """A flow trained for 6 steps (3 epochs of 2 batches): model, ``fit`` logs, test NLL before and after."""
    train, test = data
    model = _model()
    model.compile(keras.optimizers.Adam(1e-2), jit_compile=False)
    nll_before = -float(np.mean(model.log_prob(test)))
    history = model.fit(train, batch_size=256, epochs=3, shuffle=False, verbose=0)
    nll_after = -float(np.mean(model.log_prob(test)))
    return model, history.history, nll_before, nll_after


def test_fit_lowers_nll(trained):
    model, logs, nll_before, nll_after = trained
    losses = logs["loss"]
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    # Measured: 7.2 -> 4.2 nats on held-out points (the data's entropy is ~2.84 nats:
    # log(2 pi e 0.354^2) + log 8).
    assert nll_after < nll_before - 1.0


def test_fit_logs_nll_and_nfe(trained):
    # Like ODELayer: the last step's forward and backward NFE, next to the loss and the NLL
    # (equal here: no RNODE terms).
    model, logs, *_ = trained
    assert set(logs) == {"loss", "nll", "nfe_forward", "nfe_backward"}
    np.testing.assert_allclose(logs["nll"], logs["loss"], rtol=1e-6)
    for key in ("nfe_forward", "nfe_backward"):
        assert all(n >= 8 and n == int(n) for n in logs[key])  # a dopri5 solve takes >= 8 evaluations
    # The counts are the bijector's: its recorders are the model's weights.
    assert model.bijector.solve_stats.num_fn_evals is model.num_fn_evals_forward
    assert model.bijector.backward_stats.num_fn_evals is model.num_fn_evals_backward


def test_trained_density_integrates_to_one(trained):
    # Trapezoidal quadrature of exp(log p) over [-8, 8]^2 at spacing 0.1. The data (radius
    # 2.8, sd 0.35) and the flow's density lie well inside: exp(log p) on the boundary is
    # < 1e-6 (measured 2e-9). Measured mass 0.99996 at the model's rtol = atol = 1e-3 (the
    # log-det error shifts the mass by ~1e-4); a wrong log-det sign or a missing term
    # moves it by O(1).
    model, *_ = trained
    axis = np.linspace(-8.0, 8.0, 161)
    grid = np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2).astype(np.float32)
    density = np.exp(model.log_prob(grid).numpy().astype(np.float64)).reshape(161, 161)
    weights = np.ones(161)
    weights[[0, -1]] = 0.5
    mass = weights @ density @ weights * (axis[1] - axis[0]) ** 2
    boundary = np.concatenate([density[[0, -1]].ravel(), density[:, [0, -1]].ravel()])
    assert boundary.max() < 1e-6
    assert density.max() > 0.02  # concentrated (8 modes), not the spread-out base density
    assert abs(mass - 1.0) < 1e-3


def test_log_prob_shape_and_sample(trained, data):
    model, *_ = trained
    _, test = data
    log_prob = model.log_prob(test)
    assert log_prob.shape == (test.shape[0],)
    assert model.compute_output_shape((None, 2)) == (None,)
    samples = model.sample(64, seed=3)
    assert samples.shape == (64, 2)
    assert np.all(np.isfinite(samples))


def test_save_and_load(trained, data, tmp_path):
    model, *_ = trained
    _, test = data
    path = str(tmp_path / "flow.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, ContinuousFlow)
    # (through JSON: the saved build shapes come back as lists)
    assert loaded.get_config() == json.loads(json.dumps(model.get_config()))
    np.testing.assert_allclose(loaded.log_prob(test), model.log_prob(test), rtol=1e-6, atol=1e-6)


def test_config_round_trip():
    model = _model(trace="hutchinson", noise="gaussian", kinetic_weight=0.5, jacobian_weight=0.25, seed=7)
    config = model.get_config()
    clone = ContinuousFlow.from_config(config)
    assert clone.get_config() == config
    assert (clone.kinetic_weight, clone.jacobian_weight) == (0.5, 0.25)
    assert clone.bijector._trace == "hutchinson" and clone.regularized


def test_rnode_terms_are_in_the_training_loss(data):
    train, _ = data
    x = tf.constant(train[:64])
    kinetic_weight, jacobian_weight = 0.1, 0.2
    model = _model(kinetic_weight=kinetic_weight, jacobian_weight=jacobian_weight)
    model.compile(keras.optimizers.Adam(1e-2), jit_compile=False)

    log_prob = model(x, training=True)
    loss = float(model.compute_loss(x=x, y=None, y_pred=log_prob))  # what fit's train step computes
    _, ildj, terms = model.bijector.inverse_and_regularization(x)
    kinetic, frobenius = (float(np.mean(terms[k])) for k in ("kinetic_energy", "jacobian_frobenius"))
    nll = -float(np.mean(log_prob))
    assert kinetic > 0.05 and frobenius > 0.05  # visible at these weights
    np.testing.assert_allclose(ildj + model.base.log_prob(model.bijector.inverse(x)), log_prob, rtol=1e-5)
    np.testing.assert_allclose(
        sorted(float(v) for v in model.losses),
        sorted([nll, kinetic_weight * kinetic, jacobian_weight * frobenius]),
        rtol=1e-5,
    )
    np.testing.assert_allclose(loss, nll + kinetic_weight * kinetic + jacobian_weight * frobenius, rtol=1e-5)

    model(x, training=False)  # inference adds no loss
    assert not model.losses


def test_evaluate_reports_nll(data):
    # evaluate (and fit's validation) computes fit's objective: without RNODE, the NLL.
    _, test = data
    model = _model()
    model.compile(keras.optimizers.Adam(1e-2), jit_compile=False)
    result = model.evaluate(test, batch_size=256, verbose=0, return_dict=True)
    assert set(result) == {"loss", "nll", "nfe_forward", "nfe_backward"}
    np.testing.assert_allclose(result["loss"], -np.mean(model.log_prob(test)), rtol=1e-4)
    np.testing.assert_allclose(result["nll"], result["loss"], rtol=1e-6)
    assert result["nfe_forward"] >= 8


@pytest.fixture
def solve_sizes(monkeypatch):
    """The number of state leaves of every ``tfode.solve`` the bijector traces (a list)."""
    sizes = []
    solve = tfode.bijectors.solve

    def recording_solve(func, y0, *args, **kwargs):
        sizes.append(len(tf.nest.flatten(y0)))
        return solve(func, y0, *args, **kwargs)

    monkeypatch.setattr(tfode.bijectors, "solve", recording_solve)
    return sizes


def test_rnode_terms_only_when_the_loss_is_wanted(data, solve_sizes):
    # With nonzero weights, fit/evaluate/training calls solve (z, log-det, KE, JF): 4 leaves;
    # log_prob (= predict's call) and sample solve (z, log-det): 2 leaves. evaluate reports
    # fit's objective, its NLL and the unweighted RNODE means.
    train, _ = data
    x = train[:64]
    kinetic_weight, jacobian_weight = 0.1, 0.2
    model = _model(kinetic_weight=kinetic_weight, jacobian_weight=jacobian_weight)
    model.compile(keras.optimizers.Adam(1e-2), jit_compile=False)
    log_prob = model.log_prob(x)
    model.sample(4, seed=1)
    assert solve_sizes == [2, 2]
    result = model.evaluate(x, batch_size=64, verbose=0, return_dict=True)
    assert solve_sizes[-1] == 4
    assert set(result) == {"loss", "nll", "kinetic_energy", "jacobian_frobenius", "nfe_forward", "nfe_backward"}
    _, _, terms = model.bijector.inverse_and_regularization(x)
    kinetic, frobenius = (float(np.mean(terms[k])) for k in ("kinetic_energy", "jacobian_frobenius"))
    np.testing.assert_allclose(result["nll"], -np.mean(log_prob), rtol=1e-5)
    np.testing.assert_allclose([result["kinetic_energy"], result["jacobian_frobenius"]], [kinetic, frobenius],
                               rtol=1e-5)  # fmt: skip
    expected = -np.mean(log_prob) + kinetic_weight * kinetic + jacobian_weight * frobenius
    np.testing.assert_allclose(result["loss"], expected, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(vector_field=lambda t, z: z), TypeError, "vector_field must be a keras.layers.Layer"),
        (dict(dim=0), ValueError, "dim must be a positive int"),
        (dict(dim=2.0), ValueError, "dim must be a positive int"),
        (dict(dim=True), ValueError, "dim must be a positive int"),
        (dict(kinetic_weight=-0.1), ValueError, "kinetic_weight must be >= 0"),
        (dict(jacobian_weight=float("nan")), ValueError, "jacobian_weight must be >= 0"),
        (dict(trace="exactly"), ValueError, "trace must be one of"),
    ],
)
def test_rejects_bad_arguments(kwargs, error, match):
    kwargs = {"vector_field": TimeMLP(hidden=(4,)), "dim": 2, **kwargs}
    with pytest.raises(error, match=match):
        ContinuousFlow(**kwargs)


def test_rejects_inputs_of_the_wrong_dimension():
    with pytest.raises(ValueError, match=r"ContinuousFlow\(dim=2\)"):
        _model()(tf.ones([4, 3]))
