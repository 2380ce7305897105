"""Serving benchmark: latency and throughput of the exported latent ODE.

The model is the SavedModel ``savedmodels/latent_ode_spiral/<latest version>``
(``savedmodels/regenerate.py``), loaded with ``tf.saved_model.load`` and called
through its signatures, as a Python serving process would. tfode itself is
imported only to draw the request data (``tfode.datasets.spirals_2d``).

Requests: ``B`` spirals per request, each with 15 irregular observations in
the first half of its window (``observed_*`` ``[B, 15(, 2)]``) and 20 query
times over the whole window (``query_times`` ``[B, 20]``: interpolation and
extrapolation; per-series times, so the latent solve runs on the union grid
of ``B * 20`` times). A pool of 8 different requests per batch size is cycled.

Two sweeps, one client sending requests back to back:

* batch size ``B`` in ``--batches`` (1, 8, 64, 512) through ``serving_default``,
  i.e. the trained tolerance (rtol=1e-3, atol=1e-4);
* requested tolerance rtol = atol in ``--tols`` (1e-1 ... 1e-6) through
  ``predict_with_tolerance`` at ``B = --tol-batch`` (64), with the error of
  the mean prediction against the same requests at rtol = atol = 1e-7.

Columns: wall-clock latency p50 / p99 over ``--requests`` timed requests
(after ``--warmup``), median process CPU time per request (excludes time the
process waited for a core: the steadier number on a shared machine),
requests/s and series/s (``B`` x requests/s) from the total wall time of the
timed requests, series per CPU-second (``B`` / median CPU time: the
throughput of one dedicated core), and the NFE the signature returns (mean
over the requests).

Like the other benchmarks, the measurement runs in a subprocess pinned to one
core (``taskset -c 0``) with every thread pool at one thread
(``benchmarks/_common.py``); ``--no-pin`` runs it in this process with
TensorFlow's default thread pools instead (use it on a GPU machine).

Usage:
    python -m benchmarks.run serving [--quick] [--batches 1,8,64,512]
        [--tols 1e-1,1e-2,1e-3,1e-4,1e-5,1e-6] [--requests 60] [--json out.json]
        [--model-base savedmodels/latent_ode_spiral] [--no-pin]
"""

from __future__ import annotations

import os
import re
import sys
import time

from benchmarks._common import REPO, loadavg, pin_tensorflow, tfode_revision

OBSERVED_POINTS, QUERY_POINTS, POOL = 15, 20, 8
REFERENCE_TOL = 1e-7


def latest_version(base):
    versions = [int(name) for name in os.listdir(base) if re.fullmatch(r"\d+", name)]
    if not versions:
        raise SystemExit(f"no version directory under {base}: run savedmodels/regenerate.py")
    return os.path.join(base, str(max(versions)))


# --------------------------------------------------------------------------- #
# Worker
# --------------------------------------------------------------------------- #


def make_requests(batch, seed):
    """``POOL`` request dicts of ``batch`` spirals each (numpy float32)."""
    import numpy as np

    import tfode

    data = tfode.datasets.spirals_2d(num_spirals=batch * POOL, seed=seed)
    window = data["times"]
    times, values = tfode.datasets.subsample(window[: len(window) // 2], data["values"][:, : len(window) // 2],
                                             OBSERVED_POINTS, seed=seed)  # fmt: skip
    rng = np.random.default_rng(seed)
    query = np.sort(rng.uniform(0.0, float(window[-1]), (batch * POOL, QUERY_POINTS)), axis=1).astype(np.float32)
    requests = []
    for i in range(POOL):
        rows = slice(i * batch, (i + 1) * batch)
        requests.append({
            "observed_times": times[rows],
            "observed_values": values[rows],
            "observed_mask": np.ones_like(values[rows]),
            "query_times": query[rows],
        })  # fmt: skip
    return requests


def time_requests(call, requests, num_timed, warmup):
    """Warm up, then time ``num_timed`` calls cycling over ``requests``.

    Returns ``{"wall_ms": [...], "cpu_ms": [...], "total_s": float, "nfe": [...]}``.
    """
    for i in range(warmup):
        call(requests[i % len(requests)])
    wall, cpu, nfe = [], [], []
    start = time.perf_counter()
    for i in range(num_timed):
        w0, c0 = time.perf_counter(), time.process_time()
        out = call(requests[i % len(requests)])
        c1, w1 = time.process_time(), time.perf_counter()
        wall.append((w1 - w0) * 1e3)
        cpu.append((c1 - c0) * 1e3)
        nfe.append(int(out["num_fn_evals"]))
    return {"wall_ms": wall, "cpu_ms": cpu, "total_s": time.perf_counter() - start, "nfe": nfe}


def worker(args, frameworks=()):
    if not args.no_pin:
        tf = pin_tensorflow()
    else:
        import tensorflow as tf
    import numpy as np

    export_dir = latest_version(args.model_base)
    t0 = time.perf_counter()
    model = tf.saved_model.load(export_dir)
    load_s = time.perf_counter() - t0
    serving_default = model.signatures["serving_default"]
    with_tolerance = model.signatures["predict_with_tolerance"]

    def call_default(request):
        return serving_default(**{k: tf.constant(v) for k, v in request.items()})

    def call_tol(tol):
        rtol = atol = tf.constant(tol, tf.float32)

        def call(request):
            return with_tolerance(**{k: tf.constant(v) for k, v in request.items()}, rtol=rtol, atol=atol)

        return call

    t0 = time.perf_counter()
    call_default(make_requests(1, seed=99)[0])
    first_call_s = time.perf_counter() - t0

    result = {
        "export": os.path.relpath(export_dir, REPO),
        "tensorflow": tf.__version__,
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "load_s": load_s,
        "first_call_s": first_call_s,
        "batches": {},
        "tols": {},
    }
    for batch in args.batches:
        requests = make_requests(batch, seed=batch)
        result["batches"][str(batch)] = time_requests(call_default, requests, args.requests, args.warmup)
        print(f"[serving] batch {batch} done", file=sys.stderr, flush=True)

    requests = make_requests(args.tol_batch, seed=args.tol_batch)
    reference = [call_tol(REFERENCE_TOL)(r)["mean"].numpy() for r in requests]
    for tol in args.tols:
        call = call_tol(tol)
        entry = time_requests(call, requests, args.requests, args.warmup)
        entry["max_abs_err"] = max(
            float(np.max(np.abs(call(r)["mean"].numpy() - ref))) for r, ref in zip(requests, reference)
        )
        result["tols"][repr(tol)] = entry
        print(f"[serving] tol {tol:g} done", file=sys.stderr, flush=True)
    return result


# --------------------------------------------------------------------------- #
# Parent: tables
# --------------------------------------------------------------------------- #


def _stats(entry, batch):
    import numpy as np

    wall = np.asarray(entry["wall_ms"])
    n = len(wall)
    rps = n / entry["total_s"]
    return {
        "p50": float(np.percentile(wall, 50)),
        "p99": float(np.percentile(wall, 99)),
        "cpu": float(np.median(entry["cpu_ms"])),
        "rps": rps,
        "sps": rps * batch,
        "sps_cpu": batch / (float(np.median(entry["cpu_ms"])) * 1e-3),
        "nfe": float(np.mean(entry["nfe"])),
    }


def _fmt(x):
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def tables(result, args):
    lines = [
        f"Export `{result['export']}`, TF {result['tensorflow']}, GPUs: {result['gpus'] or 'none'}; "
        f"load {result['load_s']:.1f} s, first call {result['first_call_s']:.1f} s; "
        f"{args.requests} timed requests after {args.warmup} warm-up per row.",
        "",
        "By batch size (`serving_default`, trained tolerance rtol=1e-3, atol=1e-4):",
        "",
        "| batch | p50 ms | p99 ms | CPU ms (median) | requests/s | series/s | series per CPU-s | NFE |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for batch, entry in result["batches"].items():
        s = _stats(entry, int(batch))
        lines.append(f"| {batch} | {_fmt(s['p50'])} | {_fmt(s['p99'])} | {_fmt(s['cpu'])} | {_fmt(s['rps'])} "
                     f"| {_fmt(s['sps'])} | {_fmt(s['sps_cpu'])} | {s['nfe']:.1f} |")  # fmt: skip
    lines += [
        "",
        f"By requested tolerance (`predict_with_tolerance`, rtol = atol, batch {args.tol_batch}; "
        f"error: max |mean - mean at rtol = atol = {REFERENCE_TOL:g}| over the request pool):",
        "",
        "| rtol = atol | p50 ms | p99 ms | CPU ms (median) | requests/s | series/s | series per CPU-s | NFE "
        "| max abs err |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tol, entry in result["tols"].items():
        s = _stats(entry, args.tol_batch)
        lines.append(f"| {float(tol):g} | {_fmt(s['p50'])} | {_fmt(s['p99'])} | {_fmt(s['cpu'])} | {_fmt(s['rps'])} "
                     f"| {_fmt(s['sps'])} | {_fmt(s['sps_cpu'])} | {s['nfe']:.1f} "
                     f"| {entry['max_abs_err']:.1e} |")  # fmt: skip
    return "\n".join(lines)


WORKERS = {"tf": (worker, "tf")}


def add_args(p):
    p.add_argument("--model-base", default=os.path.join(REPO, "savedmodels", "latent_ode_spiral"))
    p.add_argument("--batches", default="1,8,64,512")
    p.add_argument("--tols", default="1e-1,1e-2,1e-3,1e-4,1e-5,1e-6")
    p.add_argument("--tol-batch", type=int, default=64)
    p.add_argument("--requests", type=int, default=60, help="timed requests per row (>= 50 for a p99)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="50 requests per row, batches 1,64, tolerances 1e-1,1e-3,1e-6")


def report(args, ctx):
    """Run the measurement in a pinned worker (in this process with ``--no-pin``: default thread pools)."""
    if args.quick:
        args.requests, args.batches, args.tols = 50, "1,64", "1e-1,1e-3,1e-6"
    args.batches = [int(b) for b in str(args.batches).split(",")]
    args.tols = [float(t) for t in str(args.tols).split(",")]
    args.model_base = os.path.abspath(args.model_base)

    load_before = loadavg()
    if args.no_pin and not args.from_dir:  # in this process, TensorFlow's default thread pools
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
