"""W1 graph path: ops per loop iteration and graph-mode against XLA forward time.

Workload: W1's field (f(t, y) = tanh(y @ W1.T + b1) @ W2.T + b2, float32, batch
256; D=2 with H=64, D=32 with H=256), dopri5 at rtol = atol = 1e-5 from t=0 to 1
(``adjoint=False``, the default), forward only.

Implementations (one TF process pinned to one core, timed round-robin):
    graph   tf.function without XLA: what TF Serving runs (exports are traced
            without XLA); every op of the loop body is dispatched once per step.
    xla     tf.function(jit_compile=True).

Columns: loop-body ops (``tfode._graph_ops.integration_loop_ops``: ops in the
integration loop's while body, Const included), steps, CPU and wall medians (ms)
over --repeats calls after 3 warm-ups, graph / xla CPU ratio (target <= 1.5 at D=2).

Usage: python -m benchmarks.run W1-ops [--sizes d2,d32] [--repeats 100]
"""

from __future__ import annotations

# Closures defined in the per-size loop are called within the same iteration.
# ruff: noqa: B023
from benchmarks import _common as C


def _tf(args, frameworks):
    tf = C.pin_tensorflow()
    import numpy as np

    import tfode
    from tfode._graph_ops import integration_loop_ops

    results = {"versions": C.versions(tensorflow=tf, tfode=tfode), "rows": []}
    t_span = tf.constant([0.0, 1.0])
    for size in args.sizes:
        d = C.load_workload(size, args.weights)
        W1T, b1 = tf.constant(d["W1"].T.copy()), tf.constant(d["b1"])
        W2T, b2 = tf.constant(d["W2"].T.copy()), tf.constant(d["b2"])
        y0 = tf.constant(d["y0"])

        def field(t, y):
            return tf.matmul(tf.tanh(tf.matmul(y, W1T) + b1), W2T) + b2

        ops = integration_loop_ops(field, y0, t_span, rtol=args.tol, atol=args.tol)

        def make(jit_compile):
            @tf.function(jit_compile=jit_compile)
            def fn(y0):
                sol = tfode.solve(field, y0, t_span, rtol=args.tol, atol=args.tol)
                return sol.ys[-1], sol.stats.num_steps

            return fn

        fns = {"graph": make(False), "xla": make(True)}
        outs = {name: fn(y0) for name, fn in fns.items()}
        calls = {name: (lambda fn=fn: fn(y0)[0].numpy()) for name, fn in fns.items()}
        wall, cpu = C.time_interleaved(calls, args.repeats)
        diff = float(np.max(np.abs(outs["graph"][0].numpy() - outs["xla"][0].numpy())))
        for name in fns:
            results["rows"].append({
                "size": size, "impl": name, "cpu_ms": cpu[name], "wall_ms": wall[name], "ops": sum(ops.values()),
                "top_ops": ops.most_common(8), "steps": int(outs[name][1]), "max_abs_diff": diff,
            })  # fmt: skip
    return results


WORKERS = {"tf": (_tf, "tf")}


def add_args(p):
    p.add_argument("--sizes", default="d2,d32")
    p.add_argument("--tol", type=float, default=1e-5)
    p.add_argument("--repeats", type=int, default=100)


def report(args, ctx):
    args.sizes = C.split_list(args.sizes)
    res = C.run_tf_worker(ctx)
    if res is None:
        return None
    print()
    print("| size | impl | loop-body ops | steps | CPU median ms | wall median ms | graph / xla (CPU) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    medians = {(r["size"], r["impl"]): C.summary(r["cpu_ms"])[0] for r in res["rows"]}
    tops = {}
    for r in res["rows"]:
        cpu = medians[(r["size"], r["impl"])]
        ratio = medians[(r["size"], "graph")] / medians[(r["size"], "xla")]
        cell = f"{ratio:.2f}" if r["impl"] == "graph" else ""
        print(f"| {r['size']} | {r['impl']} | {r['ops']} | {r['steps']} | {C.fmt_ms(cpu)} | "
              f"{C.fmt_ms(C.summary(r['wall_ms'])[0])} | {cell} |")  # fmt: skip
        tops[r["size"]] = r["top_ops"]
    print()
    for size, top in tops.items():
        print(f"- {size} loop body: " + ", ".join(f"{op} {n}" for op, n in top))
    C.print_notes_and_versions([], res.get("versions", {}))
    return res
