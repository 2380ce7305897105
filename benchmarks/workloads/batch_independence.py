"""Batch independence of the committed exports: one input alone vs inside a batch of others.

For each SavedModel in ``--models`` (default: ``odenet``, ``latent_ode_spiral``,
``cnf_8gaussians`` under ``savedmodels/``, latest version) and each requested
tolerance rtol = atol in ``--tols`` (1e-3, 1e-6), ``--draws`` (100) times:
draw a batch of ``--batch`` (64) random inputs, call the export's
``predict_with_tolerance`` on the whole batch and on one of its rows alone (a
random position), and record the max abs difference between the row's output
alone and its output inside the batch. The relative difference divides by
the output scale, the row's max abs output alone (logits for ``odenet``,
mean prediction for ``latent_ode_spiral``, ``|log p(x)|`` for
``cnf_8gaussians``). A per-sample export (``tfode.serving.export(...,
per_sample=True)``, the default) steps each input with its own step sizes, so
the difference should be round-off only; a joint export shares one step size
sequence across the batch, so a row's output depends on its neighbours up to
the solver tolerance.

A third call separates the two ways a row can depend on the batch: the row
inside a batch of ``--batch`` copies of itself. Equal to the row inside the
random batch (column "vs copies"), the output does not depend on what the
other inputs are, only on the batch size (TensorFlow's CPU kernels, e.g.
MatMul, round differently for 1 and for 64 rows; the adaptive step control can
amplify such last-bit differences up to the solver tolerance).

Inputs (float32):

* ``odenet`` ``inputs`` ``[B, 8]``: the training distribution of
  ``savedmodels/regenerate.py`` (``synthetic_classes``: standard normal);
* ``latent_ode_spiral``: the serving benchmark's requests
  (``benchmarks/workloads/serving.py``: ``tfode.datasets.spirals_2d``, 15
  irregular observations from the first half of the window, per-series
  ``query_times`` ``[B, 20]`` over the whole window);
* ``cnf_8gaussians`` ``x`` ``[B, 2]``: ``tfode.datasets.toy_2d("8gaussians")``.

Runs in a subprocess pinned to one core like the other benchmarks (``--no-pin``:
in this process with TensorFlow's default thread pools).

Usage:
    python -m benchmarks.run batch_independence [--draws 100] [--tols 1e-3,1e-6] [--batch 64]
        [--models odenet,latent_ode_spiral,cnf_8gaussians] [--savedmodels DIR] [--json out.json]
"""

from __future__ import annotations

import os
import sys
import time

from benchmarks._common import REPO, loadavg, pin_tensorflow, tfode_revision
from benchmarks.workloads.serving import latest_version, make_requests

MODELS = ("odenet", "latent_ode_spiral", "cnf_8gaussians")
OUTPUT = {"odenet": "outputs", "latent_ode_spiral": "mean", "cnf_8gaussians": "log_prob"}
TARGET_MEDIAN, TARGET_MAX = 1e-6, 1e-5


def draw_batch(name, batch, seed):
    """``{input name: array}`` of ``batch`` random inputs for model ``name`` (numpy float32)."""
    import numpy as np

    import tfode

    if name == "odenet":
        sys.path.insert(0, os.path.join(REPO, "savedmodels"))
        from regenerate import synthetic_classes

        return {"inputs": synthetic_classes(batch, seed=seed)[0]}
    if name == "cnf_8gaussians":
        return {"x": np.asarray(tfode.datasets.toy_2d("8gaussians", batch, seed=seed), np.float32)}
    if name == "latent_ode_spiral":
        return make_requests(batch, seed=seed)[0]
    raise ValueError(name)


def measure(tf, signature, name, args, tol):
    import numpy as np

    rng = np.random.default_rng(12345)
    tols = {"rtol": tf.constant(tol, tf.float32), "atol": tf.constant(tol, tf.float32)}
    key = OUTPUT[name]
    abs_diff, rel_diff, scale, nfe_alone, nfe_batch, copies_diff = [], [], [], [], [], []
    for draw in range(args.draws):
        inputs = draw_batch(name, args.batch, seed=10_000 + draw)
        row = int(rng.integers(0, args.batch))
        batched = signature(**{k: tf.constant(v) for k, v in inputs.items()}, **tols)
        alone = signature(**{k: tf.constant(v[row : row + 1]) for k, v in inputs.items()}, **tols)
        copies = signature(**{k: tf.constant(np.repeat(v[row : row + 1], args.batch, 0)) for k, v in inputs.items()},
                           **tols)  # fmt: skip
        inside, own = batched[key].numpy()[row], alone[key].numpy()[0]
        copies_diff.append(float(np.max(np.abs(inside - copies[key].numpy()[0]))))
        diff = float(np.max(np.abs(inside - own)))
        size = float(np.max(np.abs(own)))
        abs_diff.append(diff)
        scale.append(size)
        rel_diff.append(diff / size if size > 0 else diff)
        if "num_fn_evals" in batched:
            nfe_batch.append(int(batched["num_fn_evals"]))
            nfe_alone.append(int(alone["num_fn_evals"]))
    return {"abs": abs_diff, "rel": rel_diff, "scale": scale, "nfe_alone": nfe_alone, "nfe_batch": nfe_batch,
            "copies": copies_diff}  # fmt: skip


def worker(args, frameworks=()):
    if not args.no_pin:
        tf = pin_tensorflow()
    else:
        import tensorflow as tf

    result = {"tensorflow": tf.__version__, "exports": {}, "models": {}}
    for name in args.models:
        export_dir = latest_version(os.path.join(args.savedmodels, name))
        signature = tf.saved_model.load(export_dir).signatures["predict_with_tolerance"]
        result["exports"][name] = os.path.relpath(export_dir, REPO)
        result["models"][name] = {}
        for tol in args.tols:
            t0 = time.perf_counter()
            result["models"][name][repr(tol)] = measure(tf, signature, name, args, tol)
            print(f"[batch_independence] {name} tol {tol:g}: {time.perf_counter() - t0:.0f} s", file=sys.stderr,
                  flush=True)  # fmt: skip
    return result


def tables(result, args):
    import numpy as np

    lines = [
        f"TF {result['tensorflow']}; exports: " + ", ".join(f"`{p}`" for p in result["exports"].values()) + "; "
        f"`predict_with_tolerance`, rtol = atol; {args.draws} draws of one input alone vs inside a batch of "
        f"{args.batch} (itself and {args.batch - 1} random others). Relative = max abs difference / the input's "
        f"max abs output alone. Target (issue 13): median <= {TARGET_MEDIAN:g}, max <= {TARGET_MAX:g} (relative).",
        "",
        "| model | rtol = atol | output scale (median) | abs diff median | abs diff max | rel diff median "
        "| rel diff max | draws rel > 1e-5 | exactly equal | vs copies (max abs) | NFE alone / in batch (median) "
        "| target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, by_tol in result["models"].items():
        for tol, m in by_tol.items():
            rel, ab = np.asarray(m["rel"]), np.asarray(m["abs"])
            nfe = (f"{np.median(m['nfe_alone']):.0f} / {np.median(m['nfe_batch']):.0f}" if m["nfe_alone"] else "-")
            equal = f"{int(np.sum(ab == 0))}/{len(ab)}"
            over = f"{int(np.sum(rel > TARGET_MAX))}/{len(rel)}"
            copies = f"{max(m['copies']):.1e}" if m.get("copies") else "-"
            met = np.median(rel) <= TARGET_MEDIAN and rel.max() <= TARGET_MAX
            lines.append(f"| {name} | {float(tol):g} | {np.median(m['scale']):.3g} | {np.median(ab):.1e} "
                         f"| {ab.max():.1e} | {np.median(rel):.1e} | {rel.max():.1e} | {over} | {equal} "
                         f"| {copies} | {nfe} | {'met' if met else 'missed'} |")  # fmt: skip
    return "\n".join(lines)


WORKERS = {"tf": (worker, "tf")}


def add_args(p):
    p.add_argument("--savedmodels", default=os.path.join(REPO, "savedmodels"), help="base of the exports")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--draws", type=int, default=100)
    p.add_argument("--batch", type=int, default=64, help="batch size the input is measured inside")
    p.add_argument("--tols", default="1e-3,1e-6")


def report(args, ctx):
    """Run the measurement in a pinned worker (in this process with ``--no-pin``)."""
    args.models = [m for m in str(args.models).split(",") if m]
    args.tols = [float(t) for t in str(args.tols).split(",")]
    args.savedmodels = os.path.abspath(args.savedmodels)
    if set(args.models) - set(MODELS):
        print(f"--models: choose from {','.join(MODELS)}", file=sys.stderr)
        return None
    load_before = loadavg()
    if args.no_pin and not args.from_dir:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        result = worker(args)
    else:
        result = ctx.run("tf")
    if "error" in result:
        print(result["error"], file=sys.stderr)
        return None
    print(tables(result, args))
    pinning = "one core (taskset -c 0), one TF thread per pool" if not args.no_pin else "not pinned"
    print(f"\ntfode {tfode_revision()}; {pinning}; load average before/after: "
          f"{load_before[0]:.1f} / {loadavg()[0]:.1f}")  # fmt: skip
    return result
