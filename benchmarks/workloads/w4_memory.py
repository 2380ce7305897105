"""W4 memory benchmark: peak memory of the W2 gradient as the end time T grows.

Workload (see ../shared/bench/README.md beside the repository): the W2 gradient (loss
sum(y(T)**2) / 256, gradient w.r.t. W1, b1, W2, b2, dopri5 rtol = atol = 1e-5)
with the bounded field f(y) - y = tanh(y @ W1.T + b1) @ W2.T + b2 - y, D=32
(H=256), batch 256, float32, t from 0 to T for T in {1, 10, 50}.

Configurations, each in its own fresh process (taskset -c 0, one thread):
    tfode-adjoint       tfode.solve(..., adjoint=True) (seminorm), XLA, t = [0, T].
    tfode-adjoint-anchored  the same with t = linspace(0, T, T / --anchor-every + 1)
                        (loss still on y(T) only): the backward pass re-anchors its
                        reconstructed state to the stored forward state at every
                        output time. Memory: one stored state per output time.
    tfode-direct        tfode.solve(..., options={"max_num_steps": N}),
                        backpropagation through the loop, XLA (N from
                        --direct-max-steps, default 2000: T=50 takes ~210-240 steps).
    tfode-direct-graph  the same without XLA (plain tf.function), where TF's
                        while-loop gradient stacks grow with the steps taken.
All run inside tf.function with W1T, b1, W2T, b2 as tf.Variables and t as a
tensor argument, so every T runs the same compiled program (anchored: one
program per number of output times).

Measurements per process:
    setup MB      VmRSS after imports, variables and tracing set-up, before any call.
    warm MB       ru_maxrss after one warm-up call at T=0.1 (trace + XLA compile
                  + a short solve; the same program as every T).
    peak MB       ru_maxrss at exit, after the measured call at T (the headline:
                  the process's peak resident memory).
    call +MB      peak VmRSS sampled every ~1 ms by a thread during the measured
                  call, minus VmRSS just before it (memory the call itself adds).
    fwd/bwd NFE   forward evaluations of f; backward evaluations of the
                  augmented dynamics (tfode.SolveStats; "-" for direct).
    call s        wall time of the measured call.
    grad diff     ||g - g_direct|| / ||g_direct|| vs tfode-direct-graph (else
                  tfode-direct) at the same T: backpropagation through the
                  steps is the exact gradient of the discrete solve. (A float64
                  diffrax RecursiveCheckpointAdjoint check at T=10 put float32
                  direct within 1.4e-2 of the truth; that bounds this column.)

Targets: tfode-adjoint peak grows < 10% from T=1 to T=50 while direct grows with T.

Usage:
    python -m benchmarks.run W4 [--T 1,10,50]
        [--impls tfode-adjoint,tfode-adjoint-anchored,tfode-direct,tfode-direct-graph]
        [--direct-max-steps 2000] [--anchor-every 1.0] [--json out.json]
"""

from __future__ import annotations

import os
import resource
import threading
import time

from benchmarks import _common as C

IMPLS = ("tfode-adjoint", "tfode-adjoint-anchored", "tfode-direct", "tfode-direct-graph")
WARMUP_T = 0.1


def _rss_mb():
    """Current resident set size (VmRSS) of this process, MB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _maxrss_mb():
    """Peak resident set size (ru_maxrss) of this process so far, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class _RssSampler:
    """Samples VmRSS every ``interval`` s in a thread; ``peak`` is the largest seen."""

    def __init__(self, interval=1e-3):
        self.interval, self.peak, self._stop = interval, _rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def worker(args, frameworks=()):
    """One measured configuration (``args.impl`` at ``args.T``) in this process; the row dict."""
    tf = C.pin_tensorflow()
    import tfode

    data = C.load_workload("d32", args.weights)
    W1T = tf.Variable(data["W1"].T.copy())
    b1 = tf.Variable(data["b1"])
    W2T = tf.Variable(data["W2"].T.copy())
    b2 = tf.Variable(data["b2"])
    V = [W1T, b1, W2T, b2]
    y0 = tf.constant(data["y0"])
    bs = tfode.SolveStats()

    def field(t, y):
        return tf.matmul(tf.tanh(tf.matmul(y, W1T) + b1), W2T) + b2 - y

    if args.impl.startswith("tfode-adjoint"):
        kw = dict(adjoint=True, adjoint_norm="seminorm", backward_stats=bs)
    else:
        kw = dict(options={"max_num_steps": args.direct_max_steps})

    def grad(y0, t):
        with tf.GradientTape() as tape:
            sol = tfode.solve(field, y0, t, method="dopri5", rtol=args.tol, atol=args.tol, raise_on_failure=False, **kw)
            loss = tf.reduce_sum(tf.square(sol.ys[-1])) / 256.0
        return loss, tape.gradient(loss, V), sol.stats.num_fn_evals, sol.stats.status

    fn = tf.function(grad, jit_compile=args.impl != "tfode-direct-graph")

    # "anchored": outputs every --anchor-every time units (loss still on y(T)), so the
    # backward pass re-anchors its state to the stored forward states that often.
    num_times = 2
    if args.impl == "tfode-adjoint-anchored":
        num_times = max(2, int(round(args.T / args.anchor_every)) + 1)

    def call(T):
        loss, g, nfe, status = fn(y0, tf.linspace(0.0, T, num_times))
        return float(loss), [x.numpy() for x in g], int(nfe), int(status)

    out = {"impl": args.impl, "T": args.T, "setup_mb": _rss_mb()}
    t0 = time.perf_counter()
    call(WARMUP_T)
    out["warm_s"] = time.perf_counter() - t0
    out["warm_mb"] = _maxrss_mb()
    before = _rss_mb()
    with _RssSampler() as sampler:
        t0 = time.perf_counter()
        loss, g, nfe, status = call(args.T)
        out["call_s"] = time.perf_counter() - t0
    out["call_add_mb"] = sampler.peak - before
    out["peak_mb"] = _maxrss_mb()
    out.update(loss=loss, fwd_nfe=nfe, status=status)
    out["num_times"] = num_times
    if args.impl.startswith("tfode-adjoint"):
        out.update(bwd_nfe=int(bs.num_fn_evals.numpy()), bwd_status=int(bs.status.numpy()))
    C.save_grads(args._out + ".npz", {"grad": [g[0].T, g[1], g[2].T, g[3]]})
    return out


WORKERS = {"worker": (worker, "tf")}


def add_args(p):
    p.add_argument("--T", default="1,10,50")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--direct-max-steps", type=int, default=2000)
    p.add_argument("--anchor-every", type=float, default=1.0, help="output spacing of tfode-adjoint-anchored")
    p.add_argument("--tol", type=float, default=1e-5)


def report(args, ctx):
    import numpy as np

    Ts = C.split_list(args.T, float)
    impls = C.split_list(args.impls)
    if set(impls) - set(IMPLS):
        raise SystemExit(f"unknown impls; choose from {IMPLS}")
    rows, grads = [], {}
    rev_start = C.tfode_revision()
    for impl in impls:
        for T in Ts:
            res = ctx.run("worker", tag=f"{impl}_T{T:g}", impl=impl, T=T)
            res.setdefault("impl", impl)
            res.setdefault("T", T)
            if "error" not in res:
                grads[(impl, T)] = np.concatenate([np.ravel(g) for g in res.pop("grads")["grad"]])
            rows.append(res)

    def diff(impl, T):
        ref_impl = next((i for i in ("tfode-direct-graph", "tfode-direct") if (i, T) in grads), None)
        ref, g = grads.get((ref_impl, T)), grads.get((impl, T))
        if impl == ref_impl or ref is None or g is None:
            return "-"
        return f"{np.linalg.norm(g - ref) / np.linalg.norm(ref):.1e}"

    lines = [
        f"W4 memory, D=32 H=256 batch 256, field f(y) - y, dopri5 rtol=atol={args.tol:g}; "
        f"tfode-direct* max_num_steps={args.direct_max_steps}; anchored: outputs every {args.anchor_every:g}; "
        "one fresh process per row",
        "",
        "| impl | T | peak MB (ru_maxrss) | setup MB | warm MB | call +MB | fwd NFE | bwd NFE | call s "
        "| grad diff vs direct |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['impl']} | {r['T']:g} | {r['error'][:150]} |  |  |  |  |  |  |  |")
            continue
        bwd = str(r["bwd_nfe"]) if "bwd_nfe" in r else "-"
        status = ""
        if r["status"] or r.get("bwd_status", 0):
            status = f" (status {r['status']}/{r.get('bwd_status', 0)})"
        lines.append(
            f"| {r['impl']} | {r['T']:g} | {r['peak_mb']:.0f} | {r['setup_mb']:.0f} | {r['warm_mb']:.0f} | "
            f"{r['call_add_mb']:.0f} | {r['fwd_nfe']}{status} | {bwd} | {r['call_s']:.2f} | "
            f"{diff(r['impl'], r['T'])} |"
        )
    print("\n".join(lines))
    print()
    print("Target: tfode-adjoint peak grows < 10% from T=1 to T=50 while direct grows with T.")
    by = {(r["impl"], r["T"]): r for r in rows if "error" not in r}
    lo, hi = min(Ts), max(Ts)
    for impl in impls:
        a, b = by.get((impl, lo)), by.get((impl, hi))
        if a and b:
            growth = b["peak_mb"] / a["peak_mb"] - 1
            verdict = ""
            if impl == "tfode-adjoint":
                verdict = " OK" if growth < 0.10 else " MISS"
            print(
                f"- {impl}: peak {a['peak_mb']:.0f} -> {b['peak_mb']:.0f} MB from T={lo:g} to T={hi:g} "
                f"({growth * 100:+.1f}%){verdict}; memory added by the call "
                f"{a['call_add_mb']:.0f} -> {b['call_add_mb']:.0f} MB"
            )
    C.print_revision(rev_start, C.tfode_revision())
    return rows
