"""Tests of the forward sequence models ``ODERNN`` and ``GRUBaseline``
(``tfode/models/_sequence_models.py``).

Batch format (``tfode.models``): ``times`` ``[T]`` or ``[B, T]``, ``values``
``[B, T, D]``, optional ``mask`` ``[B, T, D]`` and ``query_times`` ``[Q]`` or
``[B, Q]``. A short series is padded by repeating its last time with an
all-zero mask row.

Cost on a 2-core CPU: everything but the one ``slow`` training test runs
eagerly on tiny models (width 8, <= 8 merged steps). The eager ODE-RNN runs one
solve per merged step, so most ODE-RNN tests use ``rk4`` (4 fixed steps per
gap): fixed steps also make a series' result independent of the rest of its
batch, while an adaptive step sequence depends on the error norm over the
whole batch (see ``LOOSE``).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from irregular_cases import BAD_INPUT_CASES, bad_inputs, ragged_batch, random_batch  # noqa: E402

import tfode  # noqa: E402
from tfode.models._latent_ode import masked_gaussian_log_likelihood  # noqa: E402
from tfode.models._sequence_models import ODERNN, GRUBaseline  # noqa: E402

KINDS = ("gru", "ode_rnn", "ode_rnn_dopri5")
# Adaptive solves between steps run at rtol 1e-3 / atol 1e-4 over the whole
# batch: a series alone takes other steps, so differences of ~1e-3 are legitimate.
LOOSE = dict(rtol=1e-2, atol=1e-3)
# Same arithmetic up to float32 round-off in batched matmuls.
TIGHT = dict(rtol=1e-5, atol=1e-6)


def _model(kind, seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    tiny = dict(obs_dim=2, units=8, decoder_hidden=(8,))
    if kind == "gru":
        return GRUBaseline(**tiny, **kwargs)
    method = "rk4" if kind == "ode_rnn" else "dopri5"
    return ODERNN(**tiny, field_hidden=(8,), method=method, **kwargs)


@pytest.fixture(scope="module")
def models():
    """One tiny model per kind, built by a first call (shared by the eager tests)."""
    built = {}
    for kind in KINDS:
        model = _model(kind)
        times, values = random_batch(1, 2)
        model({"times": times, "values": values})
        built[kind] = model
    return built


def _tol(kind):
    return LOOSE if kind == "ode_rnn_dopri5" else TIGHT


# ---------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gru", "ode_rnn"])
@pytest.mark.parametrize("times_kind", ["shared", "per_series"])
@pytest.mark.parametrize("query_kind", ["none", "shared", "per_series"])
def test_output_shapes(models, kind, times_kind, query_kind):
    model = models[kind]
    batch, length, num_query = 2, 3, 4
    times, values = random_batch(batch, length, per_series=times_kind == "per_series")
    mask = np.ones_like(values)
    mask[0, 1, 0] = 0.0  # a partially observed row
    mask[1, -1] = 0.0  # padding
    inputs = {"times": times, "values": values, "mask": mask}
    expected_q = length
    if query_kind != "none":
        query = np.array([2.5, 0.0, 1.0, 1.0], "float32")  # unsorted, repeated, past the end
        inputs["query_times"] = query if query_kind == "shared" else np.stack([query, query[::-1] * 0.5])
        expected_q = num_query
    out = model(inputs)
    assert tuple(out.shape) == (batch, expected_q, 2)
    assert np.all(np.isfinite(out))
    shapes = {k: np.shape(v) for k, v in inputs.items()}
    assert tuple(model.compute_output_shape(shapes)) == (batch, expected_q, 2)


# ---------------------------------------------------------------------------
# Masks, batches of series with different times, the query merge
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gru", "ode_rnn"])
def test_masked_values_change_nothing(models, kind):
    model = models[kind]
    times, values = random_batch(3, 3, seed=1)
    mask = np.ones_like(values)
    mask[0, 1] = 0.0  # a whole row
    mask[1, 0, 1] = 0.0  # one feature of the first row
    mask[2, 2:] = 0.0  # trailing padding
    query = np.array([0.3, 1.0, 2.5], "float32")
    base = {"times": times, "values": values, "mask": mask, "query_times": query}
    reference = model(base, training=True)
    reference_loss = float(model.losses[0])
    for fill in (np.nan, 1e6):
        changed = {**base, "values": np.where(mask > 0, values, np.float32(fill)).astype("float32")}
        np.testing.assert_array_equal(model(changed, training=True), reference)
        assert float(model.losses[0]) == reference_loss
    # ...while changing an observed value does change the prediction.
    observed_changed = {**base, "values": values + np.float32(1.0)}
    assert not np.allclose(model(observed_changed), reference)


def _ragged_batch():
    """Three series with different times and lengths; padded batch and each series alone."""
    series_times = [
        np.array([0.0, 0.5, 0.9], "float32"),
        np.array([0.1, 0.8], "float32"),
        np.array([0.4, 0.6, 0.6], "float32"),  # a repeated time
    ]
    return ragged_batch(series_times, np.array([[0.0, 0.7, 2.0], [0.5, 0.8, 1.0], [0.6, 1.5, 0.2]], "float32"))


@pytest.mark.parametrize("kind", KINDS)
def test_series_in_a_batch_match_each_alone(models, kind):
    model = models[kind]
    series_times, series_values, times, values, mask, query = _ragged_batch()
    batch = {"times": times, "values": values, "mask": mask, "query_times": query}
    predicted = model(batch)
    for i, (t, v) in enumerate(zip(series_times, series_values)):
        alone = model({"times": t[None], "values": v[None], "query_times": query[i : i + 1]})
        np.testing.assert_allclose(alone[0], predicted[i], **_tol(kind))


@pytest.mark.parametrize("kind", ["gru", "ode_rnn"])
def test_query_never_sees_the_value_it_predicts(models, kind):
    """A query at an observed time (or repeated time) reads only earlier observations."""
    model = models[kind]
    times = np.array([[0.2, 0.6, 0.6, 1.1]], "float32")  # 0.6 observed twice
    values = np.random.default_rng(4).normal(size=(1, 4, 2)).astype("float32")
    query = np.array([[0.6, 1.1, 0.9]], "float32")
    base = {"times": times, "values": values, "query_times": query}
    reference = np.asarray(model(base))
    later = values.copy()
    later[0, 1:] += 5.0  # everything observed at or after 0.6
    changed = np.asarray(model({**base, "values": later}))
    np.testing.assert_array_equal(changed[0, 0], reference[0, 0])  # t = 0.6
    assert not np.allclose(changed[0, 1:], reference[0, 1:])  # later queries do see them
    earlier = values.copy()
    earlier[0, 0] += 5.0
    assert not np.allclose(model({**base, "values": earlier})[0, 0], reference[0, 0])


@pytest.mark.parametrize("kind", ["gru", "ode_rnn"])
def test_default_query_is_one_step_ahead_and_matches_explicit_times(models, kind):
    """``query_times`` omitted == ``query_times = times`` (also at repeated times), and the
    training loss is the per-observed-entry Gaussian NLL of exactly these predictions."""
    model = models[kind]
    series_times, series_values, times, values, mask, _ = _ragged_batch()
    base = {"times": times, "values": values, "mask": mask}
    default = model(base, training=True)
    loss = float(model.losses[0])
    explicit = model({**base, "query_times": times})
    np.testing.assert_allclose(default, explicit, **TIGHT)
    np.testing.assert_allclose(default[2, 1], default[2, 2], **TIGHT)  # both 0.6s see only t = 0.4
    log_likelihood = masked_gaussian_log_likelihood(values, explicit, model.obs_std, tf.constant(mask))
    np.testing.assert_allclose(loss, -float(tf.reduce_sum(log_likelihood)) / mask.sum(), rtol=1e-5)


@pytest.mark.parametrize("kind", ["gru", "ode_rnn", "ode_rnn_dopri5"])
def test_extrapolation_is_finite_and_depends_on_the_gap(models, kind):
    model = models[kind]
    times, values = random_batch(1, 3, seed=5)
    last = float(times[0, -1])
    query = np.array([last + 0.5, last + 2.0, last + 6.0], "float32")
    out = np.asarray(model({"times": times, "values": values, "query_times": query}))
    assert np.all(np.isfinite(out))
    assert not np.allclose(out[0, 0], out[0, 1], rtol=0, atol=1e-4)
    assert not np.allclose(out[0, 1], out[0, 2], rtol=0, atol=1e-4)
    # More queries (or none beyond these) leave each prediction unchanged.
    more = model({"times": times, "values": values, "query_times": np.concatenate([query, [0.1, last]])})
    np.testing.assert_allclose(more[:, :3], out, **_tol(kind))


def test_odernn_prediction_does_not_depend_on_the_solver(models):
    """ODE-RNN: the same weights with rk4 (4 steps per gap) and dopri5 (rtol 1e-3) agree."""
    rk4 = models["ode_rnn"]
    dopri5 = _model("ode_rnn_dopri5")
    times, values = random_batch(1, 3, seed=6)
    query = np.array([0.1, float(times[0, -1]) + 1.0], "float32")
    inputs = {"times": times, "values": values, "query_times": query}
    dopri5(inputs)  # build
    dopri5.set_weights(rk4.get_weights())
    np.testing.assert_allclose(rk4(inputs), dopri5(inputs), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("kind", ["gru", "ode_rnn"])
def test_graph_mode_matches_eager(models, kind):
    """The traced call (as in fit and serving; no eager validation) gives the eager result."""
    model = models[kind]
    series_times, series_values, times, values, mask, query = _ragged_batch()
    inputs = {"times": times, "values": values, "mask": mask, "query_times": query}
    traced = tf.function(lambda x: model(x), autograph=False)
    np.testing.assert_allclose(traced(inputs), model(inputs), **TIGHT)


# ---------------------------------------------------------------------------
# Serialization
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gru", "ode_rnn_dopri5"])
def test_config_round_trip_and_keras_file(models, kind, tmp_path):
    model = models[kind]
    times, values = random_batch(2, 3, seed=7)
    inputs = {"times": times, "values": values, "query_times": np.array([0.5, 3.0], "float32")}
    want = np.asarray(model(inputs))
    config = model.get_config()
    clone = type(model).from_config(config)
    assert clone.get_config() == config
    clone(inputs)  # build
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(clone(inputs), want)

    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    assert len(loaded.weights) == len(model.weights)
    for got, saved in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, saved)
    np.testing.assert_array_equal(loaded(inputs), want)


# ---------------------------------------------------------------------------
# Argument validation (eager calls)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gru", "ode_rnn"])
@pytest.mark.parametrize("case, match", BAD_INPUT_CASES)
def test_bad_batch_raises_naming_the_argument(models, kind, case, match):
    with pytest.raises(ValueError, match=match):
        models[kind](bad_inputs(case))


@pytest.mark.parametrize("cls", [ODERNN, GRUBaseline])
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(obs_dim=0), "obs_dim must be a positive int"),
        (dict(obs_dim=2.5), "obs_dim must be a positive int"),
        (dict(units=-1), "units must be a positive int"),
        (dict(decoder_hidden=(0,)), "decoder_hidden"),
        (dict(obs_std=0.0), "obs_std must be positive"),
    ],
)
def test_constructor_rejects_bad_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**{"obs_dim": 2, **kwargs})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(field_hidden=(0,)), "hidden"),
        (dict(max_num_steps=0), "max_num_steps must be a positive int"),
        (dict(method="nope"), "method"),
    ],
)
def test_odernn_constructor_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ODERNN(obs_dim=2, **kwargs)


# ---------------------------------------------------------------------------
# Training (graph mode: the one test that traces)
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_fit_lowers_loss_and_beats_mean_predictor():
    data = tfode.datasets.periodic_1d(num_series=64, num_times=20, noise_std=0.05, seed=1)
    times, values = data["times"], data["values"]
    keras.utils.set_random_seed(0)
    model = ODERNN(obs_dim=1, units=16, field_hidden=(16,), decoder_hidden=(16,), obs_std=0.3)
    model.compile(keras.optimizers.Adam(3e-2), jit_compile=False)
    history = model.fit({"times": times, "values": values}, batch_size=32, epochs=8, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0], losses
    # One-step-ahead predictions of the clean series vs the training-set mean.
    predicted = np.asarray(model({"times": times, "values": values}))
    rmse = float(np.sqrt(np.mean((predicted - data["clean"]) ** 2)))
    mean_rmse = float(np.sqrt(np.mean((data["clean"] - values.mean()) ** 2)))  # ~0.73; trained: ~0.49
    assert rmse < 0.8 * mean_rmse, (rmse, mean_rmse)
