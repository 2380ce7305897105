"""W6: a heterogeneous batch, Van der Pol with one stiffness per sample, joint and per-sample step control.

Problem: ``x'' = mu (1 - x^2) x' - x`` as ``y = (x, v)``, ``y' = (v, mu (1 - x^2) v - x)``;
B = 256 samples, ``mu`` log-uniform in [0.5, 20] (``--seed``), ``y0 = (2, 0)``,
t in [0, 10] with 50 output times (``linspace``), dopri5, rtol = atol = tol
for tol in ``--tols`` (1e-3, 1e-5), float32 and float64. Reference: scipy
DOP853 at rtol = atol = 1e-12 in float64 (the whole batch as one system).

Modes:
    joint       one step size for the whole batch (error norm over every sample):
                tfode's default, torchdiffeq, diffrax on a ``[B, 2]`` state.
    per-sample  one step size per sample in one batched loop: tfode
                ``solve(f, y0, t, tfode.SolverConfig(..., batch_axis=0))`` (f gets
                ``t`` of shape ``[B]``; ``num_steps``, ``num_fn_evals``, ``status``
                are ``[B]``), torchode (its only mode), ``jax.vmap`` of diffrax's solve.
    alone       each sample solved by itself (B = 1, 256 solves in a row): tfode's
                per-sample reference; its time is the sum of the 256 solves.

Columns: wall / CPU median ms per batch solve (alone: per 256 solves, one pass);
loop iterations (batched loop trips: joint = attempted steps, per-sample = the
slowest sample's); steps per sample (attempted; max and mean); NFE (batched
evaluations of f, as the implementation calls f; alone: summed over the 256
solves; tfode per-sample: loop iterations x 6 + the initial evaluations, see
``batched_nfe``, with the per-sample sum of ``num_fn_evals`` in the checks below
the table); worst err / tol = max over samples of (max abs error over the 50 times
and both components) / tol; "hard: batch / alone" = for the sample that needs
the most steps alone (tfode B = 1 solves; largest mu otherwise), its error in
the batch solve over its error when the same implementation solves it alone.
Checks below the table: tfode per-sample against the B = 1 solves (steps per
sample equal, max abs difference of the outputs) and its CPU time over the
joint, diffrax-vmap and torchode rows of the same dtype and tolerance.

NFE: tfode from its stats; torchdiffeq by a counter in the module (steps derived
as (NFE - 2) / 6: two evaluations for the initial step, six per dopri5 step);
torchode ``stats["n_f_evals"]``; diffrax by a ``jax.debug.callback`` counter in an
untimed run (under ``vmap`` it fires once per batched call).
"""

from __future__ import annotations

# Closures defined in the per-tolerance loops are called within the same iteration.
# ruff: noqa: B023
import numpy as np

from benchmarks import _common as C

WORKER_OF = {"tfode": "tf", "torchode": "torch", "torchdiffeq": "torch", "diffrax": "jax"}
ORDER = ("tfode-xla", "tfode-graph", "tfode-xla per-sample", "tfode-graph per-sample", "tfode-xla alone",
         "torchdiffeq", "torchode", "torchode-compile", "diffrax", "diffrax-vmap")  # fmt: skip
MODE = {"tfode-xla": "joint", "tfode-graph": "joint", "tfode-xla per-sample": "per-sample",
        "tfode-graph per-sample": "per-sample", "tfode-xla alone": "alone (B=1)", "torchdiffeq": "joint",
        "torchode": "per-sample", "torchode-compile": "per-sample", "diffrax": "joint",
        "diffrax-vmap": "per-sample"}  # fmt: skip
PER_SAMPLE_TFODE = ("tfode-xla per-sample", "tfode-graph per-sample")
MAX_STEPS = 100_000


def add_args(p):
    p.add_argument("--frameworks", default="tfode,torchdiffeq,torchode,diffrax")
    p.add_argument("--tols", default="1e-3,1e-5")
    p.add_argument("--dtypes", default="float32,float64")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=6)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-torch-compile", action="store_true", help="skip torch.compile(solver.solve)")
    p.add_argument("--quick", action="store_true", help="2 timed runs (not a measurement)")


def make_problem(seed, batch):
    """``(mu [B] float64, t [50] float64)``: mu log-uniform in [0.5, 20]."""
    rng = np.random.default_rng(seed)
    mu = np.exp(rng.uniform(np.log(0.5), np.log(20.0), batch))
    return mu, np.linspace(0.0, 10.0, 50)


def reference(mu, t):
    """``[B, 50, 2]`` float64: scipy DOP853 at rtol = atol = 1e-12, the batch as one system."""
    from scipy.integrate import solve_ivp

    def rhs(_, y):
        x, v = y[0::2], y[1::2]
        out = np.empty_like(y)
        out[0::2], out[1::2] = v, mu * (1 - x * x) * v - x
        return out

    y0 = np.tile([2.0, 0.0], len(mu))
    sol = solve_ivp(rhs, (t[0], t[-1]), y0, method="DOP853", t_eval=t, rtol=1e-12, atol=1e-12)
    assert sol.success, sol.message
    return sol.y.T.reshape(len(t), len(mu), 2).transpose(1, 0, 2)


def _key(dtype, tol):
    return f"{dtype}/{tol!r}"


def _timed(calls, repeats):
    wall, cpu = C.time_interleaved(calls, repeats, warmup=1)
    return {n: {"wall_ms": wall[n], "cpu_ms": cpu[n]} for n in calls}


# --------------------------------------------------------------------------- #
# TensorFlow: tfode joint, per-sample (when available), alone
# --------------------------------------------------------------------------- #


def batched_nfe(nfe, steps, stages=6):
    """Evaluations of f on the batch in a per-sample solve, from its ``[B]`` counters.

    Every loop iteration evaluates f once per stage on the whole batch, and the
    loop runs as many iterations as the slowest sample's attempted steps, so the
    batched count is ``max(steps) * stages`` plus the initial evaluations
    (``nfe - stages * steps``, the same for every sample).
    """
    nfe, steps = np.asarray(nfe, np.int64), np.asarray(steps, np.int64)
    initial = int(nfe.reshape(-1)[0] - stages * steps.reshape(-1)[0])
    return int(steps.max()) * stages + initial


def worker_tf(args, frameworks):
    tf = C.pin_tensorflow()
    import tfode

    mu64, t64 = make_problem(args.seed, args.batch)

    def field(t, y, mu):
        x, v = y[:, 0], y[:, 1]
        return tf.stack([v, mu * (1 - x * x) * v - x], axis=1)

    def joint(y0, t, mu, rtol, atol):
        sol = tfode.solve(field, y0, t, method="dopri5", rtol=rtol, atol=atol, args=(mu,),
                          options={"max_num_steps": MAX_STEPS}, raise_on_failure=False)  # fmt: skip
        s = sol.stats
        return sol.ys, s.num_fn_evals, s.num_steps, s.num_steps, s.status

    def per_sample(y0, t, mu, rtol, atol):
        # Per-sample mode: f gets t [B]; the stats are [B]; ys is [N, B, 2] as in joint mode.
        config = tfode.SolverConfig(method="dopri5", rtol=rtol, atol=atol, max_num_steps=MAX_STEPS, batch_axis=0)
        sol = tfode.solve(field, y0, t, config, args=(mu,), raise_on_failure=False)
        s = sol.stats
        return sol.ys, s.num_fn_evals, s.num_steps, tf.reduce_max(s.num_steps), s.status

    fns = {
        "tfode-xla": tf.function(joint, jit_compile=True),
        "tfode-graph": tf.function(joint),
        "tfode-xla per-sample": tf.function(per_sample, jit_compile=True),
        "tfode-graph per-sample": tf.function(per_sample),
    }

    rows, arrays = [], {}
    for dtype in args.dtypes:
        dt = tf.as_dtype(dtype)
        t = tf.constant(t64, dt)
        mu = tf.constant(mu64, dt)
        y0 = tf.constant(np.tile([[2.0, 0.0]], (args.batch, 1)), dt)
        for tol in args.tols:
            tol_t = tf.constant(tol, dt)
            calls, out = {}, {}
            for name, fn in fns.items():

                def call(fn=fn):
                    return tuple(x.numpy() for x in fn(y0, t, mu, tol_t, tol_t))

                out[name], first = C.first_call_ms(call)
                calls[name] = call
                ys, nfe, steps, loop, status = out[name]
                row = dict(impl=name, dtype=dtype, tol=tol, first_call_ms=first, loop_iters=int(np.max(loop)),
                           status=int(np.max(status)))  # fmt: skip
                if np.ndim(nfe):  # per-sample: [B] counters
                    row.update(nfe=batched_nfe(nfe, steps), nfe_per_sample_sum=int(np.sum(nfe)),
                               statuses=np.asarray(status).tolist())  # fmt: skip
                else:
                    row.update(nfe=int(nfe))
                row["steps"] = np.broadcast_to(steps, [args.batch]).astype(np.int64).tolist()
                arrays[f"{name}|{_key(dtype, tol)}"] = [np.transpose(ys, (1, 0, 2))]
                rows.append(row)
            timings = _timed(calls, args.repeats)
            for r in rows[-len(calls) :]:
                r.update(timings[r["impl"]])

            # Alone: every sample by itself, B = 1, with the joint function (one trace per dtype).
            fn = fns["tfode-xla"]
            steps, nfe, ys_all = [], 0, []
            fn(y0[:1], t, mu[:1], tol_t, tol_t)  # the B = 1 trace + compile, untimed
            c0, w0 = C.time.process_time(), C.time.perf_counter()
            for i in range(args.batch):
                ys, n, s, _, _ = fn(y0[i : i + 1], t, mu[i : i + 1], tol_t, tol_t)
                ys_all.append(ys.numpy()[:, 0])
                steps.append(int(s))
                nfe += int(n)
            wall, cpu = (C.time.perf_counter() - w0) * 1e3, (C.time.process_time() - c0) * 1e3
            arrays[f"tfode-xla alone|{_key(dtype, tol)}"] = [np.stack(ys_all)]
            rows.append(dict(impl="tfode-xla alone", dtype=dtype, tol=tol, nfe=nfe, loop_iters=int(np.sum(steps)),
                             steps=steps, wall_ms=[wall], cpu_ms=[cpu], status=0))  # fmt: skip
            # The per-sample function at B = 1 on every sample (untimed): per-sample mode's own single-sample solve.
            fn = fns["tfode-xla per-sample"]
            ys_all, steps = [], []
            for i in range(args.batch):
                ys, _, s, _, _ = fn(y0[i : i + 1], t, mu[i : i + 1], tol_t, tol_t)
                ys_all.append(ys.numpy()[:, 0])
                steps.append(int(s[0]))
            arrays[f"tfode-xla per-sample B=1|{_key(dtype, tol)}"] = [np.stack(ys_all)]
            arrays[f"tfode-xla per-sample B=1 steps|{_key(dtype, tol)}"] = [np.asarray(steps)]
    C.save_grads(args._out + ".npz", arrays)
    return {"versions": C.versions(tensorflow=tf, tfode=tfode), "rows": rows}


# --------------------------------------------------------------------------- #
# PyTorch: torchode (per-sample; eager and torch.compile), torchdiffeq (joint)
# --------------------------------------------------------------------------- #


def worker_torch(args, frameworks):
    torch = C.pin_torch()
    mu64, t64 = make_problem(args.seed, args.batch)
    found, missing = C.import_optional(frameworks, {"torchode": "torchode", "torchdiffeq": "torchdiffeq"})
    to, tdq = found["torchode"], found["torchdiffeq"]
    rows, arrays, notes = [], {}, dict(missing)

    class Field(torch.nn.Module):
        def __init__(self, mu):
            super().__init__()
            self.mu, self.nfe = mu, 0

        def forward(self, t, y):
            self.nfe += 1
            x, v = y[:, 0], y[:, 1]
            return torch.stack([v, self.mu * (1 - x * x) * v - x], 1)

    def vdp(t, y, mu):
        x, v = y[:, 0], y[:, 1]
        return torch.stack([v, mu * (1 - x * x) * v - x], 1)

    for dtype in args.dtypes:
        dt = getattr(torch, dtype)
        mu = torch.tensor(mu64, dtype=dt)
        t = torch.tensor(t64, dtype=dt)
        y0 = torch.tensor([[2.0, 0.0]], dtype=dt).repeat(args.batch, 1)
        for tol in args.tols:
            hard = args.hard.get(_key(dtype, tol), int(np.argmax(mu64)))
            solvers = {}
            if to is not None:
                term = to.ODETerm(vdp, with_args=True)
                ctrl = to.IntegralController(atol=tol, rtol=tol, term=term)
                solver = to.AutoDiffAdjoint(to.Dopri5(term=term), ctrl, max_steps=MAX_STEPS)
                solvers["torchode"] = solver.solve
                if not args.no_torch_compile:
                    solvers["torchode-compile"] = torch.compile(solver.solve)

            def torchode_call(solve, y0, mu):
                with torch.no_grad():
                    sol = solve(to.InitialValueProblem(y0=y0, t_eval=t.repeat(y0.shape[0], 1)), args=mu)
                return (sol.ys.numpy(), int(sol.stats["n_f_evals"].max()), sol.stats["n_steps"].numpy(),
                        int(sol.status.max()))  # fmt: skip

            def torchdiffeq_call(y0, mu):
                f = Field(mu)
                with torch.no_grad():
                    ys = tdq.odeint(f, y0, t, method="dopri5", rtol=tol, atol=tol, options={"max_num_steps": MAX_STEPS})
                steps = (f.nfe - 2) // 6
                return np.transpose(ys.numpy(), (1, 0, 2)), f.nfe, np.full([y0.shape[0]], steps), 0

            impls = {name: (lambda y0, mu, s=s: torchode_call(s, y0, mu)) for name, s in solvers.items()}
            if tdq is not None:
                impls["torchdiffeq"] = torchdiffeq_call
            calls = {}
            for name, impl in impls.items():
                try:
                    res, first = C.first_call_ms(lambda impl=impl: impl(y0, mu))
                except Exception as err:  # torch.compile may not handle the solver
                    notes[name] = f"{dtype} {tol:g}: failed: {type(err).__name__}: {str(err)[:200]}"
                    continue
                ys, nfe, steps, status = res
                alone = impl(y0[hard : hard + 1], mu[hard : hard + 1])
                arrays[f"{name}|{_key(dtype, tol)}"] = [ys]
                arrays[f"{name} hard alone|{_key(dtype, tol)}"] = [alone[0][0]]
                calls[name] = lambda impl=impl: impl(y0, mu)
                rows.append(dict(impl=name, dtype=dtype, tol=tol, first_call_ms=first, nfe=int(nfe),
                                 loop_iters=int(np.max(steps)), steps=np.asarray(steps).tolist(), status=int(status),
                                 hard=hard))  # fmt: skip
            timings = _timed(calls, args.repeats)
            for r in rows:
                if r["dtype"] == dtype and r["tol"] == tol and r["impl"] in timings:
                    r.update(timings[r["impl"]])
    C.save_grads(args._out + ".npz", arrays)
    return {"versions": C.versions(torch=torch, torchode=to, torchdiffeq=tdq), "rows": rows, "missing": notes}


# --------------------------------------------------------------------------- #
# JAX: diffrax joint and jax.vmap (per-sample); one process per dtype
# --------------------------------------------------------------------------- #


def worker_jax(args, frameworks):
    (dtype,) = args.dtypes
    jax, jnp, diffrax = C.jax_setup(dtype == "float64")
    mu64, t64 = make_problem(args.seed, args.batch)
    dt = getattr(jnp, dtype)
    t = jnp.asarray(t64, dt)
    mu = jnp.asarray(mu64, dt)
    y0 = jnp.tile(jnp.asarray([[2.0, 0.0]], dt), (args.batch, 1))
    counter = [0]

    def bump():
        counter[0] += 1

    def make_field(count):
        def field(t_, y, mu):
            if count:
                jax.debug.callback(bump)
            x, v = y[..., 0], y[..., 1]
            return jnp.stack([v, mu * (1 - x * x) * v - x], axis=-1)

        return field

    rows, arrays = [], {}
    for tol in args.tols:
        hard = args.hard.get(_key(dtype, tol), int(np.argmax(mu64)))

        def make(count, tol=tol):
            term = diffrax.ODETerm(make_field(count))

            def solve(y0, mu):
                sol = diffrax.diffeqsolve(
                    term, diffrax.Dopri5(), t0=t[0], t1=t[-1], dt0=None, y0=y0, args=mu,
                    stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol), saveat=diffrax.SaveAt(ts=t),
                    max_steps=MAX_STEPS, throw=False,
                )  # fmt: skip
                return sol.ys, sol.stats["num_steps"], sol.result._value

            joint = jax.jit(lambda y0, mu: solve(y0, mu))
            vmapped = jax.jit(jax.vmap(solve))
            return {"diffrax": joint, "diffrax-vmap": vmapped}

        counted, fns = make(True), make(False)
        calls = {}
        for name, fn in fns.items():

            def call(fn=fn, y0=y0, mu=mu):
                return jax.block_until_ready(fn(y0, mu))

            (ys, steps, status), first = C.first_call_ms(call)
            ys = np.asarray(ys)
            if name == "diffrax":
                ys = np.transpose(ys, (1, 0, 2))
            counter[0] = 0
            jax.block_until_ready(counted[name](y0, mu))
            jax.effects_barrier()
            jax.block_until_ready(counted[name](y0, mu))  # compiled now: count the second call only
            jax.effects_barrier()
            nfe = counter[0] // 2
            alone = np.asarray(fn(y0[hard : hard + 1], mu[hard : hard + 1])[0])
            alone = alone[:, 0] if name == "diffrax" else alone[0]
            arrays[f"{name}|{_key(dtype, tol)}"] = [ys]
            arrays[f"{name} hard alone|{_key(dtype, tol)}"] = [alone]
            steps = np.broadcast_to(np.asarray(steps), [args.batch])
            rows.append(dict(impl=name, dtype=dtype, tol=tol, first_call_ms=first, nfe=int(nfe),
                             loop_iters=int(steps.max()), steps=steps.tolist(), status=int(np.max(status)),
                             hard=hard))  # fmt: skip
            calls[name] = call
        timings = _timed(calls, args.repeats)
        for r in rows[-len(calls) :]:
            r.update(timings[r["impl"]])
    C.save_grads(args._out + ".npz", arrays)
    return {"versions": C.versions(jax=jax, diffrax=diffrax), "rows": rows}


WORKERS = {"tf": (worker_tf, "tf"), "torch": (worker_torch, "peer"), "jax": (worker_jax, "peer")}


# --------------------------------------------------------------------------- #
# Parent
# --------------------------------------------------------------------------- #


def per_sample_checks(args, rows, arrays):
    """Lines: tfode per-sample against its B = 1 solves, and its CPU time against the other rows."""
    out = []
    for dtype in args.dtypes:
        for tol in args.tols:
            k = _key(dtype, tol)
            alone = rows.get((dtype, tol, "tfode-xla alone"))
            cpu = {impl: C.summary(r["cpu_ms"])[0] for (d, t_, impl), r in rows.items() if (d, t_) == (dtype, tol)}
            for impl in PER_SAMPLE_TFODE:
                r = rows.get((dtype, tol, impl))
                if r is None:
                    continue
                parts = [f"- {dtype} {tol:g} {impl}: NFE batched {r['nfe']}, summed over samples "
                         f"{r.get('nfe_per_sample_sum', '–')}"]  # fmt: skip
                if alone is not None:
                    steps, steps_alone = np.asarray(r["steps"]), np.asarray(alone["steps"])
                    diff = np.max(np.abs(arrays[f"{impl}|{k}"] - arrays[f"tfode-xla alone|{k}"]), axis=(1, 2))
                    parts.append(f"steps = alone for {int(np.sum(steps == steps_alone))}/{len(steps)} samples "
                                 f"(max |diff| {int(np.max(np.abs(steps - steps_alone)))})")  # fmt: skip
                    parts.append(f"max |ys - ys alone| {np.max(diff):.2e} "
                                 f"(samples above 1e-12: {int(np.sum(diff > 1e-12))})")  # fmt: skip
                own = arrays.get(f"tfode-xla per-sample B=1|{k}")
                if own is not None:
                    own_steps = arrays[f"tfode-xla per-sample B=1 steps|{k}"]
                    diff = np.max(np.abs(arrays[f"{impl}|{k}"] - own), axis=(1, 2))
                    parts.append(f"against per-sample XLA at B = 1: steps equal for "
                                 f"{int(np.sum(np.asarray(r['steps']) == own_steps))}/{len(own_steps)}, "
                                 f"max |ys diff| {np.max(diff):.2e}")  # fmt: skip
                joint = impl.replace(" per-sample", "")
                for other in (joint, "diffrax-vmap", "torchode-compile", "torchode"):
                    if other in cpu and cpu[other] > 0:
                        parts.append(f"CPU / {other} {cpu[impl] / cpu[other]:.2f}")
                out.append("; ".join(parts))
    return out


def report(args, ctx):
    frameworks = C.split_list(args.frameworks)
    args.tols = C.split_list(args.tols, float)
    args.dtypes = C.split_list(args.dtypes)
    args.hard = {}
    if args.quick:
        args.repeats = min(args.repeats, 2)
    mu, t = make_problem(args.seed, args.batch)
    w0 = C.time.perf_counter()
    ref = reference(mu, t)
    print(f"[W6] reference: DOP853 1e-12, {C.time.perf_counter() - w0:.1f} s", file=C.sys.stderr, flush=True)
    load_start, rev_start = C.loadavg(), C.tfode_revision()
    by_worker = C.group_by_worker(frameworks, WORKER_OF)
    raw = []
    if "tf" in by_worker:
        raw.append(ctx.run("tf", by_worker["tf"]))
        for r in raw[-1].get("rows", []):
            if r["impl"] == "tfode-xla alone":
                args.hard[_key(r["dtype"], r["tol"])] = int(np.argmax(r["steps"]))
    if "torch" in by_worker:
        raw.append(ctx.run("torch", by_worker["torch"], hard=args.hard))
    if "jax" in by_worker:
        for dtype in args.dtypes:
            raw.append(ctx.run("jax", ["diffrax"], tag=f"jax-{dtype}", dtypes=[dtype], hard=args.hard))
    load_end, rev_end = C.loadavg(), C.tfode_revision()

    rows, arrays, notes, versions = {}, {}, [], {}
    for res in raw:
        if "error" in res:
            notes.append(res["error"])
            continue
        versions.update(res.get("versions", {}))
        notes.extend(f"{k}: {v}" for k, v in res.get("missing", {}).items())
        arrays.update({k: v[0] for k, v in res.get("grads", {}).items()})
        for r in res["rows"]:
            rows[(r["dtype"], r["tol"], r["impl"])] = r

    def max_err(ys):
        return np.max(np.abs(np.asarray(ys, np.float64) - ref), axis=(1, 2))  # [B]

    lines = [
        f"W6: Van der Pol, B = {args.batch}, mu log-uniform in [0.5, 20] (seed {args.seed}), y0 = (2, 0), "
        f"t in [0, 10] (50 outputs), dopri5, rtol = atol = tol; medians of {args.repeats} calls",
        "",
        "| dtype | tol | impl | mode | wall ms | CPU ms | loop iters | steps/sample max | mean | NFE | worst err / tol "
        "| hard sample: err batch / alone |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for dtype in args.dtypes:
        for tol in args.tols:
            k = _key(dtype, tol)
            alone_tfode = arrays.get(f"tfode-xla alone|{k}")
            for impl in ORDER:
                r = rows.get((dtype, tol, impl))
                if r is None:
                    continue
                err = max_err(arrays[f"{impl}|{k}"])
                steps = np.asarray(r["steps"])
                hard = r.get("hard", args.hard.get(k))
                if impl == "tfode-xla alone":
                    hard_ratio = "1 (is alone)"
                else:
                    alone = arrays.get(f"{impl} hard alone|{k}")
                    if alone is None and impl.startswith("tfode") and alone_tfode is not None:
                        alone = alone_tfode[hard]
                    hard_ratio = "–"
                    if alone is not None and hard is not None:
                        e_alone = np.max(np.abs(np.asarray(alone, np.float64) - ref[hard]))
                        hard_ratio = f"{err[hard]:.2e} / {e_alone:.2e} = {err[hard] / e_alone:.2g}"
                wall, cpu = C.summary(r["wall_ms"])[0], C.summary(r["cpu_ms"])[0]
                status = "" if r.get("status", 0) == 0 else f" (status {r['status']})"
                lines.append(
                    f"| {dtype} | {tol:g} | {impl} | {MODE[impl]} | {C.fmt_ms(wall)} | {C.fmt_ms(cpu)} | "
                    f"{r['loop_iters']} | {steps.max()} | {steps.mean():.1f} | {r['nfe']}{status} | "
                    f"{err.max() / tol:.3g} | {hard_ratio} |"
                )
    print("\n".join(lines))
    print()
    print("- hardest sample alone (index: mu): "
          + ", ".join(f"{k} {v}: {mu[v]:.2f}" for k, v in args.hard.items()))  # fmt: skip
    checks = per_sample_checks(args, rows, arrays)
    print("\n".join(checks))
    print(f"- tfode-xla alone: loop iters = the sum of the {args.batch} solves' steps; time = one pass of them.")
    C.print_loadavg(load_start, load_end)
    C.print_revision(rev_start, rev_end)
    C.print_notes_and_versions(notes, versions)
    return {"rows": [dict(r, key=list(k)) for k, r in rows.items()], "hard": args.hard, "notes": notes,
            "checks": checks, "versions": versions}  # fmt: skip
