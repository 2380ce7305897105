"""W2 direct mode: the gradient through the solver loop under XLA against graph mode, at the default budget.

Workload: W2's field and loss (f(t, y) = tanh(y @ W1.T + b1) @ W2.T + b2, float32,
batch 256, D=2 with H=64 and D=32 with H=256; dopri5 at rtol = atol = 1e-5 from
t=0 to 1; loss = sum(y(1)**2) / 256; gradient w.r.t. W1, b1, W2, b2 held as
tf.Variables), with ``adjoint=False`` and the default ``max_num_steps`` (10 000).

Implementations (one TF process pinned to one core, timed round-robin):
    graph       tf.function: backpropagation through the plain loop (what a
                Keras model compiled with jit_compile=False runs).
    xla         tf.function(jit_compile=True): the loop re-run from checkpoints
                in the backward pass (tfode/checkpoint.py).
    xla-plain   (--plain-loop SIZES) tf.function(jit_compile=True) with the
                plain loop differentiated by TensorFlow, as before the
                checkpoints: its gradient buffers have max_num_steps entries.
                Made by tracing with tfode.solvers.in_xla_context patched to
                False. Slow (seconds) and memory-hungry at D=32.

Columns: CPU and wall medians (ms) of one forward+backward call, gradients
copied to host, over --repeats calls after 3 warm-ups; first call (s, trace +
compile); fwd NFE and steps; max |g - g_graph| / max |g_graph| over the four
gradients; CPU ratio to graph (target: xla <= 1.5).

``--per-sample``: the same with ``SolverConfig(batch_axis=0)`` (every sample its own steps;
its loop is checkpointed the same way); NFE and steps are then the largest per sample.

Usage: python -m benchmarks.run W2-direct [--sizes d2,d32] [--repeats 15] [--plain-loop d2] [--per-sample]
"""

from __future__ import annotations

# Closures defined in the per-size loop are called within the same iteration.
# ruff: noqa: B023
from benchmarks import _common as C


def _tf(args, frameworks):
    tf = C.pin_tensorflow()
    import numpy as np

    import tfode
    import tfode.solvers

    results = {"versions": C.versions(tensorflow=tf, tfode=tfode), "rows": []}
    t_span = tf.constant([0.0, 1.0])
    solver = tfode.SolverConfig(batch_axis=0 if args.per_sample else None)
    for size in args.sizes:
        data = C.load_workload(size, args.weights)
        V = [
            tf.Variable(data["W1"].T.copy()),
            tf.Variable(data["b1"]),
            tf.Variable(data["W2"].T.copy()),
            tf.Variable(data["b2"]),
        ]
        y0 = tf.constant(data["y0"])

        def field(t, y):
            return tf.matmul(tf.tanh(tf.matmul(y, V[0]) + V[1]), V[2]) + V[3]

        def make(jit_compile):
            @tf.function(jit_compile=jit_compile)
            def fn(y0):
                with tf.GradientTape() as tape:
                    sol = tfode.solve(field, y0, t_span, solver, method="dopri5", rtol=args.tol, atol=args.tol,
                                      raise_on_failure=False)  # fmt: skip
                    loss = tf.reduce_sum(tf.square(sol.ys[-1])) / 256.0
                stats = sol.stats
                return (tape.gradient(loss, V), tf.reduce_max(stats.num_fn_evals), tf.reduce_max(stats.num_steps),
                        tf.reduce_max(stats.status))  # fmt: skip

            return fn

        fns = {"graph": make(False), "xla": make(True)}
        if size in args.plain_loop:
            fns["xla-plain"] = make(True)
        last = {}

        def call(name):
            def run():
                grads, nfe, steps, status = fns[name](y0)
                last[name] = ([g.numpy() for g in grads], int(nfe), int(steps), int(status))

            return run

        calls = {name: call(name) for name in fns}
        first = {}
        for name, fn in calls.items():
            patched = name == "xla-plain"
            original = tfode.solvers.in_xla_context
            if patched:  # traced now, with the plain loop
                tfode.solvers.in_xla_context = lambda: False
            try:
                first[name] = C.first_call_ms(fn)[1]
            finally:
                tfode.solvers.in_xla_context = original
        wall, cpu = C.time_interleaved(calls, args.repeats)
        reference = last["graph"][0]
        scale = max(float(np.max(np.abs(g))) for g in reference)
        for name in fns:
            grads, nfe, steps, status = last[name]
            diff = max(float(np.max(np.abs(a - b))) for a, b in zip(grads, reference, strict=True)) / scale
            results["rows"].append({
                "size": size, "impl": name, "cpu_ms": cpu[name], "wall_ms": wall[name], "first_ms": first[name],
                "nfe": nfe, "steps": steps, "status": status, "rel_diff": diff,
            })  # fmt: skip
    return results


WORKERS = {"tf": (_tf, "tf")}


def add_args(p):
    p.add_argument("--sizes", default="d2,d32")
    p.add_argument("--tol", type=float, default=1e-5)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--plain-loop", default="", help="sizes that also time the plain loop under XLA (slow)")
    p.add_argument("--per-sample", action="store_true", help="solve per sample (SolverConfig(batch_axis=0))")


def report(args, ctx):
    args.sizes = C.split_list(args.sizes)
    args.plain_loop = C.split_list(args.plain_loop)
    res = C.run_tf_worker(ctx)
    if res is None:
        return None
    mode = "per sample (batch_axis=0)" if args.per_sample else "joint"
    print(f"Direct-mode gradient (adjoint=False), {mode}, default max_num_steps, one process, round-robin:")
    print()
    print("| size | impl | CPU median ms | wall median ms | first call s | fwd NFE | steps | rel diff vs graph | "
          "CPU / graph |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    medians = {(r["size"], r["impl"]): C.summary(r["cpu_ms"])[0] for r in res["rows"]}
    verdict = []
    for r in res["rows"]:
        cpu = medians[(r["size"], r["impl"])]
        ratio = cpu / medians[(r["size"], "graph")]
        wall = C.fmt_ms(C.summary(r["wall_ms"])[0])
        print(f"| {r['size']} | {r['impl']} | {C.fmt_ms(cpu)} | {wall} | {r['first_ms'] / 1e3:.1f} | {r['nfe']} | "
              f"{r['steps']} | {r['rel_diff']:.1e} | {ratio:.2f} |")  # fmt: skip
        if r["impl"] == "xla":
            met = "met" if ratio <= 1.5 else "MISSED"
            verdict.append(f"- {r['size']}: xla / graph = {ratio:.2f} (target <= 1.5: {met})")
    print()
    print("\n".join(verdict))
    C.print_notes_and_versions([], res.get("versions", {}))
    return res
