"""Tests of the latent-ODE family: ``tfode.models.LatentODE``, its encoders, the
irregular-batch helpers (``check_batch``, ``solve_at_series_times``) and the
time-series generators of ``tfode.datasets``.

Batch format (``tfode.models``): ``times`` ``[T]`` or ``[B, T]``, ``values``
``[B, T, D]``, optional ``mask`` ``[B, T, D]`` and ``query_times`` ``[Q]`` or
``[B, Q]``. A short series is padded by repeating its last time with an
all-zero mask row.

Cost on a 2-core CPU (~90 s of CPU time for the file): tracing one training
step takes ~20 s, so everything but ``test_fit_lowers_loss_and_beats_mean_predictor``
(marked ``slow``) runs eagerly on tiny models (latent 3, widths 8, <= 7 time
points); the eager ODE-RNN encoder runs one small solve per time step, so its
batches are the smallest. The ``solve_at_series_times`` checks run in graph mode.

Regression tests for bugs found in review are at the end of the file.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402
from irregular_cases import BAD_INPUT_CASES, bad_inputs, ragged_batch, random_batch  # noqa: E402

import tfode  # noqa: E402
from tfode.models import (  # noqa: E402
    LatentODE,
    gaussian_kl,
    masked_gaussian_log_likelihood,
    predictive_rmse,
    solve_at_series_times,
)

ENCODERS = ("rnn", "ode_rnn")
TINY = dict(latent_dim=3, encoder_units=8, field_hidden=(8,), decoder_hidden=(8,))
# Tolerances of model-vs-model comparisons that go through adaptive solves whose
# step sequence depends on the batch (the error norm spans all series): the
# latent solve runs at rtol 1e-5 below, but the ODE-RNN encoder's own solver is
# fixed at rtol 1e-3 / atol 1e-4, so differences of ~1e-3 are legitimate.
LOOSE = dict(rtol=1e-2, atol=1e-3)


def _model(encoder="rnn", seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    return LatentODE(obs_dim=2, encoder=encoder, **{**TINY, **kwargs})


def _encode_and_elbo(model, inputs):
    """``(mean, log_var, elbo [B])`` with z0 = posterior mean: the training=False path, one encoder run."""
    mean, log_var = model.encode(inputs)
    observed = model.decoder(model.latent_trajectory(mean, inputs["times"]))
    mask = inputs.get("mask", np.ones_like(inputs["values"]))
    log_likelihood = masked_gaussian_log_likelihood(inputs["values"], observed, model.obs_std, tf.constant(mask))
    return mean, log_var, log_likelihood - gaussian_kl(mean, log_var)


def _predict(model, inputs):
    """``(mean, log_var, prediction at inputs['query_times'])`` from one encoder run (training=False)."""
    mean, log_var = model.encode(inputs)
    # Inference: no adjoint, so per-series times are solved per sample (as model(..., training=False) does).
    solver = model.solver.replace(adjoint=False)
    return mean, log_var, model.decoder(model.latent_trajectory(mean, inputs["query_times"], solver))


@pytest.fixture(scope="module")
def models():
    """One tiny model per encoder, built by a first call (shared by the eager tests)."""
    built = {}
    for encoder in ENCODERS:
        model = _model(encoder, rtol=1e-5, atol=1e-6)
        times, values = random_batch(1, 2)
        model({"times": times, "values": values})
        built[encoder] = model
    return built


# ---------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("times_kind", ["shared", "per_series"])
@pytest.mark.parametrize("query_kind", ["none", "shared", "per_series"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_output_shapes(models, times_kind, query_kind, with_mask):
    model = models["rnn"]
    batch, length, num_query = 3, 5, 7
    times, values = random_batch(batch, length, per_series=times_kind == "per_series")
    inputs = {"times": times, "values": values}
    if with_mask:
        mask = np.ones_like(values)
        mask[0, 1:3, 0] = 0.0  # partially observed rows
        mask[1, -2:] = 0.0  # padding: a shorter series
        inputs["mask"] = mask
    expected_q = length
    if query_kind != "none":
        query = np.linspace(0.0, 3.0, num_query, dtype="float32")
        inputs["query_times"] = query if query_kind == "shared" else np.tile(query, (batch, 1)) * 0.5
        expected_q = num_query
    out = model(inputs)
    assert tuple(out.shape) == (batch, expected_q, 2)
    assert np.all(np.isfinite(out))
    shapes = {k: np.shape(v) for k, v in inputs.items()}
    assert tuple(model.compute_output_shape(shapes)) == (batch, expected_q, 2)
    mean, log_var = model.encode(inputs)
    assert tuple(mean.shape) == tuple(log_var.shape) == (batch, 3)


# ---------------------------------------------------------------------------
# Masks, and batches of series with different times
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ENCODERS)
def test_masked_values_change_nothing(models, encoder):
    model = models[encoder]
    times, values = random_batch(3, 4, seed=1)
    mask = np.ones_like(values)
    mask[0, 2] = 0.0  # a whole row
    mask[1, 0, 1] = 0.0  # one feature of the first row
    mask[2, 2:] = 0.0  # trailing padding
    base = {"times": times, "values": values, "mask": mask}
    reference = _encode_and_elbo(model, base)
    model._posterior_noise.reset_from_seed(7)  # the training path samples z0: same state, same sample
    model(base, training=True)
    reference_loss = float(tf.add_n(model.losses))
    # The eager ODE-RNN runs a solve per time step: one fill value for it is enough.
    fills = (np.nan,) if encoder == "ode_rnn" else (np.nan, 1e6, -3.0)
    for fill in fills:
        changed = {**base, "values": np.where(mask > 0, values, np.float32(fill)).astype("float32")}
        for got, want in zip(_encode_and_elbo(model, changed), reference):  # mean, log_var, elbo
            np.testing.assert_array_equal(got, want)
        model._posterior_noise.reset_from_seed(7)
        model(changed, training=True)
        assert float(tf.add_n(model.losses)) == reference_loss
    # ...while changing an observed value does change the encoding.
    observed_changed = {**base, "values": values + np.float32(1.0)}
    assert not np.allclose(model.encode(observed_changed)[0], reference[0])


def _ragged_batch():
    """Three series with different times and lengths; padded batch and the series alone."""
    series_times = [
        np.array([0.0, 0.5, 0.9, 1.2], "float32"),
        np.array([0.1, 0.8], "float32"),
        np.array([0.4, 0.6, 0.6], "float32"),  # a repeated time
    ]
    return ragged_batch(series_times, np.array([[0.0, 0.7, 2.0], [0.5, 0.5, 1.0], [0.2, 1.5, 3.0]], "float32"))


@pytest.mark.parametrize("encoder", ENCODERS)
def test_series_in_a_batch_match_each_alone(models, encoder):
    model = models[encoder]
    series_times, series_values, times, values, mask, query = _ragged_batch()
    batch = {"times": times, "values": values, "mask": mask, "query_times": query}
    mean, log_var, predicted = _predict(model, batch)
    np.testing.assert_allclose(model(batch, training=False), predicted, rtol=1e-6, atol=1e-6)

    for i, (t, v) in enumerate(zip(series_times, series_values)):
        alone = _predict(model, {"times": t[None], "values": v[None], "query_times": query[i : i + 1]})
        for got, want in zip(alone, (mean, log_var, predicted)):
            np.testing.assert_allclose(got[0], want[i], **LOOSE)

    # The same series on the union grid of their times (shared [T] times, each
    # series observed where its mask says), queried at shared [Q] times. A
    # repeated time cannot be two grid rows: series 2 has one, so it stays out.
    grid = np.unique(np.concatenate(series_times[:2]))
    grid_values = np.zeros((2, len(grid), 2), "float32")
    grid_mask = np.zeros_like(grid_values)
    for i in (0, 1):
        rows = np.searchsorted(grid, series_times[i])
        grid_values[i, rows], grid_mask[i, rows] = series_values[i], 1.0
    on_grid = {"times": grid, "values": grid_values, "mask": grid_mask, "query_times": query[0]}
    grid_mean, _, grid_predicted = _predict(model, on_grid)
    np.testing.assert_allclose(grid_mean, mean[:2], **LOOSE)
    np.testing.assert_allclose(grid_predicted[0], predicted[0], **LOOSE)


# ---------------------------------------------------------------------------
# ELBO pieces
# ---------------------------------------------------------------------------


def test_gaussian_kl_matches_closed_form():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(5, 4))
    log_var = rng.normal(scale=0.7, size=(5, 4))
    q = tfp.distributions.MultivariateNormalDiag(loc=mean, scale_diag=np.exp(0.5 * log_var))
    p = tfp.distributions.MultivariateNormalDiag(loc=np.zeros(4), scale_diag=np.ones(4))
    expected = tfp.distributions.kl_divergence(q, p)
    np.testing.assert_allclose(gaussian_kl(tf.constant(mean), tf.constant(log_var)), expected, rtol=1e-10)
    np.testing.assert_allclose(gaussian_kl(tf.zeros([2, 3]), tf.zeros([2, 3])), [0.0, 0.0])


def test_masked_log_likelihood_matches_tfp():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(2, 4, 3)).astype("float32")
    mean = rng.normal(size=(2, 4, 3)).astype("float32")
    mask = (rng.uniform(size=(2, 4, 3)) > 0.4).astype("float32")
    values_nan = np.where(mask > 0, values, np.float32(np.nan))
    got = masked_gaussian_log_likelihood(tf.constant(values_nan), tf.constant(mean), 0.3, tf.constant(mask))
    want = (tfp.distributions.Normal(mean.astype("float64"), 0.3).log_prob(values).numpy() * mask).sum(axis=(1, 2))
    np.testing.assert_allclose(got, want, rtol=1e-5)  # float32


# ---------------------------------------------------------------------------
# Training (graph mode: the one test that traces)
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_fit_lowers_loss_and_beats_mean_predictor():
    data = tfode.datasets.spirals_2d(num_spirals=40, num_total=200, num_window=20, seed=1)
    times, values = tfode.datasets.subsample(data["times"], data["values"], 15, seed=0)
    model = _model("rnn", latent_dim=4, encoder_units=16, field_hidden=(16,), decoder_hidden=(16,))
    model.compile(keras.optimizers.Adam(1e-2), jit_compile=False)
    history = model.fit({"times": times, "values": values}, batch_size=20, epochs=8, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0], losses
    assert float(model.num_fn_evals_forward) > 0
    # Predict the noise-free window at all 20 times from 15 noisy points.
    full_times = np.broadcast_to(data["times"], (40, 20))
    rmse = predictive_rmse(model, times, values, np.ones_like(values), full_times, data["clean"])
    mean_rmse = float(np.sqrt(np.mean((data["clean"] - values.mean(axis=(0, 1))) ** 2)))  # ~3.8
    assert rmse < 0.8 * mean_rmse, (rmse, mean_rmse)
    # Extrapolate 5 reference steps past the window (the clean spiral continues in clean_full).
    step = float(data["times"][1] - data["times"][0])
    ahead = data["times"][-1] + step * np.arange(1, 6, dtype="float32")
    rows = data["start"][:, None] + 20 + np.arange(5)
    target = np.take_along_axis(data["clean_full"], rows[..., None], axis=1)
    extrapolation = predictive_rmse(model, times, values, np.ones_like(values), np.broadcast_to(ahead, (40, 5)), target)
    mean_extrapolation = float(np.sqrt(np.mean((target - values.mean(axis=(0, 1))) ** 2)))
    assert extrapolation < 0.8 * mean_extrapolation, (extrapolation, mean_extrapolation)


# ---------------------------------------------------------------------------
# Serialization
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ENCODERS)
def test_config_round_trip(models, encoder):
    model = models[encoder]
    times, values = random_batch(1, 3, seed=4)  # the eager ODE-RNN solves once per time step: keep it short
    inputs = {"times": times, "values": values, "query_times": np.linspace(0, 3, 4, dtype="float32")}
    config = model.get_config()
    clone = LatentODE.from_config(config)
    assert clone.get_config() == config
    clone(inputs)  # build
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(inputs, training=False), model(inputs, training=False), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# Argument validation (eager calls)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case, match", BAD_INPUT_CASES)
def test_bad_batch_raises_naming_the_argument(models, case, match):
    with pytest.raises(ValueError, match=match):
        models["rnn"](bad_inputs(case))


def test_masked_nan_is_allowed(models):
    times, values = random_batch(2, 4, seed=6)
    values[0, 1, 1] = np.nan
    mask = np.ones_like(values)
    mask[0, 1, 1] = 0.0
    tfode.models.check_batch(times, values, mask)  # does not raise
    assert np.all(np.isfinite(models["rnn"]({"times": times, "values": values, "mask": mask})))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(encoder="gru"), "encoder must be 'rnn' or 'ode_rnn'"),
        (dict(latent_dim=0), "latent_dim must be a positive int"),
        (dict(latent_dim=2.5), "latent_dim must be a positive int"),
        (dict(encoder_units=-1), "encoder_units must be a positive int"),
        (dict(obs_std=0.0), "obs_std must be positive"),
        (dict(field_hidden=(0,)), "hidden"),
        (dict(obs_dim=0), "obs_dim must be a positive int"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LatentODE(**{"obs_dim": 2, **kwargs})


def test_inputs_must_be_a_dict(models):
    with pytest.raises(ValueError, match="inputs must be a dict"):
        models["rnn"](np.zeros((2, 3, 2), "float32"))


# ---------------------------------------------------------------------------
# solve_at_series_times
# ---------------------------------------------------------------------------


def _linear_tanh_field():
    rng = np.random.default_rng(8)
    weights = tf.Variable(rng.normal(scale=0.8, size=(2, 2)))
    bias = tf.Variable(rng.normal(scale=0.3, size=(2,)))

    # t is a scalar (joint solves) or one time per series [B] (per-sample solves).
    def field(t, z):
        return tf.tanh(z) @ weights + bias + 0.1 * tf.sin(t[:, None] if t.shape.rank == 1 else t)

    return field, [weights, bias]


# Per-series times with repeats, a query at t = 0 and shared entries across series.
SERIES_TIMES = np.array([[0.2, 0.5, 0.5, 1.0], [0.0, 0.3, 0.9, 0.9], [0.1, 0.1, 0.1, 0.7]])
SOLVER = dict(rtol=1e-8, atol=1e-10)
CONFIG = tfode.SolverConfig(**SOLVER)


def test_solve_at_series_times_matches_each_series_alone():
    func, _ = _linear_tanh_field()
    z0 = tf.constant(np.random.default_rng(9).normal(size=(3, 2)))
    # Graph mode (no AutoGraph: tfode's loops are explicit): eager solves at 1e-9 take seconds each.
    solve = tf.function(lambda times: solve_at_series_times(func, z0, times, CONFIG)[0], autograph=False)
    zs = solve(tf.constant(SERIES_TIMES))
    assert tuple(zs.shape) == (3, 4, 2)
    odeint = tf.function(lambda y0, t: tfode.odeint(func, y0, t, **SOLVER), autograph=False)
    for i, series in enumerate(SERIES_TIMES):
        grid = np.unique(np.concatenate([[0.0], series]))  # odeint needs strictly increasing times
        alone = odeint(z0[i : i + 1], tf.constant(grid))[:, 0]
        np.testing.assert_allclose(zs[i], tf.gather(alone, np.searchsorted(grid, series)), rtol=1e-6, atol=1e-8)
    # Shared [Q] times: every series at the same times.
    shared = solve(tf.constant(SERIES_TIMES[0]))
    np.testing.assert_allclose(shared, solve(tf.constant(np.tile(SERIES_TIMES[0], (3, 1)))), rtol=1e-6, atol=1e-8)


def test_solve_at_series_times_adjoint_gradients_match_backprop():
    func, variables = _linear_tanh_field()
    z0 = tf.Variable(np.random.default_rng(10).normal(size=(3, 2)))
    cotangent = tf.constant(np.random.default_rng(11).normal(size=(3, 4, 2)))

    def gradients(adjoint):
        with tf.GradientTape() as tape:
            zs, _ = solve_at_series_times(func, z0, tf.constant(SERIES_TIMES), CONFIG.replace(adjoint=adjoint))
            loss = tf.reduce_sum(zs * cotangent)
        return tape.gradient(loss, [z0, *variables])

    with_adjoint = tf.function(lambda: gradients(True), autograph=False)()
    with_backprop = tf.function(lambda: gradients(False), autograph=False)()
    for got, want in zip(with_adjoint, with_backprop):
        assert got is not None
        # Both are accurate to ~solver tolerance (1e-8); 1e-6 leaves room for the backward solve.
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------
# Data sets
# ---------------------------------------------------------------------------


def test_spirals_2d_shapes_seed_and_rotation():
    data = tfode.datasets.spirals_2d(num_spirals=10, num_total=300, num_window=30, seed=3)
    assert data["times"].shape == (30,)
    assert data["values"].shape == data["clean"].shape == (10, 30, 2)
    assert data["clean_full"].shape == (10, 300, 2)
    assert data["values"].dtype == np.float32
    np.testing.assert_allclose(data["times"], np.linspace(0, 6 * np.pi, 300)[:30], rtol=1e-6)
    assert data["clockwise"].sum() == 5
    assert np.all((data["start"] >= 30) & (data["start"] < 270))
    # clean is the window of clean_full starting at `start`
    for i in range(10):
        np.testing.assert_array_equal(data["clean"][i], data["clean_full"][i, data["start"][i] : data["start"][i] + 30])
    # rotation sense: the signed area swept around each spiral's centre (x = -5 or +5)
    centre = np.where(data["clockwise"], -5.0, 5.0)[:, None]
    x, y = data["clean"][..., 0] - centre, data["clean"][..., 1]
    swept = np.sum(x[:, :-1] * y[:, 1:] - x[:, 1:] * y[:, :-1], axis=1)
    np.testing.assert_array_equal(swept < 0, data["clockwise"])
    # noise is Gaussian with the requested std (3 sigma band of the sample std for 600 draws)
    assert abs(np.std(data["values"] - data["clean"]) - 0.3) < 0.03
    again = tfode.datasets.spirals_2d(num_spirals=10, num_total=300, num_window=30, seed=3)
    other = tfode.datasets.spirals_2d(num_spirals=10, num_total=300, num_window=30, seed=4)
    np.testing.assert_array_equal(again["values"], data["values"])
    assert not np.array_equal(other["values"], data["values"])


def test_subsample_keeps_sorted_unique_points_of_each_series():
    data = tfode.datasets.spirals_2d(num_spirals=6, num_total=300, num_window=30, seed=0)
    times, values = tfode.datasets.subsample(data["times"], data["values"], 10, seed=1)
    assert times.shape == (6, 10) and values.shape == (6, 10, 2)
    assert np.all(np.diff(times, axis=1) > 0)  # sorted and unique
    for i in range(6):
        rows = np.searchsorted(data["times"], times[i])
        np.testing.assert_array_equal(data["times"][rows], times[i])
        np.testing.assert_array_equal(data["values"][i, rows], values[i])
    assert not np.array_equal(times[0], times[1])  # each series its own times
    again = tfode.datasets.subsample(data["times"], data["values"], 10, seed=1)
    np.testing.assert_array_equal(again[0], times)
    with pytest.raises(ValueError, match="num_observed"):
        tfode.datasets.subsample(data["times"], data["values"], 31)


def test_periodic_1d_starts_at_zero():
    data = tfode.datasets.periodic_1d(num_series=8, num_times=12, seed=2)
    assert data["times"].shape == (8, 12)
    assert data["values"].shape == data["clean"].shape == (8, 12, 1)
    np.testing.assert_array_equal(data["times"][:, 0], 0.0)
    assert np.all(np.diff(data["times"], axis=1) >= 0)
    assert np.all(np.abs(data["clean"]) <= 1.5)
    tfode.models.check_batch(data["times"], data["values"])


# ---------------------------------------------------------------------------
# Regressions (bugs found in review)
# ---------------------------------------------------------------------------


def test_masked_log_likelihood_float64():
    values = tf.zeros([1, 2, 1], tf.float64)
    got = masked_gaussian_log_likelihood(values, values, 1.0, tf.ones_like(values))
    np.testing.assert_allclose(got, [-np.log(2 * np.pi)])


def test_keras_save_and_load_same_predictions(models, tmp_path):
    model = models["rnn"]
    times, values = random_batch(2, 5, seed=12)
    inputs = {"times": times, "values": values}
    path = str(tmp_path / "latent.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(inputs, training=False), model(inputs, training=False), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_encoding_depends_on_time_of_first_observation(models, encoder):
    times, values = random_batch(1, 3, seed=13)
    early = models[encoder].encode({"times": times, "values": values})[0]
    late = models[encoder].encode({"times": times + 1.0, "values": values})[0]
    assert not np.allclose(early, late, rtol=1e-3, atol=1e-4)


def test_query_times_must_be_non_decreasing(models):
    times, values = random_batch(2, 4, seed=14)
    with pytest.raises(ValueError, match="query_times must be non-decreasing"):
        models["rnn"]({"times": times, "values": values, "query_times": np.array([0.0, 2.0, 1.0], "float32")})


def test_ode_rnn_encoder_follows_per_call_tolerances(models):
    """A per-call solver (the serving knob) hands its tolerances to the ODE-RNN encoder's solves too."""
    times, values = random_batch(1, 3, seed=15)
    inputs = {"times": times * 3.0, "values": values}
    model = models["ode_rnn"]
    reference = model.encode(inputs)[0]
    loose = model.encode(inputs, solver=model.solver.replace(rtol=0.5, atol=0.5))[0]
    assert not np.allclose(loose, reference, rtol=0, atol=1e-7)


# ---------------------------------------------------------------------------
# Poisson process likelihood, IWAE bound, classification head
# ---------------------------------------------------------------------------


def test_poisson_log_likelihood_constant_rate_closed_form():
    """Rate λ = e^c on every feature: log L = N_events * c - D * e^c * t_end, per series."""
    model = _model(poisson=True, rtol=1e-7, atol=1e-8)
    times, values = random_batch(2, 5, seed=16)
    mask = np.ones_like(values)
    mask[0, 1, 0] = mask[1, 3:] = 0.0
    model({"times": times, "values": values, "mask": mask})
    c = -0.4
    kernel, bias = model.log_rate.get_weights()
    model.log_rate.set_weights([np.zeros_like(kernel), np.full_like(bias, c)])
    z0 = tf.constant(np.random.default_rng(0).normal(size=(2, 3)), tf.float32)
    zs, log_rate, integrated, _ = model._solve_with_intensity(z0, tf.constant(times), model.solver)
    np.testing.assert_allclose(integrated, np.exp(c) * times[:, -1:].repeat(2, axis=1), rtol=1e-5)
    got = tfode.models.poisson_process_log_likelihood(log_rate, integrated, tf.constant(mask))
    expected = mask.sum(axis=(1, 2)) * c - 2 * np.exp(c) * times[:, -1]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # The latent path of the augmented solve is the plain latent solve.
    np.testing.assert_allclose(zs, model._solve_latent(z0, tf.constant(times), model.solver)[0], rtol=1e-4, atol=1e-5)


def test_poisson_model_trains_one_step():
    model = _model(poisson=True)
    times, values = random_batch(4, 5, seed=17)
    model.compile(keras.optimizers.Adam(1e-2), jit_compile=False, run_eagerly=True)
    history = model.fit({"times": times, "values": values}, batch_size=4, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert any(np.abs(w).sum() > 0 for w in model.log_rate.get_weights())


def test_iwae_bound_matches_manual_computation_and_prior_ratio():
    samples = 5
    model = _model(iwae_samples=samples, rtol=1e-6, atol=1e-7)
    times, values = random_batch(3, 4, seed=18)
    inputs = {"times": times, "values": values}
    model(inputs)
    model._posterior_noise.reset_from_seed(3)
    model(inputs, training=True)
    loss = float(tf.add_n(model.losses))
    # Recompute from the same K posterior samples.
    mean, log_var = model.encode(inputs)
    model._posterior_noise.reset_from_seed(3)
    z = model._sample_z0(mean, log_var).numpy()  # [K, B, L]
    assert z.shape == (samples, 3, 3)
    log_w = np.zeros((samples, 3))
    for k in range(samples):
        observed = model.decoder(model.latent_trajectory(tf.constant(z[k]), times))
        log_w[k] = masked_gaussian_log_likelihood(values, observed, model.obs_std, tf.ones_like(observed))
    var = np.exp(log_var.numpy())
    log_prior = (-0.5 * z**2 - 0.5 * np.log(2 * np.pi)).sum(-1)
    log_q = (-0.5 * (z - mean.numpy()) ** 2 / var - 0.5 * np.log(2 * np.pi * var)).sum(-1)
    log_w += log_prior - log_q
    bound = np.log(np.mean(np.exp(log_w - log_w.max(0)), axis=0)) + log_w.max(0)
    np.testing.assert_allclose(loss, -bound.mean(), rtol=1e-4)


def test_iwae_log_weight_prior_term_is_minus_kl_on_average():
    """E_q[log p(z) - log q(z)] = -KL(q || p): the IWAE weights and the ELBO's closed form agree."""
    from tfode.models._latent_ode import _diagonal_normal_log_density, _standard_normal_log_density

    rng = np.random.default_rng(19)
    mean = tf.constant(rng.normal(size=(2, 3)), tf.float64)
    log_var = tf.constant(rng.normal(scale=0.5, size=(2, 3)), tf.float64)
    z = mean + tf.exp(0.5 * log_var) * tf.constant(rng.normal(size=(200_000, 2, 3)))
    ratio = _standard_normal_log_density(z) - _diagonal_normal_log_density(z, mean, log_var)
    estimate, error = tf.reduce_mean(ratio, 0), tf.math.reduce_std(ratio, 0) / np.sqrt(200_000)
    assert np.all(np.abs(estimate + gaussian_kl(mean, log_var)) < 5 * error)


def test_classifier_head_outputs_logits_and_adds_cross_entropy():
    model = _model(num_classes=3, classification_weight=5.0)
    times, values = random_batch(4, 3, seed=20)
    labels = np.array([0, 2, 1, 2])
    inputs = {"times": times, "values": values, "labels": labels}
    out = model(inputs)
    assert set(out) == {"mean", "logits"}
    assert out["mean"].shape == (4, 3, 2) and out["logits"].shape == (4, 3)
    np.testing.assert_allclose(model.classify(inputs), out["logits"], rtol=1e-6)
    with pytest.raises(ValueError, match="labels"):
        model({"times": times, "values": values}, training=True)
    # The training loss is -ELBO + weight * CE(labels, classifier(z0 sample)), same sample for both.
    model._posterior_noise.reset_from_seed(5)
    model(inputs, training=True)
    total = float(tf.add_n(model.losses))
    mean, log_var = model.encode(inputs)
    model._posterior_noise.reset_from_seed(5)
    z0 = model._sample_z0(mean, log_var)[0]
    observed = model.decoder(model.latent_trajectory(z0, times))
    elbo = masked_gaussian_log_likelihood(values, observed, model.obs_std, tf.ones_like(observed))
    elbo -= gaussian_kl(mean, log_var)
    logits = model.classifier(z0).numpy()
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    cross_entropy = -np.mean(log_softmax[np.arange(4), labels])
    np.testing.assert_allclose(total, -np.mean(elbo) + 5.0 * cross_entropy, rtol=1e-4)


def test_optional_heads_survive_keras_save_and_load(tmp_path):
    model = _model(poisson=True, num_classes=3, classifier_hidden=(4,), iwae_samples=2)
    times, values = random_batch(2, 4, seed=21)
    inputs = {"times": times, "values": values}
    model(inputs)
    path = str(tmp_path / "heads.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for key in ("mean", "logits"):
        np.testing.assert_allclose(loaded(inputs)[key], model(inputs)[key], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(loaded.log_rate.get_weights()[0], model.log_rate.get_weights()[0])
    assert loaded.get_config() == model.get_config()


def test_posterior_noise_is_seeded_by_keras_seed_or_argument():
    first, second = _model(seed=3), _model(seed=3)
    assert first.seed == second.seed
    assert _model(seed=4).seed != first.seed
    explicit = LatentODE(obs_dim=2, seed=11, **TINY)
    assert explicit.seed == 11
