"""Serving benchmark: latency and throughput of the exported latent ODE.

The model is the SavedModel ``savedmodels/latent_ode_spiral/<latest version>``
(``savedmodels/regenerate.py``), loaded with ``tf.saved_model.load`` and called
through its signatures, as a Python serving process would. tfode itself is
imported only to draw the request data (``tfode.datasets.spirals_2d``).

Requests: ``B`` spirals per request, each with 15 irregular observations in
the first half of its window (``observed_*`` ``[B, 15(, 2)]``) and 20 query
times over the whole window (``query_times`` ``[B, 20]``: interpolation and
extrapolation; per-series times). A pool of 8 different requests per batch
size is cycled.

Two sweeps, one client sending requests back to back:

* batch size ``B`` in ``--batches`` (1, 8, 64, 512) at the trained tolerance
  (rtol=1e-3, atol=1e-4), through up to three paths (``--paths``), timed
  round-robin (one request of each path in turn) so that they share the
  machine's load:

  - ``export``: the export's ``serving_default``, which solves each series at
    its own query times (per-sample solve, ``batch_axis=0``);
  - ``inproc``: the same per-sample computation (``model.serving_outputs``) as
    an in-process ``tf.function``: the control for comparing with ``union``;
  - ``union``: the former union-of-times path as an in-process
    ``tf.function``: encoder, then ``union_grid_solve`` (below; the library
    no longer builds this grid), which merges the ``B x 20`` times into one
    sorted grid solved jointly once for the batch (forward only, the
    union-grid forward), then decoder. ``inproc`` and ``union`` run a
    ``savedmodels/regenerate.py`` model whose variables are assigned from the
    export's (``serving_variables``, same order), so all three paths use the
    same weights; the worker records the max abs difference of ``inproc``
    and ``union`` against the export on the first request of each batch.

* requested tolerance rtol = atol in ``--tols`` (1e-1 ... 1e-6) through
  ``predict_with_tolerance`` at ``B = --tol-batch`` (64), with the error of
  the mean prediction against the same requests at rtol = atol = 1e-7.

Columns: wall-clock latency p50 / p99 over ``--requests`` timed requests
(after ``--warmup``), median process CPU time per request (excludes time the
process waited for a core: the steadier number on a shared machine),
requests/s and series/s (``B`` x requests/s) from the total wall time of the
timed requests, series per CPU-second (``B`` / median CPU time: the
throughput of one dedicated core), and the NFE the signature returns (mean
over the requests; for a per-sample solve, the largest per-series count,
i.e. how often the batched field ran).

Like the other benchmarks, the measurement runs in a subprocess pinned to one
core (``taskset -c 0``) with every thread pool at one thread
(``benchmarks/_common.py``); ``--no-pin`` runs it in this process with
TensorFlow's default thread pools instead (use it on a GPU machine).

Usage:
    python -m benchmarks.run serving [--quick] [--batches 1,8,64,512] [--paths export,inproc,union]
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
INPUTS = ("observed_times", "observed_values", "observed_mask", "query_times")
PATHS = ("export", "inproc", "union")
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
    return time_paths({"one": call}, requests, num_timed, warmup)["one"]


def time_paths(calls, requests, num_timed, warmup):
    """``time_requests`` for several paths at once, round-robin: request ``i`` goes to
    every path in turn before request ``i + 1``, so background load is shared evenly.

    Args:
        calls: ``{path: call(request) -> outputs with "num_fn_evals"}``.

    Returns:
        ``{path: {"wall_ms", "cpu_ms", "total_s", "nfe"}}``; ``total_s`` sums that path's wall times.
    """
    for i in range(warmup):
        for call in calls.values():
            call(requests[i % len(requests)])
    out = {name: {"wall_ms": [], "cpu_ms": [], "total_s": 0.0, "nfe": []} for name in calls}
    for i in range(num_timed):
        for name, call in calls.items():
            w0, c0 = time.perf_counter(), time.process_time()
            result = call(requests[i % len(requests)])
            c1, w1 = time.process_time(), time.perf_counter()
            entry = out[name]
            entry["wall_ms"].append((w1 - w0) * 1e3)
            entry["cpu_ms"].append((c1 - c0) * 1e3)
            entry["total_s"] += w1 - w0
            entry["nfe"].append(int(result["num_fn_evals"]))
    return out


def union_grid_solve(tf, func, z0, times, solver):
    """The former union-of-times path (tfode <= 0.2), kept here as the benchmark's control.

    All series' query times ``[B, Q]`` are merged into one sorted grid (repeats allowed)
    of length ``1 + B*Q``, solved jointly once for the batch from ``t = 0``; each series
    reads its own entries. Returns ``(zs [B, Q, L], stats)``.
    """
    import tfode

    batch, length = tf.shape(times)[0], tf.shape(times)[1]
    flat = tf.reshape(times, [-1])
    order = tf.argsort(flat, stable=True)
    grid = tf.concat([tf.zeros([1], times.dtype), tf.gather(flat, order)], axis=0)
    solution = tfode.solve(func, z0, grid, solver.replace(batch_axis=None), _allow_repeated_times=True)
    position = tf.math.invert_permutation(order) + 1  # row of each (series, query) in the grid
    series = tf.repeat(tf.range(batch), length)
    zs = tf.gather_nd(solution.ys, tf.stack([position, series], axis=1))
    return tf.reshape(zs, tf.concat([[batch, length], tf.shape(z0)[1:]], axis=0)), solution.stats


def in_process_paths(tf, loaded):
    """``{"inproc": fn, "union": fn}``: ``tf.function``s over a regenerate.py latent ODE
    holding the export's weights (see the module docstring). ``fn(**request)``."""
    sys.path.insert(0, os.path.join(REPO, "savedmodels"))
    from regenerate import make_latent_ode

    from tfode.stats import batch_fn_evals

    model = make_latent_ode(adjoint=False)
    request = make_requests(1, seed=0)[0]
    model.serving_outputs(*(tf.constant(request[k]) for k in INPUTS))  # builds it
    if [tuple(v.shape) for v in model.variables] != [tuple(v.shape) for v in loaded.serving_variables]:
        raise SystemExit("the export's variables do not match savedmodels/regenerate.py's latent ODE")
    for variable, saved in zip(model.variables, loaded.serving_variables):
        variable.assign(saved)
    specs = [tf.TensorSpec([None, None]), tf.TensorSpec([None, None, 2]), tf.TensorSpec([None, None, 2]),
             tf.TensorSpec([None, None])]  # fmt: skip

    @tf.function(input_signature=specs, jit_compile=False, autograph=False)
    def inproc(observed_times, observed_values, observed_mask, query_times):
        return model.serving_outputs(observed_times, observed_values, observed_mask, query_times)

    @tf.function(input_signature=specs, jit_compile=False, autograph=False)
    def union(observed_times, observed_values, observed_mask, query_times):
        z0, _ = model.encoder(observed_times, observed_values, observed_mask, solver=model.encoder_solver)
        zs, stats = union_grid_solve(tf, lambda t, z: model.field(t, z), z0, query_times, model.solver)
        return {"mean": model.decoder(zs), "num_fn_evals": batch_fn_evals(stats)}

    return {"inproc": inproc, "union": union}


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
    paths = {"export": call_default}
    if set(args.paths) - {"export"}:
        functions = in_process_paths(tf, model)
        for name in ("inproc", "union"):
            paths[name] = lambda request, fn=functions[name]: fn(**{k: tf.constant(v) for k, v in request.items()})
    paths = {name: paths[name] for name in args.paths}
    result["paths"] = list(paths)
    result["path_batches"], result["max_abs_diff_vs_export"] = {}, {}
    for batch in args.batches:
        requests = make_requests(batch, seed=batch)
        exported = call_default(requests[0])["mean"].numpy()
        result["max_abs_diff_vs_export"][str(batch)] = {
            name: float(np.max(np.abs(call(requests[0])["mean"].numpy() - exported), initial=0.0))
            for name, call in paths.items()
        }
        timed = time_paths(paths, requests, args.requests, args.warmup)
        result["path_batches"][str(batch)] = timed
        if "export" in timed:
            result["batches"][str(batch)] = timed["export"]
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


def scaling_lines(path_batches, paths):
    """Per path: CPU-median ratio of the largest batch to the one 8x smaller; union / per-sample at each batch."""
    import numpy as np

    cpu = {b: {n: float(np.median(e["cpu_ms"])) for n, e in by_path.items()} for b, by_path in path_batches.items()}
    batches = sorted(int(b) for b in cpu)
    lines = [""]
    for big in batches[::-1]:
        if big % 8 == 0 and big // 8 in batches:
            ratios = ", ".join(f"{n} {cpu[str(big)][n] / cpu[str(big // 8)][n]:.2f}x" for n in paths)
            lines.append(f"CPU time at batch {big} / batch {big // 8} (linear: 8x): {ratios}.")
            break
    for per_sample in ("export", "inproc"):
        if "union" in paths and per_sample in paths:
            speedups = ", ".join(f"{b}: {cpu[str(b)]['union'] / cpu[str(b)][per_sample]:.2f}x" for b in batches)
            lines.append(f"CPU time union / {per_sample} by batch: {speedups}.")
    return lines


def tables(result, args):
    lines = [
        f"Export `{result['export']}`, TF {result['tensorflow']}, GPUs: {result['gpus'] or 'none'}; "
        f"load {result['load_s']:.1f} s, first call {result['first_call_s']:.1f} s; "
        f"{args.requests} timed requests after {args.warmup} warm-up per row.",
        "",
    ]
    path_batches = result.get("path_batches") or {b: {"export": e} for b, e in result["batches"].items()}
    paths = result.get("paths", ["export"])
    lines += [
        "By batch size (trained tolerance rtol=1e-3, atol=1e-4; paths timed round-robin; "
        "`export` = `serving_default`, per-sample; `inproc` = the same per-sample computation in process; "
        "`union` = union-of-times grid in process):",
        "",
        "| batch | path | p50 ms | p99 ms | CPU ms (median) | requests/s | series/s | series per CPU-s | NFE "
        "| max abs diff vs export |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for batch, by_path in path_batches.items():
        diffs = result.get("max_abs_diff_vs_export", {}).get(batch, {})
        for name in paths:
            s = _stats(by_path[name], int(batch))
            diff = f"{diffs[name]:.1e}" if name in diffs else "-"
            lines.append(f"| {batch} | {name} | {_fmt(s['p50'])} | {_fmt(s['p99'])} | {_fmt(s['cpu'])} "
                         f"| {_fmt(s['rps'])} | {_fmt(s['sps'])} | {_fmt(s['sps_cpu'])} | {s['nfe']:.1f} "
                         f"| {diff} |")  # fmt: skip
    lines += scaling_lines(path_batches, paths)
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
    p.add_argument("--paths", default=",".join(PATHS), help="of " + ",".join(PATHS) + " (module docstring)")
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
    args.paths = [p for p in str(args.paths).split(",") if p]
    if not args.paths or set(args.paths) - set(PATHS):
        print(f"--paths: choose from {','.join(PATHS)}", file=sys.stderr)
        return None
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
