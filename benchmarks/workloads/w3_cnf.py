"""W3 CNF benchmark: log-density and its gradient under a continuous normalizing flow.

Workload (see ../shared/bench/README.md beside the repository, data in weights.npz):
    f(t, z) = W3 tanh(W2 tanh(W1 tanh(W0 [z, t] + b0) + b1) + b2) + b3 (row convention,
    W0: [64, 3], W1, W2: [64, 64], W3: [2, 64]; t concatenated to the first layer's
    input only), float32. The flow maps z(0) ~ N(0, I) to x = z(1); log p(x) of the
    512 points cnf_x = log N(z(0)) - ∫_0^1 tr(∂f/∂z) dt along the path ending at x,
    with the exact trace, dopri5 at rtol = atol = 1e-5. Measured: forward log p
    (mean over the batch), and forward + gradient of mean log p w.r.t. all 8 weights.

Implementations (each framework in its own subprocess pinned to one core and one
thread; everything of one framework timed round-robin in one process):
    tfode-graph   tfd.TransformedDistribution(N(0, I), tfode.ContinuousFlowBijector(f,
                  trace="exact", method="dopri5", rtol, atol)) (adjoint gradients,
                  seminorm: the bijector's defaults), log_prob and tape.gradient in a
                  tf.function without XLA. Weights are tf.Variables, transposed once
                  outside the solve; the field uses tf.matmul(h, WT).
    tfode-xla     the same function under tf.function(jit_compile=True).
    ffjord-graph  tfp.bijectors.FFJORD(f, ode_solve_fn=DormandPrince(rtol, atol).solve,
                  trace_augmentation_fn=trace_jacobian_exact) in the same distribution,
                  tf.function without XLA (TFP's DormandPrince defaults otherwise, e.g.
                  first_step_size=1e-3; its gradient is TFP's built-in adjoint), same
                  process and variables as tfode.
    diffrax-backsolve   the same CNF in JAX: augmented state (z, log-det), exact trace
                  by forward mode (jax.jacfwd's one JVP per basis vector, each tangent
                  broadcast over the batch: one batched JVP per Jacobian column; the same
                  values from jax.vmap(jax.jacfwd(f)) or jax.vmap(jax.jacrev(f)) per point,
                  or from a jax.vmap over the basis, measured 1.3-2.5x (checkpoint) and
                  3.8-5.1x (backsolve) slower), integrated in reversed time
                  s = 1 - t (dz/ds = -f(1 - s, z)) with diffeqsolve(Dopri5(), 0, 1,
                  dt0=None, PIDController(rtol, atol), adjoint=BacksolveAdjoint()),
                  under jax.jit(jax.value_and_grad).
    diffrax-checkpoint  the same with diffrax's default RecursiveCheckpointAdjoint()
                  (reverse mode through the steps, max_steps=4096).

Columns:
    fwd ms: CPU median of mean log p alone (no gradient).
    fwd+bwd wall median / min-max, CPU median: one call of value and gradient, the
        gradients copied to the host, over --repeats runs after 3 warm-up calls.
    fwd NFE: evaluations of the (augmented) dynamics in the forward solve; bwd NFE:
        those in the backward pass (gradient run minus forward). TF: calls of f counted
        by a tf.Variable in separate untimed runs (neither bijector reports solver
        statistics); FFJORD's forward count is cross-checked against DormandPrince's
        own diagnostics (captured by wrapping ode_solve_fn). diffrax: a
        jax.debug.callback counter in untimed runs (for the checkpoint adjoint the
        backward count is forward steps recomputed from checkpoints).
    mean log p: the forward value; rel err: ||g - g_ref|| / ||g_ref|| over all eight
        gradients (row convention), g_ref from tfode in float64 at rtol = atol =
        --ref-tol (adjoint, full norm), cross-checked against diffrax float64
        (RecursiveCheckpointAdjoint) at the same tolerance.
    vs FFJORD: CPU (and wall) median / that of ffjord-graph; the machine may be shared,
        so the CPU ratio decides.

Usage:
    python -m benchmarks.run W3 [--repeats 10] [--frameworks tfode,ffjord,diffrax]
        [--json out.json] [--keep-dir DIR] [--no-crosscheck] [--quick]
TF workers run with --tf-python, the JAX workers with --peer-python.
"""

from __future__ import annotations

import time

from benchmarks import _common as C

WEIGHT_NAMES = ("W0", "b0", "W1", "b1", "W2", "b2", "W3", "b3")
WORKER_OF = {"tfode": "tf", "ffjord": "tf", "diffrax": "jax"}
IMPLS_OF = {
    "tfode": ["tfode-graph", "tfode-xla"],
    "ffjord": ["ffjord-graph"],
    "diffrax": ["diffrax-backsolve", "diffrax-checkpoint"],
}
IMPL_ORDER = [i for fw in ("tfode", "ffjord", "diffrax") for i in IMPLS_OF[fw]]


def load_cnf(weights):
    """``({name: array}, x)``: the eight W3 weights (row convention) and ``cnf_x`` ``[512, 2]``."""
    import numpy as np

    d = np.load(weights)
    return {k: np.ascontiguousarray(d[f"cnf_{k}"]) for k in WEIGHT_NAMES}, np.ascontiguousarray(d["cnf_x"])


# --------------------------------------------------------------------------- #
# TensorFlow: tfode (graph, XLA), tfb.FFJORD (graph), float64 reference
# --------------------------------------------------------------------------- #


def _tf_problem(tf, weights, x, dtype):
    """Transposed weight variables ``[W0T, b0, ..., W3T, b3]``, ``field(t, z)``, ``x``."""
    variables = []
    for name in WEIGHT_NAMES:
        value = weights[name].T.copy() if name.startswith("W") else weights[name]
        variables.append(tf.Variable(value.astype(dtype), name=f"{name}T" if name.startswith("W") else name))
    w0, b0, w1, b1, w2, b2, w3, b3 = variables

    def field(t, z):
        t_col = tf.fill([tf.shape(z)[0], 1], tf.cast(t, z.dtype))
        h = tf.tanh(tf.matmul(tf.concat([z, t_col], axis=1), w0) + b0)
        h = tf.tanh(tf.matmul(h, w1) + b1)
        h = tf.tanh(tf.matmul(h, w2) + b2)
        return tf.matmul(h, w3) + b3

    return variables, field, tf.constant(x.astype(dtype))


def _row_convention(grads):
    """Gradients w.r.t. the transposed variables -> w.r.t. the row-convention weights."""
    return [g.T if name.startswith("W") else g for name, g in zip(WEIGHT_NAMES, grads)]


def worker_ref(args, frameworks):
    tf = C.pin_tensorflow()
    import numpy as np
    import tensorflow_probability as tfp

    import tfode

    weights, x = load_cnf(args.weights)
    variables, field, x = _tf_problem(tf, weights, x, np.float64)
    dist = tfp.distributions.TransformedDistribution(
        tfp.distributions.MultivariateNormalDiag(tf.zeros([2], tf.float64)),
        tfode.ContinuousFlowBijector(field, trace="exact", rtol=args.ref_tol, atol=args.ref_tol, adjoint_norm="full"),
    )

    @tf.function(autograph=False)
    def value_and_grad(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(dist.log_prob(x))
        return loss, tape.gradient(loss, variables)

    t0 = time.perf_counter()
    loss, grads = value_and_grad(x)
    grads = _row_convention([g.numpy() for g in grads])
    C.save_grads(args._out + ".npz", {"tfode64-adjoint": grads})
    return {"rows": {"tfode64-adjoint": {"mean_log_p": float(loss), "seconds": time.perf_counter() - t0}}}


def worker_tf(args, frameworks):
    tf = C.pin_tensorflow()
    import numpy as np

    results = {"versions": {"tensorflow": tf.__version__}, "missing": {}, "rows": []}
    try:
        import tensorflow_probability as tfp
    except ImportError as err:
        return {"error": f"not installed ({err})"}
    results["versions"]["tfp"] = tfp.__version__
    tfode = None
    if "tfode" in frameworks:
        try:
            import tfode

            results["versions"]["tfode"] = getattr(tfode, "__version__", "?")
        except ImportError as err:
            results["missing"]["tfode"] = f"not installed ({err})"
    tfd, tfb = tfp.distributions, tfp.bijectors

    weights, x_np = load_cnf(args.weights)
    variables, field, x = _tf_problem(tf, weights, x_np, np.float32)
    base = tfd.MultivariateNormalDiag(tf.zeros([2]))
    counter = tf.Variable(0, dtype=tf.int64, trainable=False, name="calls")
    solver_nfe = tf.Variable(0, dtype=tf.int32, trainable=False, name="dormand_prince_nfe")

    def counted_field(t, z):
        counter.assign_add(1)
        return field(t, z)

    def make_distribution(impl, f):
        if impl.startswith("tfode"):
            bijector = tfode.ContinuousFlowBijector(f, 0.0, 1.0, trace="exact", method="dopri5",
                                                    rtol=args.tol, atol=args.tol)  # fmt: skip
        else:
            solver = tfp.math.ode.DormandPrince(rtol=args.tol, atol=args.tol)

            def ode_solve_fn(**kwargs):  # records the solver's own NFE count (a stateful op: always runs)
                solution = solver.solve(**kwargs)
                solver_nfe.assign(solution.diagnostics.num_ode_fn_evaluations)
                return solution

            bijector = tfb.FFJORD(state_time_derivative_fn=f, ode_solve_fn=ode_solve_fn,
                                  trace_augmentation_fn=tfb.ffjord.trace_jacobian_exact)  # fmt: skip
        return tfd.TransformedDistribution(base, bijector)

    def make_fns(impl, f, count=False):
        dist = make_distribution(impl, f)
        jit = impl.endswith("xla")

        @tf.function(autograph=False, jit_compile=jit)
        def value_and_grad(x):
            before = counter.read_value()
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(dist.log_prob(x))
            after_forward = counter.read_value()
            grads = tape.gradient(loss, variables)
            if not count:
                return loss, grads
            with tf.control_dependencies(grads):
                after_backward = counter.read_value()
            return loss, grads, after_forward - before, after_backward - after_forward

        @tf.function(autograph=False, jit_compile=jit)
        def forward(x):
            return tf.reduce_mean(dist.log_prob(x))

        return value_and_grad, forward

    impls = [i for fw in frameworks if fw in ("tfode", "ffjord") for i in IMPLS_OF[fw]]
    impls = [i for i in impls if not (i.startswith("tfode") and tfode is None)]
    grad_fns, fwd_fns, last = {}, {}, {}
    for impl in impls:
        grad_fns[impl], fwd_fns[impl] = make_fns(impl, field)

    def grad_call(impl):
        def call():
            loss, grads = grad_fns[impl](x)
            last[impl] = (float(loss), [g.numpy() for g in grads])

        return call

    calls = {impl: grad_call(impl) for impl in impls}
    calls.update({f"fwd:{impl}": (lambda impl=impl: fwd_fns[impl](x).numpy()) for impl in impls})
    first_ms = C.first_calls(calls, log_prefix="[w3/tf]")
    wall, cpu = C.time_interleaved(calls, args.repeats)

    # Untimed counted runs: evaluations of f in the forward solve and in the backward pass
    # (the counter is read between the loss and the gradient, inside the function).
    counts = {}
    for impl in impls:
        counted_grad, _ = make_fns(impl, counted_field, count=True)
        solver_nfe.assign(-1)
        _, grads, fwd, bwd = counted_grad(x)
        _ = [g.numpy() for g in grads]
        diag = int(solver_nfe.numpy()) if impl.startswith("ffjord") else None
        counts[impl] = {"fwd_nfe": int(fwd), "bwd_nfe": int(bwd), "solver_fwd_nfe": diag}

    for impl in impls:
        loss, grads = last[impl]
        results["rows"].append({
            "impl": impl, "times_ms": wall[impl], "cpu_ms": cpu[impl], "fwd_times_ms": wall[f"fwd:{impl}"],
            "fwd_cpu_ms": cpu[f"fwd:{impl}"], "first_call_ms": first_ms[impl],
            "fwd_first_call_ms": first_ms[f"fwd:{impl}"], "mean_log_p": loss, **counts[impl],
        })  # fmt: skip
        last[impl] = _row_convention(grads)
    C.save_grads(args._out + ".npz", {impl: last[impl] for impl in impls})
    return results


# --------------------------------------------------------------------------- #
# JAX: diffrax
# --------------------------------------------------------------------------- #


def _diffrax_mean_log_p(jax, jnp, diffrax, adjoint, rtol, atol, on_eval=None, max_steps=4096):
    """``mean_log_p(params, x)`` for the W3 CNF; ``params`` in row convention."""

    def field(t, z, p):  # z: [batch, 2]
        w0, b0, w1, b1, w2, b2, w3, b3 = p
        t_col = jnp.full((z.shape[0], 1), t, z.dtype)
        h = jnp.tanh(jnp.concatenate([z, t_col], axis=1) @ w0.T + b0)
        h = jnp.tanh(h @ w1.T + b1)
        h = jnp.tanh(h @ w2.T + b2)
        return h @ w3.T + b3

    def divergence(t, z, p):
        # jax.jacfwd specialised to the batch-diagonal Jacobian of the batched field: jacfwd
        # takes one JVP per basis vector; here each basis tangent is broadcast over the batch,
        # so one batched JVP gives column i of every point's Jacobian.
        total = jnp.zeros(z.shape[0], z.dtype)
        for i in range(z.shape[1]):
            tangent = jnp.zeros_like(z).at[:, i].set(1.0)
            total = total + jax.jvp(lambda z: field(t, z, p), (z,), (tangent,))[1][:, i]
        return total

    def dynamics(s, state, p):  # reversed time s = 1 - t: from the data (s = 0) to the base (s = 1)
        if on_eval is not None:
            jax.debug.callback(on_eval)
        z, _ = state
        t = 1.0 - s
        return -field(t, z, p), -divergence(t, z, p)

    term = diffrax.ODETerm(dynamics)

    def mean_log_p(p, x):
        sol = diffrax.diffeqsolve(
            term, diffrax.Dopri5(), t0=0.0, t1=1.0, dt0=None, y0=(x, jnp.zeros(x.shape[0], x.dtype)), args=p,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), saveat=diffrax.SaveAt(t1=True),
            adjoint=adjoint, max_steps=max_steps,
        )  # fmt: skip
        z0, log_det = sol.ys[0][-1], sol.ys[1][-1]
        base = -0.5 * jnp.sum(z0**2, axis=-1) - jnp.log(2 * jnp.pi)
        return jnp.mean(base + log_det)

    return mean_log_p


def worker_jax(args, frameworks):
    try:
        jax, jnp, diffrax = C.jax_setup(False)
    except ImportError as err:
        return {"error": f"not installed ({err})"}
    import numpy as np

    weights, x_np = load_cnf(args.weights)
    p = tuple(jnp.asarray(weights[k]) for k in WEIGHT_NAMES)
    x = jnp.asarray(x_np)
    counter = [0]

    def bump():
        counter[0] += 1

    adjoints = {
        "diffrax-backsolve": diffrax.BacksolveAdjoint,
        "diffrax-checkpoint": diffrax.RecursiveCheckpointAdjoint,
    }
    results = {"versions": C.versions(jax=jax, diffrax=diffrax), "rows": []}
    fns, fwd_fns, counts, last = {}, {}, {}, {}
    for name, make_adjoint in adjoints.items():

        def mean_log_p(on_eval=None, make_adjoint=make_adjoint):
            return _diffrax_mean_log_p(jax, jnp, diffrax, make_adjoint(), args.tol, args.tol, on_eval=on_eval)

        fns[name] = jax.jit(jax.value_and_grad(mean_log_p()))
        fwd_fns[name] = jax.jit(mean_log_p())
        counted = mean_log_p(on_eval=bump)
        counter[0] = 0
        jax.block_until_ready(jax.jit(counted)(p, x))
        jax.effects_barrier()
        fwd = counter[0]
        counter[0] = 0
        jax.block_until_ready(jax.jit(jax.value_and_grad(counted))(p, x))
        jax.effects_barrier()
        counts[name] = {"fwd_nfe": fwd, "bwd_nfe": counter[0] - fwd}

    def grad_call(name):
        def call():
            loss, g = fns[name](p, x)
            last[name] = (float(loss), [np.asarray(v) for v in g])

        return call

    calls = {name: grad_call(name) for name in fns}
    calls.update({f"fwd:{name}": (lambda name=name: float(fwd_fns[name](p, x))) for name in fns})
    first = C.first_calls(calls, log_prefix="[w3/jax]")
    wall, cpu = C.time_interleaved(calls, args.repeats)
    for name in fns:
        loss, grads = last[name]
        results["rows"].append({
            "impl": name, "times_ms": wall[name], "cpu_ms": cpu[name], "fwd_times_ms": wall[f"fwd:{name}"],
            "fwd_cpu_ms": cpu[f"fwd:{name}"], "first_call_ms": first[name], "fwd_first_call_ms": first[f"fwd:{name}"],
            "mean_log_p": loss, **counts[name],
        })  # fmt: skip
        last[name] = grads
    C.save_grads(args._out + ".npz", {name: last[name] for name in fns})
    return results


def worker_jaxref(args, frameworks):
    try:
        jax, jnp, diffrax = C.jax_setup(True)
    except ImportError as err:
        return {"error": f"not installed ({err})"}
    import numpy as np

    weights, x_np = load_cnf(args.weights)
    p = tuple(jnp.asarray(weights[k].astype(np.float64)) for k in WEIGHT_NAMES)
    fn = _diffrax_mean_log_p(jax, jnp, diffrax, diffrax.RecursiveCheckpointAdjoint(), args.ref_tol, args.ref_tol,
                             max_steps=100_000)  # fmt: skip
    loss, grads = jax.jit(jax.value_and_grad(fn))(p, jnp.asarray(x_np.astype(np.float64)))
    C.save_grads(args._out + ".npz", {"diffrax64-checkpoint": [np.asarray(g) for g in grads]})
    return {"rows": {"diffrax64-checkpoint": {"mean_log_p": float(loss)}}}


WORKERS = {
    "ref": (worker_ref, "tf"),
    "tf": (worker_tf, "tf"),
    "jax": (worker_jax, "peer"),
    "jaxref": (worker_jaxref, "peer"),
}


# --------------------------------------------------------------------------- #
# Parent
# --------------------------------------------------------------------------- #


def add_args(p):
    p.add_argument("--tol", type=float, default=1e-5)
    p.add_argument("--ref-tol", type=float, default=1e-10)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--frameworks", default="tfode,ffjord,diffrax")
    p.add_argument("--quick", action="store_true", help="3 timed runs (not a measurement)")
    p.add_argument("--no-crosscheck", action="store_true", help="skip the diffrax float64 cross-check")


def report(args, ctx):
    frameworks = C.split_list(args.frameworks)
    if set(frameworks) - set(WORKER_OF):
        raise SystemExit(f"unknown frameworks; choose from {sorted(WORKER_OF)}")
    if args.quick:
        args.repeats = min(args.repeats, 3)

    by_worker = C.group_by_worker(frameworks, WORKER_OF)
    kinds = ["ref"] + list(by_worker) + (["jaxref"] if "diffrax" in frameworks and not args.no_crosscheck else [])
    load_start, rev_start = C.loadavg(), C.tfode_revision()

    raw = {kind: ctx.run(kind, by_worker.get(kind, frameworks)) for kind in kinds}
    load_end, rev_end = C.loadavg(), C.tfode_revision()

    if "error" in raw["ref"]:
        print(f"reference failed: {raw['ref']['error']}")
        return None
    ref = raw["ref"]["grads"]["tfode64-adjoint"]

    rows, notes, versions = {}, [], {}
    for kind in by_worker:
        res = raw[kind]
        if "error" in res:
            notes.extend(C.impl_notes(by_worker[kind], res["error"], IMPLS_OF))
            continue
        versions.update(res.get("versions", {}))
        for fw, msg in res.get("missing", {}).items():
            notes.extend(C.impl_notes([fw], msg, IMPLS_OF))
        for row in res["rows"]:
            row["rel_err"] = C.rel_err(res["grads"][row["impl"]], ref)
            row["median_ms"], row["min_ms"], row["max_ms"] = C.summary(row["times_ms"])
            row["cpu_median_ms"] = C.summary(row["cpu_ms"])[0]
            row["fwd_cpu_median_ms"] = C.summary(row["fwd_cpu_ms"])[0]
            row["fwd_median_ms"] = C.summary(row["fwd_times_ms"])[0]
            rows[row["impl"]] = row

    base = rows.get("ffjord-graph")

    def ratio(r, key):
        return f"{r[key] / base[key]:.2f}" if base else "–"

    lines = [
        f"W3 CNF, dopri5 rtol=atol={args.tol:g}, exact trace, batch 512; {args.repeats} timed runs after 3 warm-up "
        "calls, one pinned thread per process (medians)",
        "",
        "| impl | fwd log p CPU ms | fwd+bwd wall median ms | wall min–max | fwd+bwd CPU ms | fwd NFE | bwd NFE "
        "| mean log p | grad rel err | vs FFJORD (CPU) | vs FFJORD (wall) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for impl in IMPL_ORDER:
        r = rows.get(impl)
        if r is None:
            continue
        lines.append(
            f"| {impl} | {C.fmt_ms(r['fwd_cpu_median_ms'])} | {C.fmt_ms(r['median_ms'])} | "
            f"{C.fmt_ms(r['min_ms'])}–{C.fmt_ms(r['max_ms'])} | {C.fmt_ms(r['cpu_median_ms'])} | {r['fwd_nfe']} | "
            f"{r['bwd_nfe']} | {r['mean_log_p']:.5f} | {r['rel_err']:.1e} | {ratio(r, 'cpu_median_ms')} | "
            f"{ratio(r, 'median_ms')} |"
        )
    print("\n".join(lines))
    print()
    rr = raw["ref"]["rows"]["tfode64-adjoint"]
    parts = [f"mean log p {rr['mean_log_p']:.8f}"]
    jr = raw.get("jaxref")
    if jr and "error" not in jr:
        parts.append(f"diffrax float64 checkpoint: mean log p {jr['rows']['diffrax64-checkpoint']['mean_log_p']:.8f}, "
                     f"grad rel diff {C.rel_err(jr['grads']['diffrax64-checkpoint'], ref):.1e}")  # fmt: skip
    elif jr:
        parts.append(f"diffrax cross-check failed: {jr['error']}")
    print(f"- Reference: tfode float64 adjoint (full norm) at rtol=atol={args.ref_tol:g}: " + "; ".join(parts))
    ff = rows.get("ffjord-graph")
    if ff and ff.get("solver_fwd_nfe") is not None:
        print(f"- FFJORD forward NFE: counted calls of f {ff['fwd_nfe']}, DormandPrince diagnostics "
              f"{ff['solver_fwd_nfe']}")  # fmt: skip
    print("- fwd log p wall medians: " + ", ".join(f"{i} {C.fmt_ms(rows[i]['fwd_median_ms'])}" for i in rows))
    first = [f"{i} {r['first_call_ms'] / 1e3:.1f} s / {r['fwd_first_call_ms'] / 1e3:.1f} s" for i, r in rows.items()]
    print("- first call (trace + compile), fwd+bwd / fwd: " + ", ".join(first))
    C.print_loadavg(load_start, load_end)
    C.print_revision(rev_start, rev_end)
    C.print_notes_and_versions(notes, versions)
    return {"rows": list(rows.values()), "notes": notes, "versions": versions, "reference": raw["ref"].get("rows")}
