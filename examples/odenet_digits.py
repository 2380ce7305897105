"""ODE-Net vs ResNet vs RK-Net on handwritten digits (Chen et al. 2018, Table 1).

Three classifiers share a small downsampling stem and a classification head
and differ only in the feature block between them:

* ResNet: ``k`` residual blocks ``x + conv(act(norm(conv(act(norm(x))))))``.
* ODE-Net: one ``tfode.ODELayer`` whose vector field ``TimeConv2D`` has the same
  norm-act-conv-norm-act-conv shape (plus a time channel): the weights of one
  block instead of ``k``; dopri5 at rtol=atol=1e-3, adjoint gradients.
* RK-Net: the same ODELayer solved with rk4 at step 0.25 and gradients by
  backpropagation through the solver (``adjoint=False``).

The script prints a markdown table (test error, trainable parameters, peak
training memory, forward/backward NFE of the last training batch, training
time), then sweeps the trained ODE-Net's tolerance at test time
(``layer.rtol = ...``: no retrace) and saves a plot of NFE and test error
against the tolerance. Peak training memory is the peak of TensorFlow's own
allocator (``tf.config.experimental.get_memory_info``, on the CPU or GPU)
during ``fit`` above what it held before: the activations kept for the
backward pass, optimizer slots and batches, not Python or graph memory (on
the CPU it misses some small allocations: compare models at one batch size).

Training runs without XLA (``jit_compile=False``; ``--jit`` to compare): on
2 CPU cores XLA took 188 s to compile the ODE-Net's training step and then
ran its epochs ~10x slower than the plain graph, which finished 3 epochs in 56 s.

Data: scikit-learn's bundled 8x8 digits (no download), or ``--mnist PATH`` to
a local ``mnist.npz`` (the ``keras.datasets.mnist`` file: ``x_train``,
``y_train``, ``x_test``, ``y_test``).

Run:
    python examples/odenet_digits.py            # digits: ~4.5 CPU-minutes (see RESULTS_odenet_digits.md)
    python examples/odenet_digits.py --quick    # smoke run: ~1.7 CPU-minutes, mostly tracing
    python examples/odenet_digits.py --mnist ~/data/mnist.npz --epochs 10

Needs tfode importable (e.g. ``PYTHONPATH=.`` from the repository root) and
scikit-learn and matplotlib (the ``examples`` extra).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

MODELS = ("resnet", "odenet", "rknet")
LABELS = {"resnet": "ResNet", "odenet": "ODE-Net", "rknet": "RK-Net"}
SWEEP_TOLERANCES = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def _last_nfe(history, suffix):
    """The last value of the ODELayer metric ending in ``suffix`` (named ``<layer>_nfe_*``)."""
    (key,) = [k for k in history if k.endswith("_" + suffix)]
    return float(history[key][-1])


def load_data(mnist_path, seed):
    """Returns ``(x_train, y_train, x_test, y_test)``, images ``[n, h, w, 1]`` float32 in [0, 1]."""
    if mnist_path:
        path = os.path.expanduser(mnist_path)
        if not os.path.isfile(path):
            raise SystemExit(
                f"--mnist: no file at {path!r}. Pass the path of a local mnist.npz (as saved by "
                "keras.datasets.mnist.load_data, with arrays x_train, y_train, x_test, y_test); "
                "this example never downloads. Omit --mnist to use scikit-learn's bundled 8x8 digits."
            )
        with np.load(path) as data:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(data.files)
            if missing:
                raise SystemExit(f"--mnist: {path!r} lacks arrays {sorted(missing)}; found {data.files}.")
            x_train, y_train, x_test, y_test = (data[k] for k in ("x_train", "y_train", "x_test", "y_test"))
        scale = 255.0
    else:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        x_train, x_test, y_train, y_test = train_test_split(
            digits.images, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
        )
        scale = 16.0
    prep = lambda x: (np.asarray(x, np.float32) / scale)[..., None]  # noqa: E731
    return prep(x_train), np.asarray(y_train, np.int32), prep(x_test), np.asarray(y_test, np.int32)


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


def build_model(kind, image_shape, width, blocks, groups, mnist):
    import keras

    import tfode

    def norm():
        return keras.layers.GroupNormalization(groups=groups)

    inputs = keras.Input(image_shape)
    # Stem: 3x3 conv, then stride-2 downsampling (8x8 -> 4x4 digits; 28 -> 14 -> 7 MNIST).
    h = keras.layers.Conv2D(width, 3, padding="same")(inputs)
    for _ in range(2 if mnist else 1):
        h = keras.layers.Activation("relu")(norm()(h))
        h = keras.layers.Conv2D(width, 4, strides=2, padding="same")(h)
    if kind == "resnet":
        for _ in range(blocks):
            r = keras.layers.Activation("relu")(norm()(h))
            r = keras.layers.Conv2D(width, 3, padding="same")(r)
            r = keras.layers.Activation("relu")(norm()(r))
            r = keras.layers.Conv2D(width, 3, padding="same")(r)
            h = keras.layers.Add()([h, r])
    else:
        field = tfode.layers.TimeConv2D(filters=(width,), kernel_size=3, groups=groups)
        if kind == "odenet":
            ode = tfode.ODELayer(field, t1=1.0, adjoint=True, rtol=1e-3, atol=1e-3, name="ode")
        else:
            # 4 rk4 steps. max_num_steps: under XLA, backpropagation through the
            # solver sizes its buffers by it (default 10000: ~34 GiB here).
            options = {"step_size": 0.25, "max_num_steps": 8}
            ode = tfode.ODELayer(field, t1=1.0, method="rk4", options=options, adjoint=False, name="ode")
        h = ode(h)
    h = keras.layers.Activation("relu")(norm()(h))
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(10)(h)
    return keras.Model(inputs, outputs, name=kind)


# ---------------------------------------------------------------------------
# Training and measuring one model
# ---------------------------------------------------------------------------


def train_and_measure(kind, data, args):
    """Trains one model; returns its metrics (and the ODE-Net's tolerance sweep)."""
    import keras
    import tensorflow as tf

    x_train, y_train, x_test, y_test = data
    keras.utils.set_random_seed(args.seed)
    model = build_model(kind, x_train.shape[1:], args.width, args.blocks, args.groups, bool(args.mnist))
    steps = args.epochs * -(-len(x_train) // args.batch_size)
    model.compile(
        keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(args.lr, steps, alpha=0.05)),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=args.jit,
    )
    # Peak bytes held by TensorFlow's allocator during fit (activations kept for
    # the backward pass, optimizer slots, batches) above what was held before.
    device = "GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0"
    tf.config.experimental.reset_memory_stats(device)
    held_before = tf.config.experimental.get_memory_info(device)["current"]

    class EpochTimer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    timer = EpochTimer()
    start = time.perf_counter()
    history = model.fit(
        x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=args.verbose, callbacks=[timer]
    )
    train_s = time.perf_counter() - start
    peak_mib = (tf.config.experimental.get_memory_info(device)["peak"] - held_before) / 2**20

    logits = model.predict(x_test, batch_size=args.eval_batch_size, verbose=0)
    result = {
        "model": kind,
        "test_error": float(np.mean(np.argmax(logits, -1) != y_test)),
        "params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "peak_mib": peak_mib,
        "device": device,
        "train_s": train_s,
        "first_epoch_s": timer.times[0],
        "later_epoch_s": float(np.mean(timer.times[1:])) if len(timer.times) > 1 else float("nan"),
        "final_loss": float(history.history["loss"][-1]),
        "nfe_forward": _last_nfe(history.history, "nfe_forward") if kind != "resnet" else None,
        "nfe_backward": _last_nfe(history.history, "nfe_backward") if kind == "odenet" else None,
    }
    if kind == "odenet":
        result["sweep"] = tolerance_sweep(model, x_test, y_test, args.eval_batch_size)
    return result


def tolerance_sweep(model, x_test, y_test, batch_size):
    """Test error, NFE and time per batch of the trained ODE-Net at each tolerance; one predict graph."""
    layer = model.get_layer("ode")
    num_batches = -(-len(x_test) // batch_size)
    model.predict(x_test[:batch_size], batch_size=batch_size, verbose=0)  # trace once
    predict_function = model.predict_function
    rows = []
    for tol in SWEEP_TOLERANCES:
        layer.rtol = tol
        layer.atol = tol
        elapsed = []
        for _ in range(3):  # best of 3: the machine may be shared
            start = time.perf_counter()
            logits = model.predict(x_test, batch_size=batch_size, verbose=0)
            elapsed.append(time.perf_counter() - start)
        rows.append(
            {
                "tol": tol,
                "test_error": float(np.mean(np.argmax(logits, -1) != y_test)),
                "nfe": float(layer.num_fn_evals_forward),  # the last batch's solve
                "ms_per_batch": 1e3 * min(elapsed) / num_batches,
                "retraced": model.predict_function is not predict_function,
            }
        )
    layer.rtol = layer.atol = 1e-3
    return rows


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


def fmt_seconds(value):
    return "—" if np.isnan(value) else f"{value:.2f}"


def fmt_nfe(value):
    return "—" if value is None else f"{value:.0f}"


def report(args, results, elapsed):
    data = "MNIST" if args.mnist else "sklearn digits 8x8"
    lines = [
        f"## {data}: {args.epochs} epochs, width {args.width}, {args.blocks} ResNet blocks, "
        f"batch {args.batch_size}, Adam lr {args.lr:g} (cosine decay), jit_compile={args.jit}",
        "",
        "| model | test error | params | peak train memory (MiB) | NFE fwd | NFE bwd | train time (s) "
        "| 1st epoch (s) | later epochs (s/epoch) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in results:
        r = results[kind]
        nfe_f = fmt_nfe(r.get("nfe_forward")) if kind != "resnet" else "—"
        nfe_b = fmt_nfe(r.get("nfe_backward")) if kind == "odenet" else "— (backprop)"
        lines.append(
            f"| {LABELS[kind]} | {100 * r['test_error']:.2f}% | {r['params']:,} | {r['peak_mib']:.1f} | "
            f"{nfe_f} | {nfe_b} | {r['train_s']:.1f} | {r['first_epoch_s']:.1f} | {fmt_seconds(r['later_epoch_s'])} |"
        )
    lines += [
        "",
        f"Peak train memory: TensorFlow allocator peak on {next(iter(results.values()))['device']} during `fit` "
        "above what it held before (activations, optimizer slots, batches). NFE: the last training batch's "
        "solve. The first epoch includes tracing" + (" and XLA compilation." if args.jit else "."),
    ]
    if "odenet" not in results:
        return "\n".join([*lines, "", f"Total wall time: {elapsed:.0f} s"])
    lines += [
        "",
        "### Trained ODE-Net at test time (`layer.rtol = layer.atol = tol`, same predict graph)",
        "",
        "| rtol = atol | test error | NFE | ms / batch | retraced |",
        "|---:|---:|---:|---:|---|",
    ]
    for row in results["odenet"]["sweep"]:
        lines.append(
            f"| {row['tol']:.0e} | {100 * row['test_error']:.2f}% | {row['nfe']:.0f} | "
            f"{row['ms_per_batch']:.1f} | {'yes' if row['retraced'] else 'no'} |"
        )
    lines += ["", f"Total wall time: {elapsed:.0f} s"]
    return "\n".join(lines)


def plot_sweep(sweep, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tols = [r["tol"] for r in sweep]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.semilogx(tols, [r["nfe"] for r in sweep], "o-", color="C0")
    ax.set_xlabel("rtol = atol")
    ax.set_ylabel("forward NFE", color="C0")
    ax.invert_xaxis()
    err = ax.twinx()
    err.semilogx(tols, [100 * r["test_error"] for r in sweep], "s--", color="C1")
    err.set_ylabel("test error (%)", color="C1")
    ax.set_title("Trained ODE-Net: cost vs test-time tolerance")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", metavar="PATH", help="a local mnist.npz instead of sklearn's 8x8 digits")
    parser.add_argument("--epochs", type=int, default=None, help="default 20, 2 with --quick")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 epochs, width 16, 3 ResNet blocks")
    parser.add_argument("--width", type=int, default=None, help="channels of the feature block (default 32)")
    parser.add_argument("--blocks", type=int, default=6, help="residual blocks of the ResNet")
    parser.add_argument("--groups", type=int, default=8, help="GroupNormalization groups")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jit", action="store_true", help="compile training steps with XLA")
    parser.add_argument("--out", default="outputs", help="directory of the plot and results.md")
    parser.add_argument("--verbose", type=int, default=0, help="Keras fit verbosity")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = 2 if args.quick else 20
    if args.width is None:
        args.width = 16 if args.quick else 32
    if args.quick:
        args.blocks = min(args.blocks, 3)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown or not args.models:
        parser.error(f"--models: unknown {unknown}; choose from {','.join(MODELS)}.")
    if args.width % args.groups:
        parser.error(f"--groups ({args.groups}) must divide --width ({args.width}).")
    return args


def main(argv=None):
    args = parse_args(argv)
    data = load_data(args.mnist, args.seed)  # fails fast on a bad --mnist, before importing TensorFlow
    import tensorflow as tf

    print(
        f"TensorFlow {tf.__version__}, {'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'}; "
        f"train {data[0].shape}, test {data[2].shape}",
        flush=True,
    )
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    results = {}
    for kind in args.models:
        print(f"training {LABELS[kind]} ...", flush=True)
        results[kind] = train_and_measure(kind, data, args)
        r = results[kind]
        print(
            f"  test error {100 * r['test_error']:.2f}%, {r['train_s']:.1f} s "
            f"(first epoch {r['first_epoch_s']:.1f} s, then {fmt_seconds(r['later_epoch_s'])} s/epoch)",
            flush=True,
        )
    elapsed = time.perf_counter() - start
    text = report(args, results, elapsed)
    print()
    print(text)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text + "\n")
    if "odenet" in results:
        plot_path = os.path.join(args.out, "odenet_nfe_vs_tolerance.png")
        plot_sweep(results["odenet"]["sweep"], plot_path)
        print(f"\nSaved {plot_path} and {os.path.join(args.out, 'results.md')}")
    if "odenet" in results and "resnet" in results:
        odenet, resnet = results["odenet"], results["resnet"]
        print(
            f"ODE-Net vs ResNet: {100 * (odenet['test_error'] - resnet['test_error']):+.2f} pp test error "
            f"with {odenet['params'] / resnet['params']:.0%} of the parameters."
        )


if __name__ == "__main__":
    main()
