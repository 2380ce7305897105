"""W2 gradient benchmark: d loss / d weights through an adaptive dopri5 solve.

Workload (see ../shared/bench/README.md beside the repository, data in weights.npz):
    f(t, y) = tanh(y @ W1.T + b1) @ W2.T + b2, float32, batch 256,
    D=2 (H=64) and D=32 (H=256); y from t=0 to t=1 with dopri5 at
    rtol = atol = 1e-5; loss = sum(y(1)**2) / 256; gradient w.r.t. W1, b1, W2, b2.

Implementations (each framework in its own subprocess pinned to one core and
one thread; all of one framework interleaved round-robin in one process):
    tfode-adjoint-semi  tfode.solve(..., adjoint=True, adjoint_norm="seminorm")
    tfode-adjoint-full  tfode.solve(..., adjoint=True, adjoint_norm="full")
    tfode-direct        tfode.solve(..., options={"max_num_steps": 256}):
                        backpropagation through the solver loop
                        The three run under tf.function(jit_compile=True) with
                        W1T, b1, W2T, b2 as tf.Variables (weights transposed once,
                        outside the solve), loss and tape.gradient inside.
    tfp-xla             tfp.math.ode.DormandPrince(rtol, atol) (TFP defaults
                        otherwise, e.g. first_step_size=1e-3), solve(ode_fn, 0.,
                        y0, solution_times=[1.]), gradient by tape over the solve
                        (TFP's built-in adjoint), same variables, same process.
    torchdiffeq-adjoint[-semi]  odeint_adjoint(func, y0, [0, 1], method="dopri5")
                        without / with adjoint_options=dict(norm="seminorm"); eager.
    diffrax-backsolve[-semi]    diffeqsolve(..., adjoint=BacksolveAdjoint()) under
                        jax.jit(jax.value_and_grad); "-semi" passes the backward
                        PIDController(norm=diffrax.adjoint_rms_seminorm).
    diffrax-checkpoint  RecursiveCheckpointAdjoint() (diffrax's default:
                        reverse mode through the steps, max_steps=4096).

Columns:
    wall median / min-max: wall ms of one forward+backward call, gradients
        copied to host, over --repeats runs after 3 warm-up calls.
    CPU median: process CPU ms of the same calls (time.process_time). On a
        shared machine it excludes waiting for a core, so the ratios (vs TFP,
        vs diffrax) and the target check use CPU medians; wall ratios are shown too.
    fwd NFE: evaluations of f in the forward solve (solver statistics; diffrax:
        counted by a jax.debug.callback in a separate untimed run).
    bwd NFE: evaluations of the augmented dynamics (one f and one vector-Jacobian
        product each) in the backward solve. tfode: tfode.SolveStats;
        TFP (not in its diagnostics): calls of ode_fn counted by a tf.Variable
        in a separate untimed run, minus fwd NFE; torchdiffeq: a counter in the
        module; diffrax: callback count of value_and_grad minus fwd NFE (for
        the checkpoint adjoint these are forward steps recomputed from
        checkpoints, not augmented evaluations). "-": no backward solve.
    rel err: ||g - g_ref|| / ||g_ref|| over all four gradients concatenated
        (PyTorch row convention), g_ref from tfode in float64 at rtol = atol =
        --ref-tol (adjoint, full norm, graph mode); cross-checked against tfode
        direct float64 and diffrax float64 (RecursiveCheckpointAdjoint) at the
        same tolerance.
    vs TFP: median / median of tfp-xla (same process, interleaved).

Diagnostics (per framework, same process, CPU medians): fwd-only ms (the same solve
without gradient), bwd ms = total - fwd-only, t_f (one f) and t_aug (one f +
its VJP w.r.t. y and the weights), each from a compiled loop of 200 calls
feeding the result back (timed interleaved with the solves), and overhead =
total / (fwd NFE * t_f + bwd NFE * t_aug) (for diffrax-checkpoint the bwd
count is recomputed forward evaluations, so that ratio is only indicative).

Targets: tfode adjoint (seminorm allowed) forward+backward <= 0.5x TFP's time
at D=2 and <= 0.65x at D=32; relative gradient error <= 2e-4; stretch: <=
diffrax backsolve on both sizes.

Usage:
    python -m benchmarks.run W2 [--sizes d2,d32] [--repeats 20]
        [--frameworks tfode,tfp,torchdiffeq,diffrax] [--json out.json]
        [--keep-dir DIR]   (then: --from-dir DIR re-prints the report without running)
TF workers run with --tf-python, torch/JAX workers with --peer-python.
"""

from __future__ import annotations

# Closures defined in the per-size loops are called within the same iteration.
# ruff: noqa: B023
import time

from benchmarks import _common as C

F_LOOP_ITERS = 200
WORKER_OF = {"tfode": "tf", "tfp": "tf", "torchdiffeq": "torch", "diffrax": "jax"}
IMPLS_OF = {
    "tfode": ["tfode-adjoint-semi", "tfode-adjoint-full", "tfode-direct"],
    "tfp": ["tfp-xla"],
    "torchdiffeq": ["torchdiffeq-adjoint", "torchdiffeq-adjoint-semi"],
    "diffrax": ["diffrax-backsolve", "diffrax-backsolve-semi", "diffrax-checkpoint"],
}
IMPL_ORDER = [i for fw in ("tfode", "tfp", "torchdiffeq", "diffrax") for i in IMPLS_OF[fw]]
PARAM_NAMES = ("W1", "b1", "W2", "b2")


# --------------------------------------------------------------------------- #
# TensorFlow: float64 reference
# --------------------------------------------------------------------------- #


def worker_ref(args, frameworks):
    tf = C.pin_tensorflow()
    import numpy as np

    import tfode

    results = {"rows": {}}
    grads = {}
    for size in args.sizes:
        data = C.load_workload(size, args.weights)
        W1T = tf.Variable(data["W1"].T.astype(np.float64))
        b1 = tf.Variable(data["b1"].astype(np.float64))
        W2T = tf.Variable(data["W2"].T.astype(np.float64))
        b2 = tf.Variable(data["b2"].astype(np.float64))
        V = [W1T, b1, W2T, b2]
        y0 = tf.constant(data["y0"].astype(np.float64))
        t_span = tf.constant([0.0, 1.0], tf.float64)

        def field(t, y):
            return tf.matmul(tf.tanh(tf.matmul(y, W1T) + b1), W2T) + b2

        def make(adjoint):
            @tf.function
            def fn():
                with tf.GradientTape() as tape:
                    sol = tfode.solve(field, y0, t_span, method="dopri5", rtol=args.ref_tol, atol=args.ref_tol,
                                      adjoint=adjoint, adjoint_norm="full")  # fmt: skip
                    loss = tf.reduce_sum(tf.square(sol.ys[-1])) / 256.0
                return loss, tape.gradient(loss, V), sol.stats.num_fn_evals

            return fn

        for name, adjoint in (("adjoint", True), ("direct", False)):
            t0 = time.perf_counter()
            loss, g, nfe = make(adjoint)()
            g = [g[0].numpy().T, g[1].numpy(), g[2].numpy().T, g[3].numpy()]
            grads[f"{size}/tfode64-{name}"] = g
            results["rows"][f"{size}/tfode64-{name}"] = {
                "loss": float(loss), "nfe": int(nfe), "seconds": time.perf_counter() - t0
            }  # fmt: skip
    C.save_grads(args._out + ".npz", grads)
    return results


# --------------------------------------------------------------------------- #
# TensorFlow: tfode and TFP (XLA)
# --------------------------------------------------------------------------- #


def worker_tf(args, frameworks):
    tf = C.pin_tensorflow()
    found, missing = C.import_optional(frameworks, {"tfode": "tfode", "tfp": "tensorflow_probability"})
    tfode, tfp = found["tfode"], found["tfp"]
    versions = C.versions(tensorflow=tf, tfode=tfode, tfp=tfp)
    results = {"versions": versions, "missing": missing, "rows": [], "diag": {}}
    grads_out = {}
    tol = args.tol
    t_span = tf.constant([0.0, 1.0])

    for size in args.sizes:
        data = C.load_workload(size, args.weights)
        # Transposed once, outside every solve; the gradient is w.r.t. these variables.
        W1T = tf.Variable(data["W1"].T.copy(), name="W1T")
        b1 = tf.Variable(data["b1"], name="b1")
        W2T = tf.Variable(data["W2"].T.copy(), name="W2T")
        b2 = tf.Variable(data["b2"], name="b2")
        V = [W1T, b1, W2T, b2]
        y0 = tf.constant(data["y0"])
        counter = tf.Variable(0, dtype=tf.int32, trainable=False, name="calls")

        def field(t, y):
            return tf.matmul(tf.tanh(tf.matmul(y, W1T) + b1), W2T) + b2

        def counted_field(t, y):
            counter.assign_add(1)
            return field(t, y)

        def loss_of(y1):
            return tf.reduce_sum(tf.square(y1)) / 256.0

        # ---- one f and one f + VJP, compiled loops (cost model) ------------
        @tf.function(jit_compile=True)
        def f_loop(y):
            _, y = tf.while_loop(lambda i, y: i < F_LOOP_ITERS, lambda i, y: (i + 1, field(0.0, y)), (0, y))
            return y

        @tf.function(jit_compile=True)
        def aug_loop(y, a):
            def body(i, y, a, acc):
                with tf.GradientTape() as tape:
                    tape.watch(y)
                    fy = field(0.0, y)
                vj = tape.gradient(fy, [y] + V, output_gradients=a)
                # tanh keeps the fed-back values bounded (no overflow/denormals).
                return i + 1, tf.tanh(fy), tf.tanh(vj[0]), [c + v for c, v in zip(acc, vj[1:], strict=True)]

            acc = [tf.zeros_like(v) for v in V]
            _, y, a, acc = tf.while_loop(lambda i, *_: i < F_LOOP_ITERS, body, (0, y, a, acc))
            return y, a, acc

        a0 = tf.ones_like(y0) * 0.01

        # ---- gradient functions ------------------------------------------------
        grad_fns, fwd_fns, bstats = {}, {}, {}

        def tfode_kwargs(variant, bs):
            kw = dict(method="dopri5", rtol=tol, atol=tol, raise_on_failure=False)
            if variant == "tfode-direct":
                kw["options"] = {"max_num_steps": args.direct_max_steps}
            else:
                kw.update(adjoint=True, backward_stats=bs,
                          adjoint_norm="seminorm" if variant == "tfode-adjoint-semi" else "full")  # fmt: skip
            return kw

        def make_tfode(variant, f, bs):
            kw = tfode_kwargs(variant, bs)

            @tf.function(jit_compile=True)
            def fn(y0):
                with tf.GradientTape() as tape:
                    sol = tfode.solve(f, y0, t_span, **kw)
                    loss = loss_of(sol.ys[-1])
                grads = tape.gradient(loss, V)
                return loss, grads, sol.stats.num_fn_evals, sol.stats.status

            return fn

        def make_tfp(f):
            solver = tfp.math.ode.DormandPrince(rtol=tol, atol=tol)

            @tf.function(jit_compile=True)
            def fn(y0):
                with tf.GradientTape() as tape:
                    res = solver.solve(f, 0.0, y0, solution_times=[1.0])
                    loss = loss_of(res.states[-1])
                grads = tape.gradient(loss, V)
                d = res.diagnostics
                return loss, grads, d.num_ode_fn_evaluations, d.status

            return fn

        if tfode is not None:
            for variant in IMPLS_OF["tfode"]:
                bs = tfode.SolveStats() if variant != "tfode-direct" else None
                bstats[variant] = bs
                grad_fns[variant] = make_tfode(variant, field, bs)

            @tf.function(jit_compile=True)
            def tfode_fwd(y0):
                sol = tfode.solve(field, y0, t_span, method="dopri5", rtol=tol, atol=tol, raise_on_failure=False)
                return sol.ys[-1], sol.stats.num_fn_evals

            fwd_fns["tfode"] = tfode_fwd
        if tfp is not None:
            grad_fns["tfp-xla"] = make_tfp(field)
            tfp_solver = tfp.math.ode.DormandPrince(rtol=tol, atol=tol)

            @tf.function(jit_compile=True)
            def tfp_fwd(y0):
                res = tfp_solver.solve(field, 0.0, y0, solution_times=[1.0])
                return res.states[-1], res.diagnostics.num_ode_fn_evaluations

            fwd_fns["tfp"] = tfp_fwd

        last = {}

        def grad_call(name):
            def call():
                loss, g, nfe, status = grad_fns[name](y0)
                g = [x.numpy() for x in g]
                last[name] = (loss, g, nfe, status)

            return call

        def fwd_call(name):
            return lambda: fwd_fns[name](y0)[0].numpy()

        calls = {name: grad_call(name) for name in grad_fns}
        calls.update({f"fwd:{name}": fwd_call(name) for name in fwd_fns})
        calls["cost:f"] = lambda: f_loop(y0).numpy()
        calls["cost:aug"] = lambda: aug_loop(y0, a0)[1].numpy()
        first_ms = C.first_calls(calls, log_prefix=f"[w2/tf] {size}")
        times, cpu = C.time_interleaved(calls, args.repeats)
        t_f = C.summary(cpu["cost:f"])[0] * 1e3 / F_LOOP_ITERS  # us CPU
        t_aug = C.summary(cpu["cost:aug"])[0] * 1e3 / F_LOOP_ITERS
        results["diag"][size] = {"t_f_us": t_f, "t_aug_us": t_aug}

        # ---- untimed counted runs: TFP backward NFE; tfode cross-check -------
        counted = {}
        if not args.no_count:
            todo = []
            if tfp is not None:
                todo.append(("tfp-xla", make_tfp(counted_field)))
            if tfode is not None:
                semi = make_tfode("tfode-adjoint-semi", counted_field, tfode.SolveStats())
                todo.append(("tfode-adjoint-semi", semi))
            for name, fn in todo:
                counter.assign(0)
                out = fn(y0)
                [x.numpy() for x in out[1]]
                counted[name] = int(counter.numpy()) - int(out[2])

        for name in grad_fns:
            loss, g, nfe, status = last[name]
            bs = bstats.get(name)
            row = {
                "size": size,
                "impl": name,
                "times_ms": times[name],
                "cpu_ms": cpu[name],
                "first_call_ms": first_ms[name],
                "loss": float(loss),
                "fwd_nfe": int(nfe),
                "status": int(status),
                "t_f_us": t_f,
                "t_aug_us": t_aug,
            }
            if bs is not None:
                row["bwd_nfe"] = int(bs.num_fn_evals.numpy())
                row["bwd_steps"] = int(bs.num_steps.numpy())
                row["bwd_status"] = int(bs.status.numpy())
            if name in counted:
                row["bwd_nfe_counted"] = counted[name]
                if name == "tfp-xla":
                    row["bwd_nfe"] = counted[name]
            fw = "tfode" if name.startswith("tfode") else "tfp"
            if f"fwd:{fw}" in times:
                row["fwd_only_ms"] = C.summary(cpu[f"fwd:{fw}"])[0]
            results["rows"].append(row)
            grads_out[f"{size}/{name}"] = [g[0].T, g[1], g[2].T, g[3]]
    C.save_grads(args._out + ".npz", grads_out)
    return results


# --------------------------------------------------------------------------- #
# PyTorch: torchdiffeq odeint_adjoint
# --------------------------------------------------------------------------- #


def worker_torch(args, frameworks):
    try:
        torch = C.pin_torch()
        import torchdiffeq
        from torchdiffeq import odeint_adjoint
    except ImportError as err:
        return {"error": f"not installed ({err})"}

    class Field(torch.nn.Module):
        def __init__(self, d):
            super().__init__()
            for k in PARAM_NAMES:
                setattr(self, k, torch.nn.Parameter(torch.from_numpy(d[k].copy())))
            self.nfe = 0

        def forward(self, t, y):
            self.nfe += 1
            return torch.tanh(y @ self.W1.T + self.b1) @ self.W2.T + self.b2

    results = {
        "versions": C.versions(torch=torch, torchdiffeq=torchdiffeq),
        "rows": [],
    }
    grads_out = {}
    t_span = torch.tensor([0.0, 1.0])
    tol = args.tol
    for size in args.sizes:
        data = C.load_workload(size, args.weights)
        func = Field(data)
        y0 = torch.from_numpy(data["y0"])
        variants = {"torchdiffeq-adjoint": None, "torchdiffeq-adjoint-semi": dict(norm="seminorm")}
        counts, last = {}, {}

        def make(name, opts):
            def call():
                for p in func.parameters():
                    p.grad = None
                func.nfe = 0
                kw = {} if opts is None else {"adjoint_options": opts}
                y1 = odeint_adjoint(func, y0, t_span, method="dopri5", rtol=tol, atol=tol, **kw)[-1]
                loss = (y1**2).sum() / 256.0
                fwd = func.nfe
                loss.backward()
                counts[name] = (fwd, func.nfe - fwd)
                last[name] = (float(loss), [p.grad.numpy().copy() for p in (func.W1, func.b1, func.W2, func.b2)])

            return call

        calls = {name: make(name, opts) for name, opts in variants.items()}
        first = C.first_calls(calls)
        times, cpu = C.time_interleaved(calls, args.repeats)
        for name in calls:
            loss, g = last[name]
            results["rows"].append({
                "size": size, "impl": name, "times_ms": times[name], "cpu_ms": cpu[name],
                "first_call_ms": first[name], "loss": loss, "fwd_nfe": counts[name][0], "bwd_nfe": counts[name][1],
            })  # fmt: skip
            grads_out[f"{size}/{name}"] = g
    C.save_grads(args._out + ".npz", grads_out)
    return results


# --------------------------------------------------------------------------- #
# JAX: diffrax (float32 timing, or the float64 cross-check reference)
# --------------------------------------------------------------------------- #


def _diffrax_loss(jnp, diffrax, vf, adjoint, rtol, atol, dtype=None, max_steps=4096, pid_kwargs=None):
    term = diffrax.ODETerm(vf)

    def loss(p, y0):
        sol = diffrax.diffeqsolve(
            term, diffrax.Dopri5(), t0=0.0, t1=1.0, dt0=None, y0=y0, args=p,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, **(pid_kwargs or {})),
            saveat=diffrax.SaveAt(t1=True), adjoint=adjoint, max_steps=max_steps,
        )  # fmt: skip
        return jnp.sum(sol.ys[-1] ** 2) / 256.0

    return loss


def worker_jax(args, frameworks):
    try:
        jax, jnp, diffrax = C.jax_setup(False)
    except ImportError as err:
        return {"error": f"not installed ({err})"}
    import numpy as np

    field = C.jax_mlp_field(jnp)

    counter = [0]

    def _bump():
        counter[0] += 1

    def counted_field(t, y, p):
        jax.debug.callback(_bump)
        return field(t, y, p)

    tol = args.tol
    adjoints = {
        "diffrax-backsolve": lambda: diffrax.BacksolveAdjoint(),
        "diffrax-backsolve-semi": lambda: diffrax.BacksolveAdjoint(
            stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol, norm=diffrax.adjoint_rms_seminorm)
        ),
        "diffrax-checkpoint": lambda: diffrax.RecursiveCheckpointAdjoint(),
    }
    results = {"versions": C.versions(jax=jax, diffrax=diffrax), "rows": []}
    grads_out = {}
    for size in args.sizes:
        data = C.load_workload(size, args.weights)
        p = tuple(jnp.asarray(data[k]) for k in PARAM_NAMES)
        y0 = jnp.asarray(data["y0"])

        # one f and one f + VJP (w.r.t. y and the weights), compiled loops (cost model)
        @jax.jit
        def f_loop(y, p):
            return jax.lax.fori_loop(0, F_LOOP_ITERS, lambda i, y: field(0.0, y, p), y)

        @jax.jit
        def aug_loop(y, a, p):
            def body(i, c):
                y, a, acc = c
                fy, vjp = jax.vjp(lambda y, p: field(0.0, y, p), y, p)
                gy, gp = vjp(a)
                return jnp.tanh(fy), jnp.tanh(gy), jax.tree_util.tree_map(jnp.add, acc, gp)

            acc = jax.tree_util.tree_map(jnp.zeros_like, p)
            return jax.lax.fori_loop(0, F_LOOP_ITERS, body, (y, a, acc))

        a0 = jnp.full_like(y0, 0.01)

        # forward NFE (same for every adjoint): counted forward-only solve
        fwd_loss = jax.jit(_diffrax_loss(jnp, diffrax, counted_field, diffrax.RecursiveCheckpointAdjoint(), tol, tol))
        counter[0] = 0
        jax.block_until_ready(fwd_loss(p, y0))
        jax.effects_barrier()
        fwd_nfe = counter[0]

        fns, counts, last = {}, {}, {}
        for name, make_adj in adjoints.items():
            counted = jax.jit(jax.value_and_grad(_diffrax_loss(jnp, diffrax, counted_field, make_adj(), tol, tol)))
            counter[0] = 0
            jax.block_until_ready(counted(p, y0))
            jax.effects_barrier()
            counts[name] = counter[0] - fwd_nfe
            fns[name] = jax.jit(jax.value_and_grad(_diffrax_loss(jnp, diffrax, field, make_adj(), tol, tol)))

        def make_call(name):
            def call():
                loss, g = fns[name](p, y0)
                last[name] = (float(loss), [np.asarray(x) for x in g])

            return call

        calls = {name: make_call(name) for name in fns}
        fwd_only = jax.jit(_diffrax_loss(jnp, diffrax, field, diffrax.RecursiveCheckpointAdjoint(), tol, tol))
        calls["fwd:diffrax"] = lambda: float(fwd_only(p, y0))
        calls["cost:f"] = lambda: np.asarray(f_loop(y0, p))
        calls["cost:aug"] = lambda: np.asarray(aug_loop(y0, a0, p)[1])
        first = C.first_calls(calls)
        times, cpu = C.time_interleaved(calls, args.repeats)
        t_f = C.summary(cpu["cost:f"])[0] * 1e3 / F_LOOP_ITERS  # us CPU
        t_aug = C.summary(cpu["cost:aug"])[0] * 1e3 / F_LOOP_ITERS
        for name in fns:
            loss, g = last[name]
            results["rows"].append({
                "size": size, "impl": name, "times_ms": times[name], "cpu_ms": cpu[name],
                "first_call_ms": first[name], "loss": loss, "fwd_nfe": fwd_nfe, "bwd_nfe": counts[name],
                "fwd_only_ms": C.summary(cpu["fwd:diffrax"])[0], "t_f_us": t_f, "t_aug_us": t_aug,
            })  # fmt: skip
            grads_out[f"{size}/{name}"] = g
    C.save_grads(args._out + ".npz", grads_out)
    return results


def worker_jaxref(args, frameworks):
    try:
        jax, jnp, diffrax = C.jax_setup(True)
    except ImportError as err:
        return {"error": f"not installed ({err})"}
    import numpy as np

    field = C.jax_mlp_field(jnp)

    results = {"rows": {}}
    grads_out = {}
    for size in args.sizes:
        data = C.load_workload(size, args.weights)
        p = tuple(jnp.asarray(data[k].astype(np.float64)) for k in PARAM_NAMES)
        y0 = jnp.asarray(data["y0"].astype(np.float64))
        loss_fn = _diffrax_loss(jnp, diffrax, field, diffrax.RecursiveCheckpointAdjoint(), args.ref_tol, args.ref_tol,
                                max_steps=100_000)  # fmt: skip
        loss, g = jax.jit(jax.value_and_grad(loss_fn))(p, y0)
        grads_out[f"{size}/diffrax64-checkpoint"] = [np.asarray(x) for x in g]
        results["rows"][f"{size}/diffrax64-checkpoint"] = {"loss": float(loss)}
    C.save_grads(args._out + ".npz", grads_out)
    return results


WORKERS = {
    "ref": (worker_ref, "tf"),
    "tf": (worker_tf, "tf"),
    "torch": (worker_torch, "peer"),
    "jax": (worker_jax, "peer"),
    "jaxref": (worker_jaxref, "peer"),
}


# --------------------------------------------------------------------------- #
# Parent
# --------------------------------------------------------------------------- #


def add_args(p):
    p.add_argument("--sizes", default="d2,d32")
    p.add_argument("--tol", type=float, default=1e-5)
    p.add_argument("--ref-tol", type=float, default=1e-10)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--frameworks", default="tfode,tfp,torchdiffeq,diffrax")
    p.add_argument("--direct-max-steps", type=int, default=256)
    p.add_argument("--quick", action="store_true", help="5 timed runs")
    p.add_argument("--no-count", action="store_true", help="skip the untimed counted runs (TFP backward NFE)")
    p.add_argument("--no-crosscheck", action="store_true", help="skip the diffrax float64 cross-check")


def report(args, ctx):
    args.sizes = C.split_list(args.sizes)
    frameworks = C.split_list(args.frameworks)
    if set(frameworks) - set(WORKER_OF):
        raise SystemExit(f"unknown frameworks; choose from {sorted(WORKER_OF)}")
    if args.quick:
        args.repeats = min(args.repeats, 5)

    by_worker = C.group_by_worker(frameworks, WORKER_OF)
    kinds = ["ref"] + list(by_worker) + (["jaxref"] if "diffrax" in frameworks and not args.no_crosscheck else [])
    load_start = C.loadavg()
    rev_start = C.tfode_revision()

    raw = {kind: ctx.run(kind, by_worker.get(kind, ["diffrax"] if kind == "jaxref" else frameworks)) for kind in kinds}
    load_end = C.loadavg()
    rev_end = C.tfode_revision()

    if "error" in raw["ref"]:
        print(f"reference failed: {raw['ref']['error']}")
        return None
    refs = {size: raw["ref"]["grads"][f"{size}/tfode64-adjoint"] for size in args.sizes}

    rows, notes, versions, diag = {}, [], {}, {}
    for kind, res in raw.items():
        if kind in ("ref", "jaxref"):
            continue
        if "error" in res:
            notes.extend(C.impl_notes(by_worker[kind], res["error"], IMPLS_OF, joined=True))
            continue
        versions.update(res.get("versions", {}))
        for fw, msg in res.get("missing", {}).items():
            notes.extend(C.impl_notes([fw], msg, IMPLS_OF, joined=True))
        diag.update(res.get("diag", {}))
        for row in res["rows"]:
            row["rel_err"] = C.rel_err(res["grads"][f"{row['size']}/{row['impl']}"], refs[row["size"]])
            row["median_ms"], row["min_ms"], row["max_ms"] = C.summary(row["times_ms"])
            row["cpu_median_ms"] = C.summary(row["cpu_ms"])[0]
            rows[(row["size"], row["impl"])] = row

    def ratio(r, base, key):
        return r[key] / base[key] if base else None

    def fmt_ratio(q):
        return "–" if q is None else f"{q:.2f}"

    lines = [
        f"W2 gradient, dopri5 rtol=atol={args.tol:g}, {args.repeats} timed runs, one pinned thread per process",
        "",
        "| size | impl | wall median ms | wall min–max | CPU median ms | fwd NFE | bwd NFE | rel err "
        "| vs TFP (CPU) | vs TFP (wall) | vs diffrax-backsolve (CPU) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in args.sizes:
        tp, dx = rows.get((size, "tfp-xla")), rows.get((size, "diffrax-backsolve"))
        for impl in IMPL_ORDER:
            r = rows.get((size, impl))
            if r is None:
                continue
            bwd = str(r["bwd_nfe"]) if "bwd_nfe" in r else "-"
            if r.get("status", 0) or r.get("bwd_status", 0):
                bwd += f" (status {r.get('status', 0)}/{r.get('bwd_status', 0)})"
            lines.append(
                f"| {size} | {impl} | {C.fmt_ms(r['median_ms'])} | {C.fmt_ms(r['min_ms'])}–{C.fmt_ms(r['max_ms'])} | "
                f"{C.fmt_ms(r['cpu_median_ms'])} | {r['fwd_nfe']} | {bwd} | {r['rel_err']:.2e} | "
                f"{fmt_ratio(ratio(r, tp, 'cpu_median_ms'))} | {fmt_ratio(ratio(r, tp, 'median_ms'))} | "
                f"{fmt_ratio(ratio(r, dx, 'cpu_median_ms'))} |"
            )
    print("\n".join(lines))
    print()
    print("Targets: tfode adjoint (seminorm allowed) <= 0.5x TFP at D=2 and <= 0.65x at D=32; "
          "rel err <= 2e-4 at tol 1e-5; stretch: <= diffrax-backsolve on both sizes.")  # fmt: skip
    verdict = []
    for size in args.sizes:
        lim = 0.5 if size == "d2" else 0.65
        tp, dx = rows.get((size, "tfp-xla")), rows.get((size, "diffrax-backsolve"))
        for impl in ("tfode-adjoint-semi", "tfode-adjoint-full"):
            r = rows.get((size, impl))
            if r is None:
                continue
            items = []
            if tp:
                q, qw = ratio(r, tp, "cpu_median_ms"), ratio(r, tp, "median_ms")
                items.append(f"vs TFP {q:.2f} CPU / {qw:.2f} wall (<= {lim}) {'OK' if q <= lim else 'MISS'}")
            items.append(f"rel err {r['rel_err']:.1e} {'OK' if r['rel_err'] <= 2e-4 else 'MISS'}")
            if dx:
                q, qw = ratio(r, dx, "cpu_median_ms"), ratio(r, dx, "median_ms")
                items.append(f"vs diffrax-backsolve {q:.2f} CPU / {qw:.2f} wall {'OK' if q <= 1 else 'MISS'} (stretch)")
            verdict.append(f"- {size} {impl}: " + "; ".join(items))
    print("Target check (ratios of CPU medians decide; wall shown too):")
    print("\n".join(verdict))
    print()

    # Diagnostics: where the time goes (CPU medians).
    dl = [
        "| size | impl | total CPU ms | fwd-only | bwd (total - fwd) | fwd us/NFE | bwd us/NFE | t_f us | t_aug us "
        "| overhead |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in args.sizes:
        for impl in IMPL_ORDER:
            r = rows.get((size, impl))
            if r is None or "fwd_only_ms" not in r:
                continue
            total, fwd = r["cpu_median_ms"], r["fwd_only_ms"]
            bwd = total - fwd
            nb = r.get("bwd_nfe")
            ideal = (r["fwd_nfe"] * r["t_f_us"] + (nb or 0) * r["t_aug_us"]) * 1e-3
            per_bwd = f"{bwd * 1e3 / nb:.1f}" if nb else "-"
            overhead = f"{total / ideal:.2f}" if nb else "-"
            dl.append(
                f"| {size} | {impl} | {C.fmt_ms(total)} | {C.fmt_ms(fwd)} | {C.fmt_ms(bwd)} | "
                f"{fwd * 1e3 / r['fwd_nfe']:.1f} | {per_bwd} | "
                f"{r['t_f_us']:.1f} | {r['t_aug_us']:.1f} | {overhead} |"
            )
    if len(dl) > 2:
        print(
            "Diagnostics (CPU ms medians, per framework process; fwd-only = the same solve without gradient; "
            "overhead = total / (fwd NFE * t_f + bwd NFE * t_aug)):"
        )
        print()
        print("\n".join(dl))
        print()

    # Reference and cross-checks.
    print(f"Reference: tfode float64 adjoint (full norm) at rtol=atol={args.ref_tol:g}.")
    for size in args.sizes:
        parts = []
        rr = raw["ref"]["rows"][f"{size}/tfode64-adjoint"]
        parts.append(f"loss {rr['loss']:.10g}, fwd NFE {rr['nfe']}")
        direct64 = raw["ref"]["grads"][f"{size}/tfode64-direct"]
        parts.append(f"vs tfode float64 direct {C.rel_err(direct64, refs[size]):.1e}")
        jr = raw.get("jaxref")
        if jr and "error" not in jr and f"{size}/diffrax64-checkpoint" in jr.get("grads", {}):
            dx64 = jr["grads"][f"{size}/diffrax64-checkpoint"]
            parts.append(f"vs diffrax float64 checkpoint {C.rel_err(dx64, refs[size]):.1e}")
        elif jr and "error" in jr:
            parts.append(f"diffrax cross-check failed: {jr['error']}")
        print(f"- {size}: " + "; ".join(parts))
    extra = []
    for (size, impl), r in rows.items():
        if "bwd_nfe_counted" in r and impl.startswith("tfode"):
            extra.append(f"{size} {impl}: SolveStats {r['bwd_nfe']}, counted calls of f {r['bwd_nfe_counted']}")
    if extra:
        print("- backward NFE cross-check: " + "; ".join(extra))
    first = ", ".join(
        f"{s} {i} {rows[(s, i)]['first_call_ms'] / 1e3:.1f}s" for s, i in rows if i.startswith(("tfode", "tfp"))
    )
    print(f"- first call (trace + XLA compile): {first}")
    C.print_loadavg(load_start, load_end)
    C.print_revision(rev_start, rev_end)
    C.print_notes_and_versions(notes, versions)
    return {"rows": [dict(r) for r in rows.values()], "diag": diag, "notes": notes, "versions": versions,
            "reference": raw["ref"].get("rows")}  # fmt: skip
