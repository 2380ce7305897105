"""Tests of Keras' ``fit``/``evaluate``/``predict`` on the irregular-series models
(``tfode/models/_keras_inputs.py``): shared ``times`` ``[T]`` and ``query_times`` ``[Q]``
as the README documents them, and compiled losses.

Cost on a 2-core CPU: tiny models (width 8), 6 series of 5 points, one epoch; each
Keras method traces its step once, ~5-15 s per model.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfode  # noqa: E402
from tfode.models._keras_inputs import broadcast_shared_times  # noqa: E402

MODELS = {
    "latent_ode": lambda: tfode.models.LatentODE(
        obs_dim=2, latent_dim=3, encoder_units=8, field_hidden=(8,), decoder_hidden=(8,), seed=0
    ),
    "ode_rnn": lambda: tfode.models.ODERNN(obs_dim=2, units=8, field_hidden=(8,), decoder_hidden=(8,)),
    "gru": lambda: tfode.models.GRUBaseline(obs_dim=2, units=8, decoder_hidden=(8,)),
}


def _data(batch=6, length=5, seed=0):
    rng = np.random.default_rng(seed)
    times = np.linspace(0.1, 1.0, length).astype("float32")
    values = rng.normal(size=(batch, length, 2)).astype("float32")
    query = np.linspace(1.1, 1.5, 3).astype("float32")
    return times, values, query


def _model(name):
    keras.utils.set_random_seed(0)
    model = MODELS[name]()
    model.compile(keras.optimizers.Adam(1e-2), jit_compile=False)
    return model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fit_evaluate_predict_take_shared_times(name):
    times, values, query = _data()
    model = _model(name)
    shared = {"times": times, "values": values}
    history = model.fit(shared, batch_size=3, epochs=1, verbose=0, validation_data=(shared,))
    assert np.isfinite(history.history["loss"][0]) and np.isfinite(history.history["val_loss"][0])
    # evaluate reports the training objective (a Gaussian NLL per entry / the negative ELBO): finite, and for
    # the deterministic sequence models equal with shared and per-series times.
    loss = model.evaluate(shared, batch_size=3, verbose=0)
    assert np.isfinite(loss)
    if name != "latent_ode":  # the latent ODE's objective draws a posterior sample
        per_series = model.evaluate({"times": np.tile(times, (6, 1)), "values": values}, batch_size=3, verbose=0)
        np.testing.assert_allclose(loss, per_series, rtol=1e-5)
    # predict with shared times and query times == the direct call (which keeps them shared); tensors too.
    direct = model({"times": times, "values": values, "query_times": query}, training=False).numpy()
    for convert in (np.asarray, tf.constant):
        inputs = {"times": convert(times), "values": convert(values), "query_times": convert(query)}
        predicted = model.predict(inputs, batch_size=3, verbose=0)
        assert predicted.shape == (6, 3, 2)
        # The per-series grid takes the same solver steps (outputs come from dense output); batches of 3
        # instead of 6 change the adaptive error norm: agreement to ~solver tolerance (rtol 1e-3, atol 1e-4).
        np.testing.assert_allclose(predicted, direct, rtol=1e-2, atol=1e-3)


def test_broadcast_rule():
    times, values, query = _data()
    out = broadcast_shared_times({"times": times, "values": values, "query_times": query, "mask": values * 0 + 1})
    assert out["times"].shape == (6, 5) and out["query_times"].shape == (6, 3) and out["mask"].shape == (6, 5, 2)
    np.testing.assert_array_equal(out["times"][4], times)
    per_series = {"times": np.tile(times, (6, 1)), "values": values}
    assert broadcast_shared_times(per_series)["times"] is per_series["times"]  # per-series times untouched
    dataset = tf.data.Dataset.from_tensors({"times": times, "values": values})
    assert broadcast_shared_times(dataset) is dataset


@pytest.mark.parametrize("name", sorted(MODELS))
def test_compiled_loss_is_added_and_needs_targets(name):
    times, values, _ = _data()
    inputs = {"times": np.tile(times, (6, 1)), "values": values}
    keras.utils.set_random_seed(0)
    model = MODELS[name]()
    model.compile(keras.optimizers.Adam(1e-2), loss="mse", jit_compile=False)
    for method in (model.fit, model.evaluate):
        with pytest.raises(ValueError, match=r"loss='mse' was given to compile\(\), but fit/evaluate got no targets y"):
            method(inputs, batch_size=3, verbose=0)
    history = model.fit(inputs, values, batch_size=3, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    with_mse = model.evaluate(inputs, values, batch_size=6, verbose=0)
    if name == "latent_ode":  # a posterior sample in the objective: only finite
        assert np.isfinite(with_mse)
        return
    predicted = model.predict(inputs, batch_size=6, verbose=0)
    mse = float(np.mean((predicted - values) ** 2))
    plain = MODELS[name]()  # Keras keeps a compiled loss across compile() calls: a second model, same weights
    plain(inputs)
    plain.set_weights(model.get_weights())
    plain.compile(keras.optimizers.Adam(1e-2), jit_compile=False)
    objective = plain.evaluate(inputs, batch_size=6, verbose=0)
    # One batch of 6: the reported loss is exactly objective + mse (float32 round-off).
    np.testing.assert_allclose(with_mse, objective + mse, rtol=1e-5)
