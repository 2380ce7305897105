#!/usr/bin/env python
"""Train three small tfode models and export them for TF Serving.

Run from the repository root (about 1-2 CPU-minutes)::

    PYTHONPATH=. python savedmodels/regenerate.py

Writes, with ``tfode.serving.export`` (TF Serving layout ``<model>/<version>/``):

* ``savedmodels/latent_ode_spiral/1``: a latent ODE (GRU encoder) trained for a
  few epochs on ``tfode.datasets.spirals_2d(num_spirals=100)``: it reads 15
  irregular points from the first half of a spiral and predicts it at any
  query time (interpolation and extrapolation).
* ``savedmodels/odenet/1``: an ODE-Net classifier (``Dense -> ODELayer ->
  Dense``) on synthetic data: 4 Gaussian classes in 8 dimensions (no
  scikit-learn needed).
* ``savedmodels/cnf_8gaussians/1``: a continuous normalizing flow
  (``tfode.models.ContinuousFlow``, exact trace) on ``toy_2d("8gaussians")``.

and next to each version directory an ``example_request.json``: a TF Serving
REST ``:predict`` body (columnar ``"inputs"`` format) for ``serving_default``.

Existing version-1 directories are replaced (``--version`` picks another).

Each model is trained with its default settings (adjoint gradients) and then
copied into an identical model built with ``adjoint=False`` before export:
the forward computation the signatures serve is the same, but
``tf.saved_model.save`` then stores no adjoint gradient functions (for the
flow: 5.1 MB and ~140 s of export time with them, 2.3 MB and ~25 s without,
on the loaded 2-core machine). Serving needs no gradients.

Models are tiny and trained briefly: they demonstrate the serving path, not
accuracy. Seeds are fixed; TF's CPU kernels may still differ in the last bits.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tfode from this checkout

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfode  # noqa: E402

OBSERVED = 50  # window of each spiral the latent ODE reads (of 100 points)
OBSERVED_POINTS = 15  # random points kept per series in that window
ODENET_DIM, ODENET_CLASSES = 8, 4


def _json(array):
    """Nested lists of 4-decimal floats (float32 values printed as float64 would show noise digits)."""
    return np.asarray(array, np.float64).round(4).tolist()


# ---------------------------------------------------------------------------
# Latent ODE on spirals
# ---------------------------------------------------------------------------


def make_latent_ode(adjoint=True):
    return tfode.models.LatentODE(
        obs_dim=2,
        latent_dim=4,
        encoder="rnn",
        encoder_units=16,
        field_hidden=(16,),
        decoder_hidden=(16,),
        obs_std=0.3,
        rtol=1e-3,
        atol=1e-4,
        adjoint=adjoint,
    )


def train_latent_ode(epochs):
    data = tfode.datasets.spirals_2d(num_spirals=100, seed=0)
    # Each series keeps OBSERVED_POINTS random points of its first OBSERVED: irregular, per-series times.
    times, values = tfode.datasets.subsample(
        data["times"][:OBSERVED], data["values"][:, :OBSERVED], OBSERVED_POINTS, seed=0
    )
    model = make_latent_ode()
    model.compile(keras.optimizers.Adam(1e-2), jit_compile=False)
    model.fit({"times": times, "values": values}, batch_size=50, epochs=epochs, verbose=0)
    query = data["times"]  # the observed window and as far again
    mask = np.ones_like(values)
    rmse = tfode.models.predictive_rmse(model, times, values, mask, query, data["clean"])
    copy = make_latent_ode(adjoint=False)
    copy({"times": times[:2], "values": values[:2], "mask": mask[:2], "query_times": query})
    copy.set_weights(model.get_weights())
    request = {
        "signature_name": "serving_default",
        "inputs": {
            "observed_times": _json(times[:2]),
            "observed_values": _json(values[:2]),
            "observed_mask": _json(mask[:2]),
            "query_times": _json(np.tile(query[::10], (2, 1))),
        },
    }
    return copy, request, f"train RMSE vs clean spirals (observed + extrapolated): {rmse:.3f}"


# ---------------------------------------------------------------------------
# ODE-Net classifier on synthetic data
# ---------------------------------------------------------------------------


def synthetic_classes(num_samples, seed=0):
    """4 Gaussian classes in 8-D: centres on a scaled simplex, unit noise."""
    rng = np.random.default_rng(seed)
    centres = 2.0 * np.eye(ODENET_CLASSES, ODENET_DIM)
    labels = rng.integers(0, ODENET_CLASSES, num_samples)
    x = centres[labels] + rng.normal(size=(num_samples, ODENET_DIM))
    return x.astype(np.float32), labels.astype(np.int32)


def make_odenet(adjoint=True):
    inputs = keras.Input((ODENET_DIM,), name="inputs")
    h = keras.layers.Dense(16, activation="tanh")(inputs)
    h = tfode.ODELayer(tfode.layers.TimeMLP((32,)), t1=1.0, rtol=1e-3, atol=1e-3, adjoint=adjoint)(h)
    outputs = keras.layers.Dense(ODENET_CLASSES)(h)
    return keras.Model(inputs, outputs, name="odenet")


def train_odenet(epochs):
    x, y = synthetic_classes(2048)
    x_test, y_test = synthetic_classes(512, seed=1)
    model = make_odenet()
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=False,
    )
    model.fit(x, y, batch_size=128, epochs=epochs, verbose=0)
    accuracy = float(np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test))
    copy = make_odenet(adjoint=False)
    copy.set_weights(model.get_weights())
    request = {"signature_name": "serving_default", "inputs": {"inputs": _json(x_test[:3])}}
    return copy, request, f"test accuracy {accuracy:.3f} (chance 0.25)"


# ---------------------------------------------------------------------------
# Continuous normalizing flow on 8 Gaussians
# ---------------------------------------------------------------------------


def make_cnf(adjoint=True):
    return tfode.models.ContinuousFlow(
        tfode.layers.TimeMLP((32, 32), zero_init_output=True), dim=2, rtol=1e-3, atol=1e-3, adjoint=adjoint
    )


def train_cnf(steps):
    x = tfode.datasets.toy_2d("8gaussians", 256 * steps, seed=0)
    model = make_cnf()
    model.compile(keras.optimizers.Adam(5e-3), jit_compile=False)
    model.fit(x, batch_size=256, epochs=1, verbose=0)
    held_out = tfode.datasets.toy_2d("8gaussians", 1024, seed=1)
    copy = make_cnf(adjoint=False)
    copy(held_out[:2])
    copy.set_weights(model.get_weights())
    log_prob = float(np.mean(copy(held_out, training=False)))
    untrained = float(np.mean(copy.base.log_prob(held_out)))  # zero-initialised output: the flow starts as identity
    request = {"signature_name": "serving_default", "inputs": {"x": _json(held_out[:4])}}
    return copy, request, f"held-out mean log p(x) {log_prob:.3f} (untrained flow: {untrained:.3f})"


MODELS = {
    "latent_ode_spiral": train_latent_ode,
    "odenet": train_odenet,
    "cnf_8gaussians": train_cnf,
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    parser.add_argument("--version", type=int, default=1, help="version directory to (re)write (default 1)")
    parser.add_argument("--out", default=HERE, help="base directory (default: this folder)")
    parser.add_argument("--quick", action="store_true", help="one epoch / a few steps each (smoke run)")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    # Epochs (latent ODE, ODE-Net) or steps (CNF). Tracing the training step costs most of the
    # time on a CPU (15-45 s per model); the steps themselves take milliseconds.
    budget = {"latent_ode_spiral": 1 if args.quick else 20, "odenet": 1 if args.quick else 10,
              "cnf_8gaussians": 3 if args.quick else 200}  # fmt: skip
    total = time.perf_counter()
    for name in args.models.split(","):
        if name not in MODELS:
            parser.error(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
        start = time.perf_counter()
        model, request, quality = MODELS[name](budget[name])
        trained = time.perf_counter()
        base = os.path.join(args.out, name)
        target = os.path.join(base, str(args.version))
        if os.path.isdir(target):
            shutil.rmtree(target)
        path = tfode.serving.export(model, base, version=args.version)
        with open(os.path.join(base, "example_request.json"), "w") as fh:
            json.dump(request, fh, indent=1)
            fh.write("\n")
        size = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)
        print(
            f"{name}: {quality}; trained in {trained - start:.0f} s, exported in "
            f"{time.perf_counter() - trained:.0f} s to {os.path.relpath(path)} ({size / 1e6:.2f} MB)",
            flush=True,
        )
    print(f"total {time.perf_counter() - total:.0f} s (TF {tf.__version__}, tfode {tfode.__version__})")


if __name__ == "__main__":
    main()
