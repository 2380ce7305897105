"""W2-per-sample: parameter gradients of a per-sample solve (every sample its own steps).

Workload: W2's field and data (``../shared/bench/weights.npz``),
``f(t, y) = tanh(y @ W1.T + b1) @ W2.T + b2``, float32, batch 256, D = 2 (H = 64)
and D = 32 (H = 256), dopri5, rtol = atol = 1e-5; every sample has its own end
time ``T_b`` (uniform in [0.5, 2], seed 0), so a sample's step count is its own
(``--shared-end``: every ``T_b = 1``, W2's homogeneous batch);
loss = sum_b sum(y_b(T_b)**2) / 256, gradient w.r.t. W1, b1, W2, b2.

Implementations (each framework in its own process, one pinned thread; CPU medians):
    tfode joint adjoint   the batch solved jointly to the union of the end times
                          (t = [0, T_(1), ..., T_(B)] sorted, each sample read at its own
                          time: the union grid), adjoint with seminorm, under XLA.
    tfode per-sample adjoint  ``SolverConfig(batch_axis=0, adjoint=True)``, t ``[B, 2]``:
                          per-sample backward solves, the parameter gradient summed over
                          the batch by one VJP per stage (O(P) memory); XLA and graph.
    tfode per-sample direct   ``batch_axis=0``, backpropagation through the loop
                          (max_num_steps=256), XLA.
    torchode backsolve    ``torchode.BacksolveAdjoint`` (per-sample backward; its parameter
                          adjoint is carried per sample), eager; ``autodiff``:
                          ``AutoDiffAdjoint`` (backpropagation through torchode's loop).
    diffrax-vmap backsolve  ``jax.vmap`` of a one-sample ``diffeqsolve`` with
                          ``BacksolveAdjoint`` under ``jax.jit(jax.grad)``; ``checkpoint``:
                          ``RecursiveCheckpointAdjoint`` (diffrax's default).

Columns: CPU ms median over --repeats interleaved calls (process time: steadier than
wall on a shared machine), rel err = ||g - g_ref|| / ||g_ref|| with g_ref from tfode
per-sample direct in float64 at rtol = atol = 1e-10, and the ratio to tfode's
per-sample adjoint under XLA.
"""

from __future__ import annotations

import numpy as np

from benchmarks import _common as C

SIZES = ("d2", "d32")


def add_args(p):
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--sizes", default="d2,d32")
    p.add_argument("--frameworks", default="tfode,torchode,diffrax")
    p.add_argument("--shared-end", action="store_true", help="every sample ends at T = 1 (W2's homogeneous batch)")


def end_times(args, batch, seed=0):
    if args.shared_end:
        return np.ones(batch)
    return np.random.RandomState(seed).uniform(0.5, 2.0, size=batch).astype(np.float64)


def worker_tf(args, frameworks):
    tf = C.pin_tensorflow()
    import tfode

    out, grads = [], {}

    def run_size(size):
        data = C.load_workload(size, args.weights)
        batch = data["y0"].shape[0]
        ends64 = end_times(args, batch)

        def make(dtype):
            params = [tf.Variable(data[k].astype(dtype), name=k) for k in ("W1", "b1", "W2", "b2")]

            def field(t, y):
                W1, b1, W2, b2 = params
                return tf.tanh(y @ tf.transpose(W1) + b1) @ tf.transpose(W2) + b2

            return field, params

        def per_sample_loss(field, y0, ends, config):
            t = tf.stack([tf.zeros_like(ends), ends], axis=1)
            ys = tfode.odeint(field, y0, t, config)
            return tf.reduce_sum(ys[-1] ** 2) / batch

        def joint_loss(field, y0, ends, config):
            order = tf.argsort(ends)
            grid = tf.concat([tf.zeros([1], ends.dtype), tf.gather(ends, order)], axis=0)
            ys = tfode.solve(field, y0, grid, config, _allow_repeated_times=True).ys
            rows = tf.math.invert_permutation(order) + 1
            last = tf.gather_nd(ys, tf.stack([rows, tf.range(batch)], axis=1))
            return tf.reduce_sum(last**2) / batch

        def gradient_fn(loss, field, params, y0, ends, config, jit):
            def run():
                with tf.GradientTape() as tape:
                    value = loss(field, y0, ends, config)
                return tape.gradient(value, params)

            return tf.function(run, jit_compile=jit)

        field64, params64 = make(np.float64)
        ref_config = tfode.SolverConfig(rtol=1e-10, atol=1e-10, batch_axis=0, max_num_steps=4096)
        ref = gradient_fn(per_sample_loss, field64, params64, tf.constant(data["y0"], tf.float64),
                          tf.constant(ends64), ref_config, False)()  # fmt: skip
        ref = np.concatenate([g.numpy().ravel() for g in ref])
        field, params = make(np.float32)
        y0, ends = tf.constant(data["y0"]), tf.constant(ends64.astype(np.float32))
        base = tfode.SolverConfig(rtol=1e-5, atol=1e-5)
        impls = {
            "tfode joint adjoint (XLA, union grid)": (joint_loss, base.replace(adjoint=True), True),
            "tfode per-sample adjoint (XLA)": (per_sample_loss, base.replace(adjoint=True, batch_axis=0), True),
            "tfode per-sample adjoint (graph)": (per_sample_loss, base.replace(adjoint=True, batch_axis=0), False),
            "tfode per-sample direct (XLA)": (
                per_sample_loss, base.replace(batch_axis=0, max_num_steps=256), True),
        }  # fmt: skip
        calls = {}
        for name, (loss, config, jit) in impls.items():
            fn = gradient_fn(loss, field, params, y0, ends, config, jit)
            g = np.concatenate([x.numpy().ravel() for x in fn()])
            out.append(dict(size=size, impl=name, rel_err=float(np.linalg.norm(g - ref) / np.linalg.norm(ref))))
            calls[name] = lambda fn=fn: [x.numpy() for x in fn()]
        wall, cpu = C.time_interleaved(calls, args.repeats)
        for r in out:
            if r["size"] == size and r["impl"] in cpu:
                r.update(cpu_ms=C.summary(cpu[r["impl"]])[0], wall_ms=C.summary(wall[r["impl"]])[0])
        grads[size] = ref.tolist()

    for size in C.split_list(args.sizes):
        run_size(size)
    return {"rows": out, "ref": grads, "versions": C.versions(tensorflow=tf)}


def _timed_rows(size, calls, grads, repeats):
    """One report row per peer implementation: its gradient and CPU/wall medians of interleaved calls."""
    wall, cpu = C.time_interleaved(calls, repeats)
    return [dict(size=size, impl=name, grad=grads[name].tolist(), cpu_ms=C.summary(cpu[name])[0],
                 wall_ms=C.summary(wall[name])[0]) for name in calls]  # fmt: skip


def worker_torch(args, frameworks):
    torch = C.pin_torch()
    import torchode as to

    out = []

    def run_size(size):
        data = C.load_workload(size, args.weights)
        batch = data["y0"].shape[0]
        ends = torch.tensor(end_times(args, batch), dtype=torch.float32)

        class Field(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.W1, self.b1, self.W2, self.b2 = (torch.nn.Parameter(torch.tensor(data[k]))
                                                      for k in ("W1", "b1", "W2", "b2"))  # fmt: skip

            def forward(self, t, y):
                return torch.tanh(y @ self.W1.T + self.b1) @ self.W2.T + self.b2

        field = Field()
        term = to.ODETerm(field)
        step = to.Dopri5(term=term)
        controller = to.IntegralController(atol=1e-5, rtol=1e-5, term=term)
        solvers = {
            "torchode backsolve (eager)": to.BacksolveAdjoint(term, step, controller),
            "torchode autodiff (eager)": to.AutoDiffAdjoint(step, controller, max_steps=256),
        }
        y0 = torch.tensor(data["y0"])
        t_eval = torch.stack([torch.zeros_like(ends), ends], dim=1)
        calls, grads = {}, {}
        for name, solver in solvers.items():

            def call(solver=solver):
                field.zero_grad()
                sol = solver.solve(to.InitialValueProblem(y0=y0, t_eval=t_eval))
                loss = (sol.ys[:, -1] ** 2).sum() / batch
                loss.backward()
                return np.concatenate([p.grad.numpy().ravel() for p in (field.W1, field.b1, field.W2, field.b2)])

            try:
                grads[name] = call()
            except Exception as err:  # a peer's failure is reported, not fatal
                out.append(dict(size=size, impl=name, error=f"{type(err).__name__}: {str(err)[:160]}"))
                continue
            calls[name] = call
        out.extend(_timed_rows(size, calls, grads, args.repeats))

    for size in C.split_list(args.sizes):
        run_size(size)
    return {"rows": out, "versions": C.versions(torch=torch, torchode=to)}


def worker_jax(args, frameworks):
    jax, jnp, diffrax = C.jax_setup(False)
    field = C.jax_mlp_field(jnp)
    out = []

    def run_size(size):
        data = C.load_workload(size, args.weights)
        batch = data["y0"].shape[0]
        params = tuple(jnp.asarray(data[k]) for k in ("W1", "b1", "W2", "b2"))
        y0, ends = jnp.asarray(data["y0"]), jnp.asarray(end_times(args, batch), jnp.float32)
        adjoints = {
            "diffrax-vmap backsolve (jit)": diffrax.BacksolveAdjoint(),
            "diffrax-vmap checkpoint (jit)": diffrax.RecursiveCheckpointAdjoint(),
        }
        calls, grads = {}, {}
        for name, adjoint in adjoints.items():

            def one(p, y, end, adjoint=adjoint):
                sol = diffrax.diffeqsolve(diffrax.ODETerm(field), diffrax.Dopri5(), 0.0, end, None, y, args=p,
                                          stepsize_controller=diffrax.PIDController(rtol=1e-5, atol=1e-5),
                                          adjoint=adjoint, max_steps=256)  # fmt: skip
                return jnp.sum(sol.ys[-1] ** 2)

            def loss(p):
                return jnp.sum(jax.vmap(one, in_axes=(None, 0, 0))(p, y0, ends)) / batch

            grad = jax.jit(jax.grad(loss))

            def call(grad=grad):
                return np.concatenate([np.asarray(g).ravel() for g in jax.block_until_ready(grad(params))])

            grads[name] = call()
            calls[name] = call
        out.extend(_timed_rows(size, calls, grads, args.repeats))

    for size in C.split_list(args.sizes):
        run_size(size)
    return {"rows": out, "versions": C.versions(jax=jax, diffrax=diffrax)}


WORKERS = {"tf": (worker_tf, "tf"), "torch": (worker_torch, "peer"), "jax": (worker_jax, "peer")}
WORKER_OF = {"tfode": "tf", "torchode": "torch", "diffrax": "jax"}


def report(args, ctx):
    frameworks = C.split_list(args.frameworks)
    by_worker = C.group_by_worker(frameworks, WORKER_OF)
    results = [ctx.run(kind, names) for kind, names in by_worker.items()]
    rows, refs, notes = [], {}, []
    for res in results:
        if "error" in res:
            notes.append(res["error"])
            continue
        rows.extend(res["rows"])
        refs.update(res.get("ref", {}))
    lines = [
        "W2-per-sample: W2's field, B = 256, float32, dopri5 rtol = atol = 1e-5, "
        f"{'shared end time T = 1' if args.shared_end else 'per-sample end times in [0.5, 2]'}; "
        f"gradient of sum(y(T_b)^2)/B w.r.t. the weights; CPU ms medians of {args.repeats} interleaved calls",
        "",
        "| size | impl | CPU ms | wall ms | rel err | CPU / tfode per-sample adjoint (XLA) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for size in C.split_list(args.sizes):
        mine = [r for r in rows if r["size"] == size]
        base = next((r["cpu_ms"] for r in mine if r["impl"] == "tfode per-sample adjoint (XLA)"), None)
        for r in mine:
            if "error" in r:
                lines.append(f"| {size} | {r['impl']} | failed: {r['error']} | | | |")
                continue
            err = r.get("rel_err")
            if err is None and size in refs and "grad" in r:
                ref = np.asarray(refs[size])
                err = float(np.linalg.norm(np.asarray(r["grad"]) - ref) / np.linalg.norm(ref))
            ratio = f"{r['cpu_ms'] / base:.2f}" if base else "–"
            lines.append(f"| {size} | {r['impl']} | {C.fmt_ms(r['cpu_ms'])} | {C.fmt_ms(r['wall_ms'])} | "
                         f"{err:.1e} | {ratio} |" if err is not None else f"| {size} | {r['impl']} | "
                         f"{C.fmt_ms(r['cpu_ms'])} | {C.fmt_ms(r['wall_ms'])} | – | {ratio} |")  # fmt: skip
    lines += [f"- {n}" for n in notes]
    print("\n".join(lines))
    return {"rows": rows}
