#!/usr/bin/env python
"""W1-eager: repeated eager ``tfode.solve`` (cached traced function) against graph, XLA and torchdiffeq.

Workload: W1's field ``f(t, y) = tanh(y @ W1.T + b1) @ W2.T + b2``, float32, batch 256,
dopri5, ``t = [0, 1]``, ``rtol = atol = tol`` (default D=2, tol 1e-5: issue 16).

Implementations (one pinned subprocess per framework, as W1):
    tfode-eager        ``tfode.solve(field, y0, t, method="dopri5", rtol=tol, atol=tol)`` called
                       eagerly, as a notebook does (the README's first example): the field
                       closes over the weights; tolerances are Python floats. Served by the
                       eager cache (one trace at the first call).
    tfode-graph        the same call inside ``tf.function`` (weights and tolerances as arguments).
    tfode-xla          the same with ``jit_compile=True``.
    tfode-plain-eager  ``eager_cache=False``: every op dispatched from Python (fewer repeats).
    torchdiffeq        W1's torch worker: eager ``odeint`` under ``no_grad``.

Each call returns y(1) as a host array. The TF implementations are timed round-robin in one
process; "first call" is the wall time of the first call (trace/compile included), measured
before any timing. Ratios use CPU-time medians (see W1).

Usage:
    python -m benchmarks.run W1-eager [--sizes d2] [--tols 1e-5] [--repeats 30]
        [--frameworks tfode,torchdiffeq] [--peer-python PATH]
"""

from __future__ import annotations

import numpy as np

from benchmarks import _common as C
from benchmarks.workloads import w1_forward

WORKER_OF = {"tfode": "tf", "torchdiffeq": "torch"}
IMPL_ORDER = ["tfode-eager", "tfode-graph", "tfode-xla", "tfode-plain-eager", "torchdiffeq"]
PLAIN_EAGER_REPEATS = 5


def _time_one(tf, tfode, data, tol, repeats):
    """Rows (one per implementation) of one size and tolerance."""
    t_span = tf.constant([0.0, 1.0])
    y0 = tf.constant(data["y0"])
    W1T, W2T = tf.transpose(tf.constant(data["W1"])), tf.transpose(tf.constant(data["W2"]))
    b1, b2 = tf.constant(data["b1"]), tf.constant(data["b2"])

    def field(t, y):
        return tf.matmul(tf.tanh(tf.matmul(y, W1T) + b1), W2T) + b2

    def eager(eager_cache=True):
        sol = tfode.solve(field, y0, t_span, method="dopri5", rtol=tol, atol=tol, eager_cache=eager_cache)
        return sol.ys[-1].numpy(), int(sol.stats.num_fn_evals)

    def solve(y0, rtol, atol, W1T, b1, W2T, b2):
        def f(t, y):
            return tf.matmul(tf.tanh(tf.matmul(y, W1T) + b1), W2T) + b2

        sol = tfode.solve(f, y0, t_span, method="dopri5", rtol=rtol, atol=atol)
        return sol.ys[-1], sol.stats.num_fn_evals

    r, a = tf.constant(tol, tf.float32), tf.constant(tol, tf.float32)

    def compiled_call(fn):
        return lambda: tuple(x.numpy() for x in fn(y0, r, a, W1T, b1, W2T, b2))

    calls = {
        "tfode-eager": eager,
        "tfode-graph": compiled_call(tf.function(solve)),
        "tfode-xla": compiled_call(tf.function(solve, jit_compile=True)),
    }
    first, results = {}, {}
    for name, call in calls.items():
        (y1, nfe), first[name] = C.first_call_ms(call)
        results[name] = (y1, int(nfe))
    timings = w1_forward._round_robin(calls, repeats)

    def plain():
        return eager(eager_cache=False)

    (y1, nfe), first["tfode-plain-eager"] = C.first_call_ms(plain)
    results["tfode-plain-eager"] = (y1, nfe)
    timings["tfode-plain-eager"] = w1_forward._round_robin({"p": plain}, PLAIN_EAGER_REPEATS, warmup=1)["p"]
    return [
        dict(tol=tol, impl=name, nfe=nfe, first_call_ms=first[name], y1=y1.tolist(), **timings[name])
        for name, (y1, nfe) in results.items()
    ]


def worker_tf(args, frameworks):
    try:
        tf = C.pin_tensorflow()
        import tfode
    except ImportError as err:
        return {"error": f"not installed ({err})"}
    rows = []
    for size in args.sizes:
        data = C.load_workload(size, args.weights)
        for tol in args.tols:
            rows.extend(dict(row, size=size) for row in _time_one(tf, tfode, data, tol, args.repeats))
    return {"rows": rows, "versions": C.versions(tensorflow=tf, tfode=tfode)}


WORKERS = {"tf": (worker_tf, "tf"), "torch": (w1_forward.worker_torch, "peer")}


def add_args(p):
    p.add_argument("--sizes", default="d2")
    p.add_argument("--tols", default="1e-5")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--frameworks", default="tfode,torchdiffeq")


def report(args, ctx):
    args.sizes = C.split_list(args.sizes)
    args.tols = C.split_list(args.tols, float)
    frameworks = C.split_list(args.frameworks)
    load0, rev0 = C.loadavg(), C.tfode_revision()
    raw = {kind: ctx.run(kind, fws) for kind, fws in C.group_by_worker(frameworks, WORKER_OF).items()}
    load1, rev1 = C.loadavg(), C.tfode_revision()
    rows, notes, versions = {}, [], {}
    for kind, res in raw.items():
        if "error" in res:
            notes.append(f"{kind} worker: {res['error']}")
            continue
        versions.update(res.get("versions", {}))
        for row in res["rows"]:
            row["cpu_median_ms"] = float(np.median(row["cpu"]))
            row["wall_median_ms"] = float(np.median(row["wall"]))
            rows[(row["size"], row["tol"], row["impl"])] = row
    lines = [
        "| size | tol | impl | CPU median ms | wall median ms | first call ms | NFE | CPU / graph "
        "| CPU / torchdiffeq |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    verdict = []
    for size in args.sizes:
        for tol in args.tols:
            graph = rows.get((size, tol, "tfode-graph"))
            torch = rows.get((size, tol, "torchdiffeq"))
            for impl in IMPL_ORDER:
                r = rows.get((size, tol, impl))
                if r is None:
                    continue
                vs_graph = f"{r['cpu_median_ms'] / graph['cpu_median_ms']:.2f}" if graph else "–"
                vs_torch = f"{r['cpu_median_ms'] / torch['cpu_median_ms']:.2f}" if torch else "–"
                lines.append(
                    f"| {size} | {tol:g} | {impl} | {C.fmt_ms(r['cpu_median_ms'])} | {C.fmt_ms(r['wall_median_ms'])} "
                    f"| {C.fmt_ms(r['first_call_ms'])} | {r['nfe']} | {vs_graph} | {vs_torch} |"
                )
            eager = rows.get((size, tol, "tfode-eager"))
            if eager and graph:
                q = eager["cpu_median_ms"] / graph["cpu_median_ms"]
                item = f"- {size} {tol:g}: eager / graph {q:.2f} (<= 1.5: {'met' if q <= 1.5 else 'MISSED'})"
                if torch:
                    qt = eager["cpu_median_ms"] / torch["cpu_median_ms"]
                    item += f"; eager / torchdiffeq {qt:.2f} (<= 1: {'met' if qt <= 1 else 'MISSED'})"
                verdict.append(item)
    print("\n".join(lines))
    print()
    if verdict:
        print("Target check (repeated eager tfode.solve; CPU medians, same run):")
        print("\n".join(verdict))
        print()
    C.print_loadavg(load0, load1)
    C.print_revision(rev0, rev1)
    C.print_notes_and_versions(notes, versions)
    return {"rows": list(rows.values()), "notes": notes, "versions": versions}
