#!/usr/bin/env python
"""W1 forward benchmark: adaptive dopri5 on a small tanh MLP vector field.

Workload (see ../shared/bench/README.md beside the repository, data in weights.npz):
    f(t, y) = tanh(y @ W1.T + b1) @ W2.T + b2, float32, batch 256,
    D=2 (H=64) and D=32 (H=256), integrated from t=0 to t=1 with dopri5 at
    rtol = atol in {1e-3, 1e-5, 1e-7}.

Implementations (one subprocess per framework, pinned with taskset -c 0 and
every thread pool set to one thread):
    tfode-xla     tfode.solve inside tf.function(jit_compile=True); rtol/atol
                  are tf.constant arguments (one trace for every tolerance).
    tfode-graph   the same without XLA (plain tf.function).
    tfode-xla per-sample, tfode-graph per-sample (only with --per-sample)
                  the same with tfode.SolverConfig(method="dopri5", rtol, atol,
                  batch_axis=0) as solve's 4th argument: each of the 256 rows
                  its own problem (own steps and error norm). NFE = evaluations
                  of f on the batch (6 x loop iterations + the initial ones);
                  steps = loop iterations (the slowest row's attempted steps).
    tfp-xla       tfp.math.ode.DormandPrince(rtol=tol, atol=tol) (TFP defaults
                  otherwise, e.g. first_step_size=1e-3), solve(ode_fn, 0., y0,
                  solution_times=[1.]) under tf.function(jit_compile=True), in
                  the same process as tfode; NFE from
                  results.diagnostics.num_ode_fn_evaluations.
    torchdiffeq   odeint(func, y0, t=[0, 1], method="dopri5", rtol, atol), eager,
                  under torch.no_grad(); NFE counted by a counter in the module.
    diffrax       diffeqsolve(ODETerm, Dopri5(), 0, 1, dt0=None, y0,
                  PIDController(rtol, atol), SaveAt(t1=True)) under jax.jit.
                  NFE is counted exactly by a jax.debug.callback counter in the
                  vector field during one separate, untimed run (the timed
                  function has no callback); sol.stats["num_steps"] is reported
                  as "steps" (here NFE = 6 * steps + 1).

In every framework the weights are function arguments, not baked-in constants.
In TensorFlow/TFP they are transposed once outside the solve and the field uses
tf.matmul(y, W1T).

Timing. Each call returns y(1) as a host array (.numpy() / np.asarray after
block_until_ready). Per (size, tolerance) the TF implementations are timed
round-robin (tfode-xla, tfode-graph, tfp-xla, tfode-xla, ...) so they see the
same machine load. Each call is timed twice: wall clock (time.perf_counter) and
process CPU time (time.process_time, all threads of the worker). On a shared
machine wall time includes time the worker spent pre-empted; CPU time does not,
so the ratio and overhead columns use CPU-time medians (wall-based values are
in the --json output).

Columns:
    wall median / min-max: wall ms per solve over --repeats runs after warm-up.
    CPU: median process CPU ms per solve.
    NFE: evaluations of f reported by (or counted in) the implementation.
    steps: attempted steps where the implementation reports them.
    max|err|: max abs error of y(1) vs scipy solve_ivp(DOP853, rtol=atol=1e-12)
        in float64 on the flattened batch (one system of 256*D equations).
    vs TFP: CPU median / CPU median of tfp-xla at the same size and tolerance.
    overhead: CPU median / (NFE * t_f), where t_f is the CPU time of one
        evaluation of f measured in the same process as a compiled loop of
        1000 evaluations feeding y back, divided by 1000 (TF: a
        tf.function(jit_compile=True) tf.while_loop, used for every TF row;
        JAX: jax.jit + lax.fori_loop; torch: an eager Python loop under
        no_grad, torchdiffeq's own regime). The per-call dispatch cost of the
        framework is included in the solve time, not in t_f.

Targets (for tfode-xla):
    * NFE no higher than torchdiffeq's dopri5 at the same tolerance, with
      max|err| no worse than 2x torchdiffeq's;
    * overhead <= 1.3 on every row;
    * time <= 0.5x TFP-XLA on D=2 rows and <= 0.75x on D=32 rows;
    * stretch: time <= diffrax.

Usage:
    python -m benchmarks.run W1 [--sizes d2,d32] [--tols 1e-3,1e-5,1e-7]
        [--repeats 20] [--frameworks tfode,tfp,torchdiffeq,diffrax] [--quick]
        [--per-sample] [--json out.json] [--no-pin]

TF workers run with --tf-python, torch/JAX workers with --peer-python. A
framework that cannot be imported is reported as "not installed".
"""

from __future__ import annotations

import sys
import time

from benchmarks import _common as C

F_LOOP_ITERS = 1000
WARMUP = 3

# Which worker runs which framework; tfode and tfp share one TF process.
WORKER_OF = {"tfode": "tf", "tfp": "tf", "torchdiffeq": "torch", "diffrax": "jax"}
IMPLS_OF = {
    "tfode": ["tfode-xla", "tfode-graph"],
    "tfp": ["tfp-xla"],
    "torchdiffeq": ["torchdiffeq"],
    "diffrax": ["diffrax"],
}
IMPL_ORDER = ["tfode-xla", "tfode-graph", "tfode-xla per-sample", "tfode-graph per-sample", "tfp-xla", "torchdiffeq",
              "diffrax"]  # fmt: skip
# The f-loop whose per-evaluation time each implementation's overhead uses.
F_KEY = {
    "tfode-xla": "tf-xla",
    "tfode-graph": "tf-xla",
    "tfode-xla per-sample": "tf-xla",
    "tfode-graph per-sample": "tf-xla",
    "tfp-xla": "tf-xla",
    "torchdiffeq": "torch-eager",
    "diffrax": "jax-jit",
}
# The dispatch floor (trivial compiled call) of each implementation's framework.
FLOOR_KEY = {"tfode-xla": "tf-xla", "tfp-xla": "tf-xla", "diffrax": "jax-jit"}


# --------------------------------------------------------------------------- #
# Shared helpers (workers and parent)
# --------------------------------------------------------------------------- #


def _round_robin(calls, repeats, warmup=WARMUP):
    """``C.time_interleaved`` regrouped per callable: ``{name: {"wall": [ms...], "cpu": [ms...]}}``."""
    wall, cpu = C.time_interleaved(calls, repeats, warmup)
    return {name: {"wall": wall[name], "cpu": cpu[name]} for name in calls}


def _per_eval(t, iters=F_LOOP_ITERS):
    """Summaries (us per evaluation) of an f-loop's timings."""
    import numpy as np

    return {
        "cpu_us": float(np.median(t["cpu"])) * 1e3 / iters,
        "wall_min_us": float(np.min(t["wall"])) * 1e3 / iters,
        "wall_median_us": float(np.median(t["wall"])) * 1e3 / iters,
    }


def _floor(t):
    """Median CPU and wall ms of a trivial compiled call (the framework's dispatch floor)."""
    import numpy as np

    return {"cpu_ms": float(np.median(t["cpu"])), "wall_median_ms": float(np.median(t["wall"]))}


# --------------------------------------------------------------------------- #
# TensorFlow worker: tfode (XLA and graph) and TFP DormandPrince (XLA)
# --------------------------------------------------------------------------- #


def worker_tf(args, frameworks):
    try:
        tf = C.pin_tensorflow()
    except ImportError as err:
        return {"error": f"not installed ({err})"}
    found, missing = C.import_optional(frameworks, {"tfode": "tfode", "tfp": "tensorflow_probability"})
    tfode, tfp = found["tfode"], found["tfp"]

    def field(y, W1T, b1, W2T, b2):
        return tf.matmul(tf.tanh(tf.matmul(y, W1T) + b1), W2T) + b2

    versions = C.versions(tensorflow=tf, tfode=tfode, tfp=tfp)
    results = {"versions": versions, "missing": missing, "rows": [], "f_eval": {}, "floor": {}}

    t_span = tf.constant([0.0, 1.0])

    # Dispatch floor: calling an XLA tf.function that does (almost) nothing.
    noop = tf.function(lambda y: y + 1.0, jit_compile=True)
    probe = tf.zeros([256, 2])
    results["floor"]["tf-xla"] = _floor(_round_robin({"noop": lambda: noop(probe).numpy()}, 200, 10)["noop"])

    def make_f_loop():
        def loop(y, W1T, b1, W2T, b2):
            _, y = tf.while_loop(
                lambda i, y: i < F_LOOP_ITERS,
                lambda i, y: (i + 1, field(y, W1T, b1, W2T, b2)),
                (tf.constant(0), y),
            )
            return y

        return loop

    for size in args.sizes:
        data = C.load_workload(size, args.weights)
        y0 = tf.constant(data["y0"])
        W1T = tf.transpose(tf.constant(data["W1"]))  # transposed once, outside every solve
        W2T = tf.transpose(tf.constant(data["W2"]))
        b1 = tf.constant(data["b1"])
        b2 = tf.constant(data["b2"])
        params = (W1T, b1, W2T, b2)

        # One evaluation of f, as a compiled loop of F_LOOP_ITERS evaluations feeding y back.
        f_loop_xla = tf.function(make_f_loop(), jit_compile=True)
        f_loop_graph = tf.function(make_f_loop())
        ft = _round_robin(
            {
                "tf-xla": lambda f=f_loop_xla, y0=y0, params=params: f(y0, *params).numpy(),
                "tf-graph": lambda f=f_loop_graph, y0=y0, params=params: f(y0, *params).numpy(),
            },
            max(10, args.repeats // 2),
            warmup=1,
        )
        results["f_eval"][size] = {k: _per_eval(v) for k, v in ft.items()}

        tfode_fns = {}
        if tfode is not None:

            def tfode_solve(y0, rtol, atol, W1T, b1, W2T, b2):
                sol = tfode.solve(
                    lambda t, y: field(y, W1T, b1, W2T, b2),
                    y0,
                    t_span,
                    method="dopri5",
                    rtol=rtol,
                    atol=atol,
                    raise_on_failure=False,
                )
                s = sol.stats
                return sol.ys[-1], s.num_fn_evals, s.num_steps, s.num_rejected, s.status

            tfode_fns = {
                "tfode-xla": tf.function(tfode_solve, jit_compile=True),
                "tfode-graph": tf.function(tfode_solve),
            }
            if getattr(args, "per_sample", False):

                def tfode_per_sample(y0, rtol, atol, W1T, b1, W2T, b2):
                    # Every row of y0 its own problem: own steps, error norm and status; f gets t [B].
                    config = tfode.SolverConfig(method="dopri5", rtol=rtol, atol=atol, batch_axis=0)
                    sol = tfode.solve(lambda t, y: field(y, W1T, b1, W2T, b2), y0, t_span, config,
                                      raise_on_failure=False)  # fmt: skip
                    s = sol.stats
                    loop = tf.reduce_max(s.num_steps)  # loop iterations: the slowest sample's steps
                    initial = s.num_fn_evals[0] - 6 * s.num_steps[0]
                    # nfe: evaluations of f on the batch; steps: the loop iterations.
                    return (sol.ys[-1], 6 * loop + initial, loop, tf.reduce_max(s.num_rejected),
                            tf.reduce_max(s.status), tf.reduce_mean(tf.cast(s.num_steps, tf.float64)),
                            tf.reduce_min(s.num_steps))  # fmt: skip

                tfode_fns["tfode-xla per-sample"] = tf.function(tfode_per_sample, jit_compile=True)
                tfode_fns["tfode-graph per-sample"] = tf.function(tfode_per_sample)

        for tol in args.tols:
            calls, info = {}, {}
            r = tf.constant(tol, tf.float32)
            a = tf.constant(tol, tf.float32)
            for name, fn in tfode_fns.items():

                def call(fn=fn, y0=y0, r=r, a=a, params=params):
                    y1, nfe, steps, rej, status, *per_sample = fn(y0, r, a, *params)
                    stats = {"nfe": nfe, "steps": steps, "rejected": rej, "status": status}
                    if per_sample:  # the samples' mean and min attempted steps
                        stats.update(steps_mean=per_sample[0], steps_min=per_sample[1])
                    return y1.numpy(), stats

                calls[name] = call
            if tfp is not None:
                solver = tfp.math.ode.DormandPrince(rtol=tol, atol=tol)

                @tf.function(jit_compile=True)
                def tfp_solve(y0, W1T, b1, W2T, b2, solver=solver):
                    res = solver.solve(lambda t, y: field(y, W1T, b1, W2T, b2), 0.0, y0, solution_times=[1.0])
                    d = res.diagnostics
                    return res.states[-1], d.num_ode_fn_evaluations, d.status

                def call_tfp(fn=tfp_solve, y0=y0, params=params):
                    y1, nfe, status = fn(y0, *params)
                    return y1.numpy(), {"nfe": nfe, "status": status}

                calls["tfp-xla"] = call_tfp
            for name, call in calls.items():
                (y1, stats), first = C.first_call_ms(call)
                info[name] = (y1, {k: float(v) if k == "steps_mean" else int(v) for k, v in stats.items()}, first)
            timings = _round_robin(calls, args.repeats)
            for name in calls:
                y1, stats, first = info[name]
                results["rows"].append(
                    dict(size=size, tol=tol, impl=name, first_call_ms=first, y1=y1.tolist(), **timings[name], **stats)
                )
    return results


# --------------------------------------------------------------------------- #
# PyTorch worker: torchdiffeq
# --------------------------------------------------------------------------- #


def worker_torch(args, frameworks):
    try:
        torch = C.pin_torch()
        import torchdiffeq
        from torchdiffeq import odeint
    except ImportError as err:
        return {"error": f"not installed ({err})"}

    class Field(torch.nn.Module):
        def __init__(self, d):
            super().__init__()
            # Plain buffers (no requires_grad): this is a forward-only benchmark.
            for k in ("W1", "b1", "W2", "b2"):
                self.register_buffer(k, torch.from_numpy(d[k]))
            self.nfe = 0

        def forward(self, t, y):
            self.nfe += 1
            return torch.tanh(y @ self.W1.T + self.b1) @ self.W2.T + self.b2

    results = {
        "versions": C.versions(torch=torch, torchdiffeq=torchdiffeq),
        "rows": [],
        "f_eval": {},
    }
    t_span = torch.tensor([0.0, 1.0])
    for size in args.sizes:
        data = C.load_workload(size, args.weights)
        func = Field(data)
        y0 = torch.from_numpy(data["y0"])

        def f_loop(func=func, y0=y0):
            with torch.no_grad():
                y = y0
                for _ in range(F_LOOP_ITERS):
                    y = func(0.0, y)
                return y.numpy()

        ft = _round_robin({"torch-eager": f_loop}, max(5, args.repeats // 4), warmup=1)
        results["f_eval"][size] = {k: _per_eval(v) for k, v in ft.items()}
        for tol in args.tols:

            def call(func=func, y0=y0, tol=tol):
                with torch.no_grad():
                    return odeint(func, y0, t_span, method="dopri5", rtol=tol, atol=tol)[-1].numpy()

            func.nfe = 0
            y1, first = C.first_call_ms(call)
            nfe = func.nfe
            timings = _round_robin({"torchdiffeq": call}, args.repeats)["torchdiffeq"]
            row = dict(size=size, tol=tol, impl="torchdiffeq", first_call_ms=first, y1=y1.tolist(), nfe=int(nfe))
            results["rows"].append(dict(row, **timings))
    return results


# --------------------------------------------------------------------------- #
# JAX worker: diffrax
# --------------------------------------------------------------------------- #


def worker_jax(args, frameworks):
    try:
        jax, jnp, diffrax = C.jax_setup(False)
    except ImportError as err:
        return {"error": f"not installed ({err})"}
    import numpy as np

    field = C.jax_mlp_field(jnp)

    results = {
        "versions": C.versions(jax=jax, diffrax=diffrax),
        "rows": [],
        "f_eval": {},
        "floor": {},
    }
    noop = jax.jit(lambda y: y + 1.0)
    probe = jnp.zeros([256, 2])
    results["floor"]["jax-jit"] = _floor(
        _round_robin({"noop": lambda: np.asarray(noop(probe).block_until_ready())}, 200, 10)["noop"]
    )

    counter = [0]

    def _bump():
        counter[0] += 1

    def counted_field(t, y, p):
        jax.debug.callback(_bump)
        return field(t, y, p)

    def make_solve(tol, vf):
        term = diffrax.ODETerm(vf)

        @jax.jit
        def solve(y0, p):
            sol = diffrax.diffeqsolve(
                term,
                diffrax.Dopri5(),
                t0=0.0,
                t1=1.0,
                dt0=None,
                y0=y0,
                args=p,
                stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol),
                saveat=diffrax.SaveAt(t1=True),
                max_steps=10_000,
            )
            return sol.ys[-1], sol.stats["num_steps"], sol.stats["num_rejected_steps"], sol.result._value

        return solve

    for size in args.sizes:
        data = C.load_workload(size, args.weights)
        p = tuple(jnp.asarray(data[k]) for k in ("W1", "b1", "W2", "b2"))
        y0 = jnp.asarray(data["y0"])

        @jax.jit
        def f_loop(y, p):
            return jax.lax.fori_loop(0, F_LOOP_ITERS, lambda i, y: field(0.0, y, p), y)

        ft = _round_robin(
            {"jax-jit": lambda y0=y0, p=p: np.asarray(f_loop(y0, p).block_until_ready())},
            max(10, args.repeats // 2),
            warmup=1,
        )
        results["f_eval"][size] = {k: _per_eval(v) for k, v in ft.items()}
        for tol in args.tols:
            counted = make_solve(tol, counted_field)
            counter[0] = 0
            jax.block_until_ready(counted(y0, p))
            jax.effects_barrier()
            nfe = counter[0]

            solve = make_solve(tol, field)

            def call(solve=solve, y0=y0, p=p):
                y1, steps, rej, res = solve(y0, p)
                return np.asarray(y1.block_until_ready()), steps, rej, res

            (y1, steps, rej, res), first = C.first_call_ms(call)
            timings = _round_robin({"diffrax": call}, args.repeats)["diffrax"]
            results["rows"].append(
                dict(
                    size=size,
                    tol=tol,
                    impl="diffrax",
                    first_call_ms=first,
                    y1=y1.tolist(),
                    nfe=int(nfe),
                    steps=int(steps),
                    rejected=int(rej),
                    status=int(np.asarray(res)),
                    **timings,
                )
            )
    return results


WORKERS = {"tf": (worker_tf, "tf"), "torch": (worker_torch, "peer"), "jax": (worker_jax, "peer")}


# --------------------------------------------------------------------------- #
# Parent: reference, subprocesses, table
# --------------------------------------------------------------------------- #


def reference(weights, size):
    """y(1) in float64 from scipy DOP853 at rtol=atol=1e-12 (flattened batch)."""
    import numpy as np
    from scipy.integrate import solve_ivp

    d = {k: v.astype(np.float64) for k, v in C.load_workload(size, weights).items()}
    W1T, W2T, b1, b2 = d["W1"].T.copy(), d["W2"].T.copy(), d["b1"], d["b2"]
    shape = d["y0"].shape

    def rhs(t, y):
        y = y.reshape(shape)
        return (np.tanh(y @ W1T + b1) @ W2T + b2).ravel()

    sol = solve_ivp(rhs, (0.0, 1.0), d["y0"].ravel(), method="DOP853", rtol=1e-12, atol=1e-12)
    assert sol.success, sol.message
    return sol.y[:, -1].reshape(shape), int(sol.nfev)


def add_args(p):
    p.add_argument("--sizes", default="d2,d32")
    p.add_argument("--tols", default="1e-3,1e-5,1e-7")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--frameworks", default="tfode,tfp,torchdiffeq,diffrax")
    p.add_argument("--quick", action="store_true", help="5 timed runs instead of --repeats")
    p.add_argument("--per-sample", action="store_true",
                   help="add tfode per-sample rows (SolverConfig(batch_axis=0)) next to the joint ones")  # fmt: skip


def report(args, ctx):
    args.sizes = C.split_list(args.sizes)
    args.tols = C.split_list(args.tols, float)
    frameworks = C.split_list(args.frameworks)
    unknown = set(frameworks) - set(WORKER_OF)
    if unknown:
        raise SystemExit(f"unknown frameworks {sorted(unknown)}; choose from {sorted(WORKER_OF)}")
    if args.quick:
        args.repeats = min(args.repeats, 5)

    import numpy as np

    # Reference solutions first (numpy/scipy only, in this process).
    refs = {}
    for size in args.sizes:
        t0 = time.perf_counter()
        refs[size] = reference(args.weights, size)
        print(
            f"[w1_forward] reference {size}: DOP853 1e-12, {refs[size][1]} evals, {time.perf_counter() - t0:.1f}s",
            file=sys.stderr,
            flush=True,
        )

    by_worker = C.group_by_worker(frameworks, WORKER_OF)
    raw = {kind: ctx.run(kind, fws) for kind, fws in by_worker.items()}

    # Collect rows.
    rows, notes, versions, f_eval, floors = {}, [], {}, {}, {}
    for kind, res in raw.items():
        if "error" in res:
            notes.extend(C.impl_notes(by_worker[kind], res["error"], IMPLS_OF))
            continue
        versions.update(res.get("versions", {}))
        for fw, msg in res.get("missing", {}).items():
            notes.extend(C.impl_notes([fw], msg, IMPLS_OF))
        for size, d in res.get("f_eval", {}).items():
            f_eval.setdefault(size, {}).update(d)
        floors.update(res.get("floor", {}))
        for row in res["rows"]:
            y1 = np.asarray(row.pop("y1"), dtype=np.float64)
            row["max_err"] = float(np.max(np.abs(y1 - refs[row["size"]][0])))
            wall, cpu = np.asarray(row["wall"]), np.asarray(row["cpu"])
            row.update(
                wall_median_ms=float(np.median(wall)),
                wall_min_ms=float(wall.min()),
                wall_max_ms=float(wall.max()),
                cpu_median_ms=float(np.median(cpu)),
            )
            fe = f_eval[row["size"]][F_KEY[row["impl"]]]
            row["overhead"] = row["cpu_median_ms"] / (row["nfe"] * fe["cpu_us"] * 1e-3)
            row["overhead_wall_min"] = row["wall_min_ms"] / (row["nfe"] * fe["wall_min_us"] * 1e-3)
            rows[(row["size"], row["tol"], row["impl"])] = row
    for (size, tol, _impl), r in rows.items():
        tp = rows.get((size, tol, "tfp-xla"))
        r["vs_tfp"] = r["cpu_median_ms"] / tp["cpu_median_ms"] if tp else None
        r["vs_tfp_wall_median"] = r["wall_median_ms"] / tp["wall_median_ms"] if tp else None

    # Table.
    lines = [
        "| size | tol | impl | wall median ms | wall min–max | CPU ms | NFE | steps | max abs err | vs TFP-XLA "
        "| overhead |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in args.sizes:
        for tol in args.tols:
            for impl in IMPL_ORDER:
                r = rows.get((size, tol, impl))
                if r is None:
                    continue
                ratio = f"{r['vs_tfp']:.2f}" if r["vs_tfp"] is not None else "–"
                nfe = str(r["nfe"]) + ("" if r.get("status", 0) == 0 else f" (status {r['status']})")
                steps = str(r["steps"]) if "steps" in r else "–"
                lines.append(
                    f"| {size} | {tol:g} | {impl} | {C.fmt_ms(r['wall_median_ms'])} | "
                    f"{C.fmt_ms(r['wall_min_ms'])}–{C.fmt_ms(r['wall_max_ms'])} | {C.fmt_ms(r['cpu_median_ms'])} | "
                    f"{nfe} | {steps} | {r['max_err']:.2e} | {ratio} | {r['overhead']:.2f} |"
                )
    print("\n".join(lines))
    print()
    print(
        "Targets (tfode-xla): NFE <= torchdiffeq at the same tol with max abs err <= 2x torchdiffeq's; "
        "overhead <= 1.3 on every row; time <= 0.5x TFP-XLA (D=2) and <= 0.75x (D=32); stretch: <= diffrax. "
        "(vs TFP-XLA and overhead use CPU-time medians.)"
    )
    print()

    # Target check.
    verdict = []
    for size in args.sizes:
        for tol in args.tols:
            r = rows.get((size, tol, "tfode-xla"))
            if r is None:
                continue
            items = []
            td = rows.get((size, tol, "torchdiffeq"))
            if td:
                ok = r["nfe"] <= td["nfe"] and r["max_err"] <= 2 * td["max_err"]
                err_ratio = r["max_err"] / td["max_err"]
                items.append(f"NFE {r['nfe']} vs {td['nfe']} (err x{err_ratio:.2f}) {'met' if ok else 'MISSED'}")
            items.append(f"overhead {r['overhead']:.2f} {'met' if r['overhead'] <= 1.3 else 'MISSED'}")
            if r["vs_tfp"] is not None:
                lim = 0.5 if size == "d2" else 0.75
                items.append(f"vs TFP {r['vs_tfp']:.2f} (<= {lim}) {'met' if r['vs_tfp'] <= lim else 'MISSED'}")
            dx = rows.get((size, tol, "diffrax"))
            if dx:
                q = r["cpu_median_ms"] / dx["cpu_median_ms"]
                items.append(f"vs diffrax {q:.2f} {'met' if q <= 1 else 'MISSED'} (stretch)")
            verdict.append(f"- {size} {tol:g}: " + "; ".join(items))
    per_sample = []
    for (size, tol, impl), r in sorted(rows.items()):
        joint = rows.get((size, tol, impl.replace(" per-sample", "")))
        if impl.endswith(" per-sample") and joint:
            q = r["cpu_median_ms"] / joint["cpu_median_ms"]
            per_sample.append(f"- {size} {tol:g} {impl}: CPU {C.fmt_ms(r['cpu_median_ms'])} ms / joint "
                              f"{C.fmt_ms(joint['cpu_median_ms'])} ms = {q:.2f} (target <= 1.3: "
                              f"{'met' if q <= 1.3 else 'MISSED'}); loop iterations {r['steps']} vs {joint['steps']} "
                              f"(per-sample steps min {r.get('steps_min')}, mean {r.get('steps_mean', 0):.1f}), "
                              f"max abs err {r['max_err']:.2e} vs {joint['max_err']:.2e}")  # fmt: skip
    if per_sample:
        print("Per-sample against joint mode (same process, CPU medians):")
        print("\n".join(per_sample))
        print()
    if verdict:
        print("Target check (tfode-xla):")
        print("\n".join(verdict))
        print()

    # Where the time goes.
    if f_eval:
        print("One evaluation of f, compiled loop of 1000 (us per evaluation: CPU median / wall min):")
        for size in args.sizes:
            d = f_eval.get(size, {})
            per_eval = (f"{k} {v['cpu_us']:.1f} / {v['wall_min_us']:.1f}" for k, v in sorted(d.items()))
            print(f"- {size}: " + ", ".join(per_eval))
        for k, v in sorted(floors.items()):
            print(f"- dispatch floor, trivial {k} call returning a [256, 2] array: {v['cpu_ms'] * 1e3:.0f} us CPU")
        print()
        diag = []

        def row_order(kv):
            size, tol, impl = kv[0]
            return size, tol, IMPL_ORDER.index(impl)

        for (size, tol, impl), r in sorted(rows.items(), key=row_order):
            if impl not in FLOOR_KEY:
                continue
            # TFP reports no step count; its NFE is 6 per attempted step (fixed first step, no extra evaluations).
            steps = r.get("steps") or r["nfe"] / 6.0
            fe = f_eval[size][F_KEY[impl]]["cpu_us"] * 1e-3
            rest = r["cpu_median_ms"] - floors[FLOOR_KEY[impl]]["cpu_ms"] - r["nfe"] * fe
            diag.append(
                f"{size} {tol:g} {impl}: NFE*t_f {r['nfe'] * fe:.2f} ms, "
                f"rest {rest:.2f} ms = {rest / steps * 1e3:.0f} us/step"
            )
        if diag:
            print("CPU time not spent in f (median - dispatch floor - NFE * t_f), per attempted step:")
            print("\n".join(f"- {d}" for d in diag))
            print()
    C.print_notes_and_versions(notes, versions)
    return {"rows": list(rows.values()), "f_eval": f_eval, "floors": floors, "notes": notes, "versions": versions}
