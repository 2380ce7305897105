"""Latent ODE vs an RNN on irregularly sampled spirals (Chen et al. 2018, Table 2).

Protocol:

* Data: ``tfode.datasets.spirals_2d()`` with the paper's parameters (1000
  spirals, a = 0, b = 0.3, noise std 0.3, 1000 reference points on
  ``[0, 6π]``, windows of 100 points: ``t`` in ``[0, 1.87]``), split into
  training and test spirals (``--test-fraction``, default 20 %).
* For each ``n`` in ``--n-obs`` (30, 50, 100): ``tfode.datasets.subsample``
  keeps ``n`` random window points of each spiral (its own sorted times).
  Both models are fed the same points in the *mask form*: the shared
  100-point window grid ``times [100]`` with ``mask [B, 100, 2]`` = 1 exactly
  at the spiral's ``n`` observed times. For the latent ODE this is the same
  model input as the per-series ``times [B, n]`` (the encoder skips
  unobserved steps and its gaps run between observed points;
  ``tests/test_models_latent.py::test_series_in_a_batch_match_each_alone``
  checks it), but the tensor shapes do not depend on ``n``, so one traced
  training step serves every ``n`` (Keras' ``fit`` hands every series the
  shared grid, and each series is solved on it on its own, per sample).
* Latent ODE: ``tfode.models.LatentODE(obs_dim=2, latent_dim=4,
  encoder="rnn", encoder_units=25, field_hidden=(20, 20),
  decoder_hidden=(20,), obs_std=0.3)``: Chen's ``latent_ode.py`` sizes (his
  vector field ``4 -> 20 -> 20 -> 4`` with ELU, decoder ``4 -> 20 -> 2`` with
  ReLU; his recognition net is a plain RNN of width 25, here a Keras GRU of
  width 25 reading ``[x * mask, mask, gap to the next observation]``
  backwards). dopri5 at the model's default rtol 1e-3 / atol 1e-4 (Chen used
  torchdiffeq's 1e-7 / 1e-9), adjoint gradients, ELBO with the KL weight 1,
  Adam 1e-2.
* RNN baseline (plain Keras, ``build_rnn``): a GRU(25) encoder reads the
  observed points forwards as ``[x, Δt]`` (``Δt`` = time since the previous
  observation, since ``t = 0`` for the first one; unobserved grid steps are
  masked out), its last state starts a GRU(25) decoder that reads the query
  times as ``[t, Δt_query]`` and a Dense(20, relu) -> Dense(2) head emits the
  prediction at each query time. It is trained with the mean squared error at
  the observed points only (``sample_weight`` = mask), Adam 1e-2, the same
  batches and epochs as the latent ODE.

What is measured (test spirals, ``training=False``, the latent ODE predicts
from the posterior mean of ``z0``): *predictive RMSE* = root of the mean over
test spirals, all 100 window times and both coordinates of
``(prediction - noise-free trajectory)²`` (the same quantity as
``tfode.models.predictive_rmse(model, ..., targets=clean)``); it covers the
``100 - n`` unobserved times and the ``n`` observed ones, against the clean
curve, not the noisy observations. *Extrapolation RMSE*: the same at the next
100 reference times after the window (``t`` in ``(1.87, 3.77]``), against
``clean_full``; spirals whose window starts late enough that the reference
curve ends earlier contribute only the times it covers.

After training, the latent model of the last ``n`` is exported for serving
with ``tfode.serving.export`` (TF Serving layout ``<out>/latent_ode_spirals_export/<version>``,
signatures ``serving_default`` and ``predict_with_tolerance``; see
``savedmodels/README.md``), reloaded with ``tf.saved_model.load`` and checked
against the Keras model.

Run (from the repository root):
    PYTHONPATH=. python examples/latent_ode_spirals.py --quick      # smoke run, ~95 s of CPU
    PYTHONPATH=. python examples/latent_ode_spirals.py --epochs 200 --cosine  # reported run: ~47 min on 2 cores
    PYTHONPATH=. python examples/latent_ode_spirals.py --n-obs 30 --epochs 300

Measured numbers, commands and timings: ``examples/RESULTS_latent_ode_spirals.md``.

Writes to ``--out`` (default ``outputs/``): ``latent_ode_spirals_n{n}.png``
(fitted and extrapolated trajectories of a few test spirals; needs
matplotlib, skipped without it), ``latent_ode_spirals.md`` (the tables) and
``latent_ode_spirals_export/`` (the SavedModel).

References:
    Chen, Rubanova, Bettencourt & Duvenaud (2018). Neural Ordinary
    Differential Equations. NeurIPS. Table 2 and the authors'
    ``torchdiffeq/examples/latent_ode.py``.
"""

from __future__ import annotations

import argparse
import os
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

PAPER = {  # Chen et al. (2018), Table 2: predictive RMSE
    30: {"latent_ode": 0.1642, "rnn": 0.3937},
    50: {"latent_ode": 0.1502, "rnn": 0.3202},
    100: {"latent_ode": 0.1346, "rnn": 0.1813},
}
NUM_WINDOW = 100
NUM_EXTRAPOLATE = 100


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def make_data(args):
    """Spirals split into train/test; ``grid`` the window times plus the extrapolation times."""
    import tfode

    data = tfode.datasets.spirals_2d(num_spirals=args.num_spirals, noise_std=0.3, a=0.0, b=0.3, seed=args.seed)
    full_times = np.linspace(0.0, 6 * np.pi, data["clean_full"].shape[1]).astype("float32")
    grid = full_times[: NUM_WINDOW + NUM_EXTRAPOLATE]
    # Targets after the window (NaN where the reference spiral has ended).
    index = data["start"][:, None] + np.arange(NUM_WINDOW, NUM_WINDOW + NUM_EXTRAPOLATE)[None]
    valid = index < data["clean_full"].shape[1]
    extra = np.take_along_axis(data["clean_full"], np.minimum(index, data["clean_full"].shape[1] - 1)[..., None], 1)
    extra = np.where(valid[..., None], extra, np.nan).astype("float32")
    num_test = int(round(args.test_fraction * args.num_spirals))
    split = {}
    for name, rows in (("train", slice(num_test, None)), ("test", slice(None, num_test))):
        split[name] = {
            "values": data["values"][rows],
            "clean": data["clean"][rows],
            "extrapolation": extra[rows],
        }
    return data["times"], grid, split


def observation_mask(times, values, num_observed, seed):
    """``n`` random observed points per spiral (``tfode.datasets.subsample``) as a grid mask ``[B, 100, 2]``."""
    import tfode

    observed_times, observed_values = tfode.datasets.subsample(times, values, num_observed, seed=seed)
    rows = np.searchsorted(times, observed_times)  # exact: subsample picks entries of `times`
    mask = np.zeros(values.shape[:2], "float32")
    np.put_along_axis(mask, rows, 1.0, axis=1)
    if not np.array_equal(np.take_along_axis(values, rows[..., None], 1), observed_values):
        raise AssertionError("grid mask does not reproduce subsample's points")
    return np.repeat(mask[..., None], 2, axis=-1)


def observation_masks(times, split, num_observed, seed):
    """``(train mask, test mask)`` of ``num_observed`` points per spiral (the seeds of the protocol)."""
    train = observation_mask(times, split["train"]["values"], num_observed, seed=seed + num_observed)
    test = observation_mask(times, split["test"]["values"], num_observed, seed=seed + 1000 + num_observed)
    return train, test


def rnn_features(times, values, mask):
    """Encoder features ``[x * mask, Δt since the previous observation]`` and the step mask ``[B, T]`` bool."""
    observed = mask[..., 0] > 0
    last = np.where(observed, times[None, :], np.nan)
    # time of the latest observation strictly before each step (0 before the first: t = 0 anchors it)
    previous = np.fmax.accumulate(np.concatenate([np.zeros((len(values), 1)), last[:, :-1]], axis=1), axis=1)
    previous = np.nan_to_num(previous, nan=0.0)
    gaps = (times[None, :] - previous).astype("float32")
    return np.concatenate([values * mask, gaps[..., None]], axis=-1).astype("float32"), observed


def query_features(query_times, batch):
    """Decoder inputs ``[t, Δt]`` at the query times, ``[B, Q, 2]``."""
    gaps = np.diff(query_times, prepend=0.0)
    features = np.stack([query_times, gaps], axis=-1).astype("float32")
    return np.broadcast_to(features, (batch, *features.shape)).copy()


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


def learning_rate(args):
    """Adam's learning rate: constant ``--lr``, or with ``--cosine`` decayed to ``lr/10`` over the run."""
    import keras

    if not args.cosine:
        return args.lr
    train_spirals = args.num_spirals - int(round(args.num_spirals * args.test_fraction))
    steps = args.epochs * -(-train_spirals // args.batch_size)
    return keras.optimizers.schedules.CosineDecay(args.lr, decay_steps=steps, alpha=0.1)


def latent_ode_model(adjoint=True):
    """The latent ODE of this protocol (Chen's sizes), not compiled; ``savedmodels/regenerate.py`` uses it too."""
    import tfode

    return tfode.models.LatentODE(
        obs_dim=2,
        latent_dim=4,
        encoder="rnn",
        encoder_units=25,
        field_hidden=(20, 20),
        decoder_hidden=(20,),
        obs_std=0.3,
        adjoint=adjoint,
    )


def build_latent_ode(args):
    import keras

    model = latent_ode_model()
    model.compile(keras.optimizers.Adam(learning_rate(args)), jit_compile=False)
    return model


def build_rnn(args):
    """GRU encoder over ``[x, Δt]`` -> GRU decoder over query ``[t, Δt]`` -> Dense head (seq-to-seq)."""
    import keras

    observations = keras.Input((None, 3), name="observations")
    observed = keras.Input((None,), dtype="bool", name="observed")
    queries = keras.Input((None, 2), name="queries")
    state = keras.layers.GRU(25, name="encoder")(observations, mask=observed)
    hidden = keras.layers.GRU(25, return_sequences=True, name="decoder")(queries, initial_state=state)
    hidden = keras.layers.Dense(20, activation="relu")(hidden)
    outputs = keras.layers.Dense(2)(hidden)
    model = keras.Model({"observations": observations, "observed": observed, "queries": queries}, outputs)
    model.compile(keras.optimizers.Adam(learning_rate(args)), loss="mse", jit_compile=False)
    return model


def snapshot(model):
    """Initial weights and optimizer state (the optimizer built now, so its variables exist)."""
    model.optimizer.build(model.trainable_variables)
    return model.get_weights(), [v.numpy() for v in model.optimizer.variables]


def reset(model, initial):
    """Back to the initial weights and optimizer state (step 0, zero moments, the learning rate),
    keeping the traced train step: a new model or ``compile`` would trace it again."""
    weights, optimizer_state = initial
    model.set_weights(weights)
    for variable, value in zip(model.optimizer.variables, optimizer_state):
        variable.assign(value)


# ---------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------


def latent_dataset(times, values, mask, batch_size, seed):
    import tensorflow as tf

    shared_times = tf.constant(times)
    dataset = tf.data.Dataset.from_tensor_slices((values, mask)).shuffle(len(values), seed=seed)
    return dataset.batch(batch_size).map(lambda v, m: {"times": shared_times, "values": v, "mask": m})


def rnn_inputs(times, values, mask, query_times):
    features, observed = rnn_features(times, values, mask)
    return {"observations": features, "observed": observed, "queries": query_features(query_times, len(values))}


def rmse(predicted, target):
    error = np.asarray(predicted, np.float64) - target
    return float(np.sqrt(np.nanmean(error**2)))


def evaluate(predicted, test):
    return {
        "interp": rmse(predicted[:, :NUM_WINDOW], test["clean"]),
        "extrap": rmse(predicted[:, NUM_WINDOW:], test["extrapolation"]),
    }


def run_one(num_observed, times, grid, split, models, args):
    """Train both models on ``num_observed`` points per spiral; returns metrics, timings and test predictions."""
    import keras

    train, test = split["train"], split["test"]
    train_mask, test_mask = observation_masks(times, split, num_observed, args.seed)
    result = {"n": num_observed}

    latent, latent_init, rnn, rnn_init = models
    keras.utils.set_random_seed(args.seed)
    reset(latent, latent_init)
    start = time.perf_counter()
    history = latent.fit(
        latent_dataset(times, train["values"], train_mask, args.batch_size, args.seed),
        epochs=args.epochs,
        verbose=args.verbose,
    )
    result["latent_seconds"] = time.perf_counter() - start
    result["latent_loss"] = (history.history["loss"][0], history.history["loss"][-1])
    result["latent_nfe"] = float(latent.num_fn_evals_forward)
    test_inputs = {"times": times, "values": test["values"], "mask": test_mask, "query_times": grid}
    latent_pred = np.asarray(latent(test_inputs, training=False))
    result["latent"] = evaluate(latent_pred, test)

    keras.utils.set_random_seed(args.seed)
    reset(rnn, rnn_init)
    start = time.perf_counter()
    history = rnn.fit(
        rnn_inputs(times, train["values"], train_mask, times),
        train["values"],
        sample_weight=train_mask[..., 0],
        batch_size=args.batch_size,
        epochs=args.epochs,
        shuffle=True,
        verbose=args.verbose,
    )
    result["rnn_seconds"] = time.perf_counter() - start
    result["rnn_loss"] = (history.history["loss"][0], history.history["loss"][-1])
    rnn_pred = np.asarray(rnn(rnn_inputs(times, test["values"], test_mask, grid), training=False))
    result["rnn"] = evaluate(rnn_pred, test)
    return result, {"mask": test_mask, "latent": latent_pred, "rnn": rnn_pred}


def export_latent(model, times, test, mask, path):
    """``tfode.serving.export`` (TF Serving layout), reload, compare; returns a one-line report."""
    import tensorflow as tf

    import tfode

    batch = min(8, len(test["values"]))
    request = {
        "observed_times": tf.constant(np.tile(times, (batch, 1))),
        "observed_values": tf.constant(test["values"][:batch]),
        "observed_mask": tf.constant(mask[:batch]),
        "query_times": tf.constant(np.tile(np.linspace(0.0, 3.0, 31, dtype="float32"), (batch, 1))),
    }
    try:
        start = time.perf_counter()
        version_dir = tfode.serving.export(model, path)
        seconds = time.perf_counter() - start
        reloaded = tf.saved_model.load(version_dir)  # keep a reference: a temporary would free its variables
        served = reloaded.signatures["serving_default"](**request)
        expected = model.serving_outputs(*request.values())["mean"]
        difference = float(np.max(np.abs(served["mean"].numpy() - expected.numpy())))
    except Exception as error:  # report whatever fails, precisely
        traceback.print_exc()
        return f"tfode.serving.export FAILED: {type(error).__name__}: {error}"
    return (
        f"tfode.serving.export OK in {seconds:.1f} s -> {version_dir} (TF Serving layout; signatures "
        f"serving_default, predict_with_tolerance); reloaded with tf.saved_model.load: served vs Keras max "
        f"|diff| = {difference:.2e} on {batch} test spirals x 31 query times (NFE {int(served['num_fn_evals'])})"
    )


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def report(results, args, total_seconds, export_line):
    lines = [
        "| n obs | Latent ODE (ours) | RNN (ours) | Latent ODE (paper) | RNN (paper) "
        "| extrap. Latent ODE | extrap. RNN | train s (LODE / RNN) | NFE (test solve) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        paper = PAPER.get(r["n"], {})
        lines.append(
            f"| {r['n']} | {r['latent']['interp']:.4f} | {r['rnn']['interp']:.4f} "
            f"| {paper.get('latent_ode', float('nan')):.4f} | {paper.get('rnn', float('nan')):.4f} "
            f"| {r['latent']['extrap']:.4f} | {r['rnn']['extrap']:.4f} "
            f"| {r['latent_seconds']:.0f} / {r['rnn_seconds']:.0f} | {r['latent_nfe']:.0f} |"
        )
    num_test = int(round(args.test_fraction * args.num_spirals))
    settings = (
        f"spirals {args.num_spirals} (train {args.num_spirals - num_test}, test {num_test}), epochs {args.epochs}, "
        f"batch {args.batch_size}, Adam lr {args.lr}{' cosine-decayed to lr/10' if args.cosine else ''}, "
        f"seed {args.seed}; total {total_seconds:.0f} s"
    )
    losses = "; ".join(
        f"n={r['n']}: LODE -ELBO {r['latent_loss'][0]:.1f} -> {r['latent_loss'][1]:.1f}, "
        f"RNN MSE {r['rnn_loss'][0]:.3f} -> {r['rnn_loss'][1]:.3f}"
        for r in results
    )
    return "\n".join([*lines, "", settings, "training loss (first -> last epoch): " + losses, export_line])


def plot(num_observed, times, grid, split, predictions, path, count=4):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed: no plot"
    test = split["test"]
    fig, axes = plt.subplots(1, count, figsize=(4 * count, 4))
    for i, ax in enumerate(axes):
        observed = predictions["mask"][i, :, 0] > 0
        truth = np.concatenate([test["clean"][i], test["extrapolation"][i]])
        ax.plot(truth[:, 0], truth[:, 1], color="0.6", lw=3, label="true (window + after)")
        ax.scatter(*test["values"][i, observed].T, s=8, color="k", label=f"{num_observed} noisy observations")
        for name, color in (("latent", "C0"), ("rnn", "C3")):
            pred = predictions[name][i]
            label = "Latent ODE" if name == "latent" else "RNN"
            ax.plot(*pred[:NUM_WINDOW].T, color=color, label=f"{label} (window)")
            ax.plot(*pred[NUM_WINDOW - 1 :].T, color=color, ls="--", label=f"{label} (extrapolated)")
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(f"test spiral {i}")
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"Spirals, {num_observed} observations: fit on the window, dashed = extrapolation")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot: {path}"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 spirals, 10 epochs, batch 50, n = 30 only")
    parser.add_argument("--epochs", type=int, default=None, help="default 100 (10 with --quick)")
    parser.add_argument("--n-obs", default=None, help="comma-separated, default 30,50,100 (30 with --quick)")
    parser.add_argument("--num-spirals", type=int, default=None, help="default 1000 (300 with --quick)")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=None, help="default 100 (50 with --quick)")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--cosine", action="store_true", help="cosine-decay the learning rate to lr/10 over the run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs", help="directory of plots, tables and the export")
    parser.add_argument("--no-export", action="store_true")
    parser.add_argument("--verbose", type=int, default=0, help="Keras fit verbosity")
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = 10 if args.quick else 100
    if args.batch_size is None:
        args.batch_size = 50 if args.quick else 100
    if args.num_spirals is None:
        args.num_spirals = 300 if args.quick else 1000
    if args.n_obs is None:
        args.n_obs = "30" if args.quick else "30,50,100"
    args.n_obs = [int(n) for n in args.n_obs.split(",")]
    if any(not 1 <= n <= NUM_WINDOW for n in args.n_obs):
        parser.error(f"--n-obs values must be in [1, {NUM_WINDOW}], got {args.n_obs}")
    return args


def main(argv=None):
    args = parse_args(argv)
    import keras

    os.makedirs(args.out, exist_ok=True)
    begin = time.perf_counter()
    times, grid, split = make_data(args)
    keras.utils.set_random_seed(args.seed)
    latent, rnn = build_latent_ode(args), build_rnn(args)
    # Build both (weights exist) and keep their initial weights: every n starts from the same point.
    probe = split["train"]["values"][:2]
    latent({"times": times, "values": probe})
    rnn(rnn_inputs(times, probe, np.ones_like(probe), times))
    models = (latent, snapshot(latent), rnn, snapshot(rnn))

    results = []
    for num_observed in args.n_obs:
        result, predictions = run_one(num_observed, times, grid, split, models, args)
        results.append(result)
        print(
            f"n={num_observed}: RMSE Latent ODE {result['latent']['interp']:.4f} "
            f"(extrap {result['latent']['extrap']:.4f}, {result['latent_seconds']:.0f} s), "
            f"RNN {result['rnn']['interp']:.4f} (extrap {result['rnn']['extrap']:.4f}, {result['rnn_seconds']:.0f} s)",
            flush=True,
        )
        print(plot(num_observed, times, grid, split, predictions,
                   os.path.join(args.out, f"latent_ode_spirals_n{num_observed}.png")))  # fmt: skip

    export_line = "export skipped (--no-export)"
    if not args.no_export:
        export_line = export_latent(
            latent, times, split["test"], predictions["mask"], os.path.join(args.out, "latent_ode_spirals_export")
        )
    text = report(results, args, time.perf_counter() - begin, export_line)
    print(text)
    with open(os.path.join(args.out, "latent_ode_spirals.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
