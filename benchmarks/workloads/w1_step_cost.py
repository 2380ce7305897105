"""W1 diagnostic: fixed cost and per-step cost of each solver.

For one W1 size, solves at many tolerances (so the number of steps varies) and
fits  CPU time = fixed + per_step * steps  by least squares, separately for
tfode-xla, tfp-xla (same process, timed round-robin) and diffrax (its own
process). "non-f per step" = per_step - 6 * t_f, with t_f one evaluation of f
from a compiled loop of 1000 evaluations (dopri5 costs 6 new evaluations per
attempted step). TFP reports no step count; its steps are taken as NFE / 6.
Times are process CPU time (time.process_time), medians over --repeats calls,
so that pre-emption on a shared machine does not count.

Also times the 1e-5 solve K=20 times inside one XLA call, to split the
per-call cost (dispatch, launch) from the in-program cost of a solve.

Usage: python -m benchmarks.run W1-cost [--size d2] [--repeats 15]
"""

from __future__ import annotations

from benchmarks import _common as C
from benchmarks.workloads import w1_forward as wf

TOLS = [3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7, 1e-7]


def _tf(args, frameworks):
    tf = C.pin_tensorflow()
    import numpy as np
    import tensorflow_probability as tfp

    import tfode

    d = C.load_workload(args.size, args.weights)
    y0 = tf.constant(d["y0"])
    p = (
        tf.transpose(tf.constant(d["W1"])),
        tf.constant(d["b1"]),
        tf.transpose(tf.constant(d["W2"])),
        tf.constant(d["b2"]),
    )

    def field(y, W1T, b1, W2T, b2):
        return tf.matmul(tf.tanh(tf.matmul(y, W1T) + b1), W2T) + b2

    @tf.function(jit_compile=True)
    def f_loop(y, *p):
        return tf.while_loop(lambda i, y: i < wf.F_LOOP_ITERS, lambda i, y: (i + 1, field(y, *p)), (0, y))[1]

    @tf.function(jit_compile=True)
    def tfode_solve(y0, r, a, *p):
        s = tfode.solve(lambda t, y: field(y, *p), y0, tf.constant([0.0, 1.0]), rtol=r, atol=a, raise_on_failure=False)
        return s.ys[-1], s.stats.num_steps, s.stats.num_fn_evals

    noop = tf.function(lambda y: y + 1.0, jit_compile=True)
    t = wf._round_robin({"f": lambda: f_loop(y0, *p).numpy(), "noop": lambda: noop(y0).numpy()}, 10, 1)
    out = {"t_f_us": wf._per_eval(t["f"])["cpu_us"], "floor_ms": float(np.median(t["noop"]["cpu"])), "points": []}
    for tol in TOLS:
        r = tf.constant(tol)
        solver = tfp.math.ode.DormandPrince(rtol=tol, atol=tol)

        @tf.function(jit_compile=True)
        def tfp_solve(y0, *p, solver=solver):
            res = solver.solve(lambda t, y: field(y, *p), 0.0, y0, solution_times=[1.0])
            return res.states[-1], res.diagnostics.num_ode_fn_evaluations

        _, steps, nfe = tfode_solve(y0, r, r, *p)
        _, tnfe = tfp_solve(y0, *p)
        t = wf._round_robin(
            {
                "tfode-xla": lambda r=r: tfode_solve(y0, r, r, *p)[0].numpy(),
                "tfp-xla": lambda tfp_solve=tfp_solve: tfp_solve(y0, *p)[0].numpy(),
            },
            args.repeats,
        )
        tfode_cpu, tfp_cpu = float(np.median(t["tfode-xla"]["cpu"])), float(np.median(t["tfp-xla"]["cpu"]))
        out["points"].append({"tol": tol, "impl": "tfode-xla", "steps": int(steps), "nfe": int(nfe), "cpu": tfode_cpu})
        out["points"].append({"tol": tol, "impl": "tfp-xla", "steps": int(tnfe) / 6, "nfe": int(tnfe), "cpu": tfp_cpu})
    # The same solve at 1e-5, K times inside one XLA call (y0 nudged per pass so
    # nothing is hoisted): its CPU time / K is the in-program cost of one solve,
    # without the per-call dispatch.
    K = 20
    r = tf.constant(1e-5)
    solver = tfp.math.ode.DormandPrince(rtol=1e-5, atol=1e-5)

    def tfp_state(y, *p):
        return solver.solve(lambda t, y: field(y, *p), 0.0, y, solution_times=[1.0]).states[-1]

    def repeat(solve):
        def many(y, *extra):
            def body(i, acc):
                return i + 1, acc + solve(y + 1e-6 * tf.cast(i, tf.float32), *extra)

            return tf.while_loop(lambda i, acc: i < K, body, (0, tf.zeros_like(y)))[1]

        return tf.function(many, jit_compile=True)

    one_tfp = tf.function(tfp_state, jit_compile=True)
    many_tfode = repeat(lambda y, r, a, *p: tfode_solve.python_function(y, r, a, *p)[0])
    many_tfp = repeat(tfp_state)
    t = wf._round_robin(
        {
            "tfode-xla, 1 solve per call": lambda: tfode_solve(y0, r, r, *p)[0].numpy(),
            f"tfode-xla, {K} solves in 1 call, per solve": lambda: many_tfode(y0, r, r, *p).numpy(),
            "tfp-xla, 1 solve per call": lambda: one_tfp(y0, *p).numpy(),
            f"tfp-xla, {K} solves in 1 call, per solve": lambda: many_tfp(y0, *p).numpy(),
            "trivial XLA call (dispatch floor)": lambda: noop(y0).numpy(),
        },
        args.repeats,
    )
    out["amortised"] = {k: float(np.median(v["cpu"])) / (K if " in 1 call" in k else 1) for k, v in t.items()}
    return out


def _jax(args, frameworks):
    jax, jnp, diffrax = C.jax_setup(False)
    import numpy as np

    d = C.load_workload(args.size, args.weights)
    y0 = jnp.asarray(d["y0"])
    p = tuple(jnp.asarray(d[k]) for k in ("W1", "b1", "W2", "b2"))

    field = C.jax_mlp_field(jnp)

    f_loop = jax.jit(lambda y, p: jax.lax.fori_loop(0, wf.F_LOOP_ITERS, lambda i, y: field(0.0, y, p), y))
    noop = jax.jit(lambda y: y + 1.0)
    t = wf._round_robin(
        {
            "f": lambda: np.asarray(f_loop(y0, p).block_until_ready()),
            "noop": lambda: np.asarray(noop(y0).block_until_ready()),
        },
        10,
        1,
    )
    out = {"t_f_us": wf._per_eval(t["f"])["cpu_us"], "floor_ms": float(np.median(t["noop"]["cpu"])), "points": []}
    for tol in TOLS:

        @jax.jit
        def solve(y0, p, tol=tol):
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(field),
                diffrax.Dopri5(),
                0.0,
                1.0,
                None,
                y0,
                args=p,
                stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol),
                saveat=diffrax.SaveAt(t1=True),
            )
            return sol.ys[-1], sol.stats["num_steps"]

        _, steps = solve(y0, p)
        t = wf._round_robin(
            {"diffrax": lambda solve=solve: np.asarray(solve(y0, p)[0].block_until_ready())}, args.repeats
        )
        cpu = float(np.median(t["diffrax"]["cpu"]))
        nfe = 6 * int(steps) + 1
        out["points"].append({"tol": tol, "impl": "diffrax", "steps": int(steps), "nfe": nfe, "cpu": cpu})
    return out


WORKERS = {"tf": (_tf, "tf"), "jax": (_jax, "peer")}


def add_args(p):
    p.add_argument("--size", default="d2")
    p.add_argument("--repeats", type=int, default=15)


def report(args, ctx):
    import numpy as np

    print(f"W1 {args.size}: CPU ms = fixed + per_step * steps (least squares over {len(TOLS)} tolerances)")
    print("| impl | t_f us | dispatch floor us | fixed ms | per step us | 6 t_f us | non-f per step us | steps range |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    details, amortised, raw = [], None, {}
    for kind in ("tf", "jax"):
        res = ctx.run(kind)
        raw[kind] = res
        if "error" in res:
            print(f"| {kind} worker failed: {res['error']} |")
            continue
        for impl in sorted({q["impl"] for q in res["points"]}):
            pts = [q for q in res["points"] if q["impl"] == impl]
            x = np.array([q["steps"] for q in pts], float)
            y = np.array([q["cpu"] for q in pts])
            per_step, fixed = np.polyfit(x, y, 1)
            tf6 = 6 * res["t_f_us"]
            print(
                f"| {impl} | {res['t_f_us']:.1f} | {res['floor_ms'] * 1e3:.0f} | {fixed:.2f} | {per_step * 1e3:.0f} | "
                f"{tf6:.0f} | {per_step * 1e3 - tf6:.0f} | {x.min():.0f}–{x.max():.0f} |"
            )
            points = (f"{q['tol']:.0e} {q['steps']:.0f} steps {q['cpu']:.2f} ms" for q in pts)
            details.append(f"- {impl}: " + ", ".join(points))
        if "amortised" in res:
            amortised = res["amortised"]
    print()
    print("\n".join(details))
    if amortised:
        print()
        print("CPU ms per solve at rtol=atol=1e-5, with and without per-call dispatch (TF process, round-robin):")
        print("\n".join(f"- {k}: {v:.2f}" for k, v in amortised.items()))
    return raw
