"""W1 graph path: ops per loop iteration and graph-mode against XLA forward time.

Workload: W1's field (f(t, y) = tanh(y @ W1.T + b1) @ W2.T + b2, float32, batch
256; D=2 with H=64, D=32 with H=256), dopri5 at rtol = atol = 1e-5 from t=0 to 1
(``adjoint=False``, the default), forward only.

Implementations (one TF process pinned to one core, timed round-robin):
    graph        tf.function without XLA: what TF Serving runs (exports are traced
                 without XLA); every op of the loop body is dispatched once per step.
    xla          tf.function(jit_compile=True).
    lean-graph   control: a minimal dopri5 ``tf.while_loop`` (``_lean_dopri5``: the
                 same tableau, an I controller, no validation, no counters, no output
                 buffer, no NaN guard), without XLA: the floor of a graph-mode loop.
    lean-xla     the same under XLA.
    field-graph  control: the field alone, evaluated ``6 * steps + 1`` times (tfode's
                 NFE) in a ``tf.while_loop``, without XLA: the part of a graph-mode
                 solve that no loop design removes.
    field-xla    the same under XLA.
    per-sample-graph  tfode with SolverConfig(batch_axis=0) and times [B, 2] (what
                 ``tfode.serving.export`` serves), without XLA.
    per-sample-xla    the same under XLA.

Columns: loop-body ops (``tfode._graph_ops.integration_loop_ops``: ops in the
integration loop's while body, Const included; for the controls, their own loop
body and its nested loops), steps (attempted; per sample: the most any sample
took), CPU and wall medians (ms) over --repeats calls after 3
warm-ups, CPU ms per step, graph / xla CPU ratio of each pair (target for tfode
<= 1.5 at D=2).

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
    from tfode._graph_ops import integration_loop_ops, while_body_ops
    from tfode.tableaus import get_tableau

    results = {"versions": C.versions(tensorflow=tf, tfode=tfode), "rows": []}
    tableau = get_tableau("dopri5")
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

        def make_lean(jit_compile):
            return tf.function(lambda y0: _lean_dopri5(tf, field, tableau, y0, 1.0, args.tol), jit_compile=jit_compile)

        t_rows = tf.tile(t_span[None], [y0.shape[0], 1])
        per_sample = tfode.SolverConfig(rtol=args.tol, atol=args.tol, batch_axis=0)

        def make_per_sample(jit_compile):
            @tf.function(jit_compile=jit_compile)
            def fn(y0):
                sol = tfode.solve(field, y0, t_rows, per_sample)
                return sol.ys[-1], tf.reduce_max(sol.stats.num_steps)

            return fn

        steps = int(make(False)(y0)[1])
        evals = tableau.fn_evals_per_step * steps + 1

        def make_field(jit_compile):
            def repeat(y0):
                body = lambda i, y: (i + 1, y + 1e-30 * field(0.0, y))  # noqa: E731
                return tf.while_loop(lambda i, y: i < evals, body, (0, y0))[1], tf.constant(evals // 6)

            return tf.function(repeat, jit_compile=jit_compile)

        fns = {"graph": make(False), "xla": make(True), "lean-graph": make_lean(False), "lean-xla": make_lean(True),
               "field-graph": make_field(False), "field-xla": make_field(True),
               "per-sample-graph": make_per_sample(False), "per-sample-xla": make_per_sample(True)}  # fmt: skip
        counts = {"graph": sum(ops.values())}
        for name in ("lean-graph", "field-graph", "per-sample-graph"):
            bodies = while_body_ops(fns[name].get_concrete_function(y0).graph)
            counts[name] = sum(sum(c.values()) for c in bodies.values())
        outs = {name: fn(y0) for name, fn in fns.items()}
        calls = {name: (lambda fn=fn: fn(y0)[0].numpy()) for name, fn in fns.items()}
        wall, cpu = C.time_interleaved(calls, args.repeats)
        diff = float(np.max(np.abs(outs["graph"][0].numpy() - outs["xla"][0].numpy())))
        lean_err = float(np.max(np.abs(outs["lean-graph"][0].numpy() - outs["graph"][0].numpy())))
        for name in fns:
            results["rows"].append({
                "size": size, "impl": name, "cpu_ms": cpu[name], "wall_ms": wall[name],
                "ops": counts[name.replace("xla", "graph")], "top_ops": ops.most_common(8),
                "steps": int(outs[name][1]), "max_abs_diff": diff, "lean_vs_tfode": lean_err,
            })  # fmt: skip
    return results


def _lean_dopri5(tf, field, tableau, y0, t_end, tol):
    """The floor of a graph-mode adaptive loop: dopri5 from 0 to ``t_end`` with an I controller.

    No validation, counters, output buffer or NaN guard; RMS error norm, safety 0.9,
    factor in [0.2, 10], first step 0.01. Returns ``(y(t_end), attempted steps)``.
    """
    a, b, b_err, c = tableau.a, tableau.b, tableau.b_error, tableau.c

    def body(t, h, y, k0, n):
        h = tf.minimum(h, t_end - t)
        ks = [k0]
        for i in range(1, len(c)):
            ks.append(field(t + c[i] * h, y + h * tf.add_n([w * k for w, k in zip(a[i], ks) if w != 0.0])))
        y1 = y + h * tf.add_n([w * k for w, k in zip(b, ks) if w != 0.0])
        err = h * tf.add_n([w * k for w, k in zip(b_err, ks) if w != 0.0])
        scale = tol + tol * tf.maximum(tf.abs(y), tf.abs(y1))
        ratio = tf.sqrt(tf.reduce_mean(tf.square(err / scale)))
        accept = ratio <= 1.0
        factor = tf.clip_by_value(0.9 * ratio ** (-1.0 / 5.0), 0.2, 10.0)
        return (tf.where(accept, t + h, t), h * factor, tf.where(accept, y1, y), tf.where(accept, ks[-1], k0), n + 1)

    init = (tf.constant(0.0), tf.constant(0.01), y0, field(0.0, y0), tf.constant(0))
    _, _, y, _, n = tf.while_loop(lambda t, *_: t < t_end, body, init)
    return y, n


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
    print("| size | impl | loop-body ops | steps | CPU median ms | wall median ms | CPU ms / step "
          "| graph / xla (CPU) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    medians = {(r["size"], r["impl"]): C.summary(r["cpu_ms"])[0] for r in res["rows"]}
    tops = {}
    for r in res["rows"]:
        cpu = medians[(r["size"], r["impl"])]
        cell = ""
        if r["impl"].endswith("graph"):
            cell = f"{cpu / medians[(r['size'], r['impl'].replace('graph', 'xla'))]:.2f}"
        print(f"| {r['size']} | {r['impl']} | {r['ops']} | {r['steps']} | {C.fmt_ms(cpu)} | "
              f"{C.fmt_ms(C.summary(r['wall_ms'])[0])} | {cpu / max(r['steps'], 1):.3f} | {cell} |")  # fmt: skip
        tops[r["size"]] = r["top_ops"]
    print()
    for size, top in tops.items():
        print(f"- {size} loop body: " + ", ".join(f"{op} {n}" for op, n in top))
    C.print_notes_and_versions([], res.get("versions", {}))
    return res
