"""W5: one Keras training step of an ODE-Net against PyTorch + torchdiffeq and JAX + diffrax.

Model (float32, the same weights and data in every framework):
    x [128, 64] -> Dense(64) -> ODE block on [0, 1] -> Dense(10) -> softmax cross-entropy
    (mean over the batch, integer labels); one Adam step (lr 1e-3, epsilon 1e-8).
    The ODE block is ``tfode.ODELayer(tfode.layers.TimeMLP((64, 64)))`` with its
    defaults: time_embedding "concat" (every layer sees ``[h, t]``, t as the last
    input row of the kernel), tanh on the hidden layers, linear output:
        h1 = tanh([h, t] @ K0 + b0),  h2 = tanh([h1, t] @ K1 + b1),  f(t, h) = [h2, t] @ K2 + b2
    dopri5, rtol = atol = 1e-3, gradients by the adjoint method with the
    seminorm (tfode's default; torchdiffeq ``adjoint_options=dict(norm="seminorm")``,
    diffrax ``adjoint_rms_seminorm``), backward tolerances = forward ones.

Data: ``--seed`` makes every array (Glorot-uniform kernels, biases 0.1 N(0, 1),
inputs N(0, 1), labels uniform in 0..9); the parent writes them once to
``<workdir>/w5_data.npz`` and every worker loads that file.

Implementations:
    tfode-graph / tfode-xla   ``model.compile(Adam, loss, jit_compile=False/True)``,
                              timed ``model.train_on_batch(x, y)`` (Keras's train
                              function, the one ``fit`` runs per batch), in one process,
                              interleaved; NFE from the layer's ``nfe_forward`` / ``nfe_backward``.
    torchdiffeq               eager: ``odeint_adjoint``, ``loss.backward()``, ``torch.optim.Adam``;
                              NFE counted in the field module.
    diffrax                   ``jax.jit`` of value_and_grad + ``optax.adam`` update,
                              ``BacksolveAdjoint``; NFE from a ``jax.debug.callback`` counter
                              in untimed runs.

Every timed step starts from the initial weights (reset outside the timing), so
every step does the same work at the same NFE ("... fit" rows: ``model.fit``
over copies of the batch, each step timed by a callback; there the weights
move). Columns: wall and process-CPU medians per step; loss at the initial
weights; gradient relative error (all ten weights concatenated) against tfode
in float64, backpropagation through dopri5 at rtol = atol = ``--ref-tol``.

Target: tfode's step <= torchdiffeq's and <= 1.2x diffrax's at the same NFE.
"""

from __future__ import annotations

import os

import numpy as np

from benchmarks import _common as C

NAMES = ("in_W", "in_b", "K0", "b0", "K1", "b1", "K2", "b2", "out_W", "out_b")
IMPLS = ("tfode-graph", "tfode-xla", "tfode-graph fit", "tfode-xla fit", "torchdiffeq", "diffrax")
WORKER_OF = {"tfode": "tf", "torchdiffeq": "torch", "diffrax": "jax"}


def add_args(p):
    p.add_argument("--frameworks", default="tfode,torchdiffeq,diffrax")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--ref-tol", type=float, default=1e-10, help="float64 reference gradient's tolerance")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="3 timed steps (not a measurement)")


def make_data(path, seed, batch, dim=64, width=64, hidden=(64, 64), classes=10):
    """Write the W5 weights and data (Keras ``[in, out]`` kernels) to ``path``."""
    rng = np.random.default_rng(seed)

    def glorot(fan_in, fan_out):
        lim = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-lim, lim, (fan_in, fan_out)).astype(np.float32)

    def bias(n):
        return (0.1 * rng.standard_normal(n)).astype(np.float32)

    d = {"in_W": glorot(dim, width), "in_b": bias(width)}
    widths = (width, *hidden, width)
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        d[f"K{i}"], d[f"b{i}"] = glorot(a + 1, b), bias(b)  # + 1: the time row (concat embedding)
    d["out_W"], d["out_b"] = glorot(width, classes), bias(classes)
    d["x"] = rng.standard_normal((batch, dim)).astype(np.float32)
    d["y"] = rng.integers(0, classes, batch).astype(np.int32)
    np.savez(path, **d)


def _load(path):
    with np.load(path) as d:
        return {k: d[k] for k in d.files}


def _timing(wall, cpu):
    return {"wall_ms": wall, "cpu_ms": cpu}


# --------------------------------------------------------------------------- #
# TensorFlow: tfode through Keras
# --------------------------------------------------------------------------- #


def worker_tf(args, frameworks):
    tf = C.pin_tensorflow()
    import keras

    import tfode

    d = _load(args.data)
    x, y = tf.constant(d["x"]), tf.constant(d["y"])

    def build(jit):
        field = tfode.layers.TimeMLP((64, 64))
        ode = tfode.ODELayer(field, t1=1.0, rtol=args.tol, atol=args.tol, adjoint=True, name="ode")
        model = keras.Sequential(
            [keras.Input((d["x"].shape[1],)), keras.layers.Dense(64, name="dense_in"), ode,
             keras.layers.Dense(10, name="dense_out")]
        )  # fmt: skip
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3, epsilon=1e-8),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit,
        )
        variables = [
            *model.get_layer("dense_in").trainable_weights[:2],
            *[v for i in range(3) for v in (field._kernels[i], field._biases[i])],
            *model.get_layer("dense_out").trainable_weights[:2],
        ]
        assert len(variables) == len(NAMES)
        return model, ode, variables

    def reset(variables):
        for v, k in zip(variables, NAMES):
            v.assign(d[k])

    models = {"tfode-graph": build(False), "tfode-xla": build(True)}
    results = {"versions": C.versions(tensorflow=tf, keras=keras, tfode=tfode), "rows": []}
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    info = {}
    for name, (model, ode, variables) in models.items():
        reset(variables)
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        if name == "tfode-graph":  # the gradient (eager tape) is the same for both compile modes
            grads = {"tfode": [g.numpy() for g in tape.gradient(loss, variables)]}

        def step(model=model, variables=variables):
            reset(variables)
            return model.train_on_batch(x, y)

        # First call (trace + compile), then the NFE of a step from the initial weights.
        _, first = C.first_call_ms(step)
        step()
        info[name] = dict(
            first_call_ms=first,
            fwd_nfe=int(ode.num_fn_evals_forward.numpy()),
            bwd_nfe=int(ode.num_fn_evals_backward.numpy()),
            loss=float(loss),
        )

    # Timed: the reset stays outside the timing, train_on_batch inside; implementations interleaved.
    wall = {n: [] for n in models}
    cpu = {n: [] for n in models}
    for i in range(3 + args.repeats):
        for name, (model, _, variables) in models.items():
            reset(variables)
            c0, w0 = C.time.process_time(), C.time.perf_counter()
            model.train_on_batch(x, y)
            w1, c1 = C.time.perf_counter(), C.time.process_time()
            if i >= 3:
                wall[name].append((w1 - w0) * 1e3)
                cpu[name].append((c1 - c0) * 1e3)
    for name in models:
        results["rows"].append(dict(impl=name, **info[name], **_timing(wall[name], cpu[name])))

    # model.fit itself: one epoch of 3 + repeats copies of the batch, each step timed by a callback
    # (the weights move from step to step here, so the NFE is the last step's).
    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.wall, self.cpu = [], []

        def on_train_batch_begin(self, batch, logs=None):
            self._start = (C.time.process_time(), C.time.perf_counter())

        def on_train_batch_end(self, batch, logs=None):
            c1, w1 = C.time.process_time(), C.time.perf_counter()
            self.cpu.append((c1 - self._start[0]) * 1e3)
            self.wall.append((w1 - self._start[1]) * 1e3)

    steps = 3 + args.repeats
    xs, ys = np.tile(d["x"], (steps, 1)), np.tile(d["y"], steps)
    for name, (model, ode, variables) in models.items():
        reset(variables)
        timer = StepTimer()
        model.fit(xs, ys, batch_size=len(d["x"]), epochs=1, shuffle=False, verbose=0, callbacks=[timer])
        results["rows"].append(dict(
            impl=f"{name} fit", first_call_ms=timer.wall[0], fwd_nfe=int(ode.num_fn_evals_forward.numpy()),
            bwd_nfe=int(ode.num_fn_evals_backward.numpy()), loss=info[name]["loss"],
            **_timing(timer.wall[3:], timer.cpu[3:]),
        ))  # fmt: skip
    C.save_grads(args._out + ".npz", grads)
    return results


def worker_ref(args, frameworks):
    """The gradient in float64 by backpropagation through tfode at rtol = atol = ``--ref-tol``."""
    tf = C.pin_tensorflow()
    import tfode

    d = _load(args.data)
    p = [tf.Variable(d[k].astype(np.float64)) for k in NAMES]
    x, y = tf.constant(d["x"], tf.float64), tf.constant(d["y"])

    def field(t, h):
        tcol = tf.fill([tf.shape(h)[0], 1], t)
        for i in range(3):
            h = tf.matmul(tf.concat([h, tcol], 1), p[2 + 2 * i]) + p[3 + 2 * i]
            h = tf.tanh(h) if i < 2 else h
        return h

    @tf.function
    def grad():
        with tf.GradientTape() as tape:
            h = tf.matmul(x, p[0]) + p[1]
            sol = tfode.solve(field, h, tf.constant([0.0, 1.0], tf.float64), method="dopri5", rtol=args.ref_tol,
                              atol=args.ref_tol, options={"max_num_steps": 2000})  # fmt: skip
            logits = tf.matmul(sol.ys[-1], p[8]) + p[9]
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        return loss, tape.gradient(loss, p), sol.stats.num_fn_evals

    loss, g, nfe = grad()
    C.save_grads(args._out + ".npz", {"ref": [v.numpy() for v in g]})
    return {"loss": float(loss), "nfe": int(nfe)}


# --------------------------------------------------------------------------- #
# PyTorch: torchdiffeq, eager
# --------------------------------------------------------------------------- #


def worker_torch(args, frameworks):
    torch = C.pin_torch()
    import torchdiffeq
    from torchdiffeq import odeint_adjoint

    d = _load(args.data)
    x, y = torch.from_numpy(d["x"]), torch.from_numpy(d["y"]).long()

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.K = torch.nn.ParameterList([torch.nn.Parameter(torch.from_numpy(d[f"K{i}"])) for i in range(3)])
            self.b = torch.nn.ParameterList([torch.nn.Parameter(torch.from_numpy(d[f"b{i}"])) for i in range(3)])
            self.nfe = 0

        def forward(self, t, h):
            self.nfe += 1
            tcol = t.to(h.dtype).expand(h.shape[0], 1)
            for i in range(3):
                h = torch.cat([h, tcol], dim=1) @ self.K[i] + self.b[i]
                if i < 2:
                    h = torch.tanh(h)
            return h

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.in_W = torch.nn.Parameter(torch.from_numpy(d["in_W"]))
            self.in_b = torch.nn.Parameter(torch.from_numpy(d["in_b"]))
            self.field = Field()
            self.out_W = torch.nn.Parameter(torch.from_numpy(d["out_W"]))
            self.out_b = torch.nn.Parameter(torch.from_numpy(d["out_b"]))
            self.t = torch.tensor([0.0, 1.0])

        def forward(self, x):
            h = x @ self.in_W + self.in_b
            h = odeint_adjoint(
                self.field, h, self.t, rtol=args.tol, atol=args.tol, method="dopri5",
                adjoint_params=tuple(self.field.parameters()), adjoint_options=dict(norm="seminorm"),
            )[-1]  # fmt: skip
            return h @ self.out_W + self.out_b

    net = Net()
    field_params = [p for i in range(3) for p in (net.field.K[i], net.field.b[i])]
    params = [net.in_W, net.in_b, *field_params, net.out_W, net.out_b]
    init = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-8)

    def reset():
        with torch.no_grad():
            for p, v in zip(params, init):
                p.copy_(v)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return float(loss)

    # Gradient and NFE from the initial weights (untimed).
    reset()
    net.field.nfe = 0
    loss = torch.nn.functional.cross_entropy(net(x), y)
    fwd = net.field.nfe
    grads = torch.autograd.grad(loss, params)
    bwd = net.field.nfe - fwd
    reset()
    _, first = C.first_call_ms(step)
    wall, cpu = [], []
    for i in range(3 + args.repeats):
        reset()
        c0, w0 = C.time.process_time(), C.time.perf_counter()
        step()
        w1, c1 = C.time.perf_counter(), C.time.process_time()
        if i >= 3:
            wall.append((w1 - w0) * 1e3)
            cpu.append((c1 - c0) * 1e3)
    C.save_grads(args._out + ".npz", {"torchdiffeq": [g.numpy() for g in grads]})
    row = dict(impl="torchdiffeq", first_call_ms=first, fwd_nfe=fwd, bwd_nfe=bwd, loss=float(loss))
    return {"versions": C.versions(torch=torch, torchdiffeq=torchdiffeq), "rows": [dict(row, **_timing(wall, cpu))]}


# --------------------------------------------------------------------------- #
# JAX: diffrax, jit, backsolve adjoint
# --------------------------------------------------------------------------- #


def worker_jax(args, frameworks):
    jax, jnp, diffrax = C.jax_setup(False)
    import optax

    d = _load(args.data)
    x, y = jnp.asarray(d["x"]), jnp.asarray(d["y"])
    p0 = {k: jnp.asarray(d[k]) for k in NAMES}
    counter = [0]

    def bump():
        counter[0] += 1

    def make_field(count):
        def field(t, h, p):
            if count:
                jax.debug.callback(bump)
            tcol = jnp.full((h.shape[0], 1), t, h.dtype)
            for i in range(3):
                h = jnp.concatenate([h, tcol], axis=1) @ p[f"K{i}"] + p[f"b{i}"]
                if i < 2:
                    h = jnp.tanh(h)
            return h

        return field

    def make_loss(count):
        term = diffrax.ODETerm(make_field(count))
        adjoint = diffrax.BacksolveAdjoint(
            stepsize_controller=diffrax.PIDController(rtol=args.tol, atol=args.tol, norm=diffrax.adjoint_rms_seminorm)
        )

        def loss_fn(p, x, y):
            h = x @ p["in_W"] + p["in_b"]
            sol = diffrax.diffeqsolve(
                term, diffrax.Dopri5(), t0=0.0, t1=1.0, dt0=None, y0=h, args=p,
                stepsize_controller=diffrax.PIDController(rtol=args.tol, atol=args.tol),
                adjoint=adjoint, saveat=diffrax.SaveAt(t1=True), max_steps=4096,
            )  # fmt: skip
            logits = sol.ys[-1] @ p["out_W"] + p["out_b"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        return loss_fn

    opt = optax.adam(1e-3, eps=1e-8)

    def make_step(loss_fn):
        @jax.jit
        def step(p, s, x, y):
            loss, g = jax.value_and_grad(loss_fn)(p, x, y)
            updates, s = opt.update(g, s, p)
            return optax.apply_updates(p, updates), s, loss

        return step

    s0 = opt.init(p0)
    # NFE (untimed, counted): forward alone, then the whole step.
    counted = make_loss(True)
    jax.block_until_ready(jax.jit(counted)(p0, x, y))
    jax.effects_barrier()
    counter[0] = 0
    jax.block_until_ready(jax.jit(counted)(p0, x, y))
    jax.effects_barrier()
    fwd = counter[0]
    counted_step = make_step(counted)
    jax.block_until_ready(counted_step(p0, s0, x, y))
    jax.effects_barrier()
    counter[0] = 0
    jax.block_until_ready(counted_step(p0, s0, x, y))
    jax.effects_barrier()
    bwd = counter[0] - fwd

    loss_fn = make_loss(False)
    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(p0, x, y)
    step = make_step(loss_fn)

    def call():
        return jax.block_until_ready(step(p0, s0, x, y))

    _, first = C.first_call_ms(call)
    wall, cpu = C.time_interleaved({"diffrax": call}, args.repeats)
    C.save_grads(args._out + ".npz", {"diffrax": [np.asarray(grads[k]) for k in NAMES]})
    row = dict(impl="diffrax", first_call_ms=first, fwd_nfe=fwd, bwd_nfe=bwd, loss=float(loss))
    return {
        "versions": C.versions(jax=jax, diffrax=diffrax, optax=optax),
        "rows": [dict(row, **_timing(wall["diffrax"], cpu["diffrax"]))],
    }


WORKERS = {
    "ref": (worker_ref, "tf"),
    "tf": (worker_tf, "tf"),
    "torch": (worker_torch, "peer"),
    "jax": (worker_jax, "peer"),
}


# --------------------------------------------------------------------------- #
# Parent
# --------------------------------------------------------------------------- #


def report(args, ctx):
    frameworks = C.split_list(args.frameworks)
    if args.quick:
        args.repeats = min(args.repeats, 3)
    args.data = os.path.join(ctx.workdir, "w5_data.npz")
    if not args.from_dir:
        make_data(args.data, args.seed, args.batch)
    load_start, rev_start = C.loadavg(), C.tfode_revision()
    kinds = ["ref", *C.group_by_worker(frameworks, WORKER_OF)]
    raw = {kind: ctx.run(kind, [fw for fw in frameworks if WORKER_OF[fw] == kind]) for kind in kinds}
    load_end, rev_end = C.loadavg(), C.tfode_revision()

    rows, grads, notes, versions = {}, {}, [], {}
    for kind, res in raw.items():
        if "error" in res:
            notes.append(f"{kind} worker: {res['error']}")
            continue
        if kind == "ref":
            grads.update(res.get("grads", {}))
            notes.append(f"reference gradient: tfode float64, backpropagation through dopri5 at rtol = atol = "
                         f"{args.ref_tol:g} ({res['nfe']} NFE), loss {res['loss']:.6f}")  # fmt: skip
            continue
        versions.update(res.get("versions", {}))
        grads.update(res.get("grads", {}))
        for r in res["rows"]:
            r["wall_median_ms"], r["wall_min_ms"], r["wall_max_ms"] = C.summary(r["wall_ms"])
            r["cpu_median_ms"] = C.summary(r["cpu_ms"])[0]
            rows[r["impl"]] = r
    ref = grads.get("ref")
    lines = [
        f"W5: Keras fit step, ODE-Net 64 -> Dense(64) -> ODELayer(TimeMLP((64, 64))) -> Dense(10), batch "
        f"{args.batch}, dopri5 rtol = atol = {args.tol:g}, adjoint (seminorm), Adam; {args.repeats} timed steps",
        "",
        "| impl | wall median ms | wall min–max | CPU ms | fwd NFE | bwd NFE | CPU µs per NFE | loss | grad rel err "
        "| vs torchdiffeq (CPU) | vs diffrax (CPU) | first call s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    td, dx = rows.get("torchdiffeq"), rows.get("diffrax")
    for impl in IMPLS:
        r = rows.get(impl)
        if r is None:
            continue
        g = grads.get("tfode" if impl.startswith("tfode") else impl)
        diff = C.rel_err(g, ref) if ref is not None and g is not None else None
        per_nfe = r["cpu_median_ms"] * 1e3 / (r["fwd_nfe"] + r["bwd_nfe"])
        vs_td = f"{r['cpu_median_ms'] / td['cpu_median_ms']:.2f}" if td else "–"
        vs_dx = f"{r['cpu_median_ms'] / dx['cpu_median_ms']:.2f}" if dx else "–"
        lines.append(
            f"| {impl} | {C.fmt_ms(r['wall_median_ms'])} | {C.fmt_ms(r['wall_min_ms'])}–{C.fmt_ms(r['wall_max_ms'])} "
            f"| {C.fmt_ms(r['cpu_median_ms'])} | {r['fwd_nfe']} | {r['bwd_nfe']} | {per_nfe:.0f} | {r['loss']:.6f} | "
            f"{'–' if diff is None else f'{diff:.1e}'} | {vs_td} | {vs_dx} | {r['first_call_ms'] / 1e3:.1f} |"
        )
    print("\n".join(lines))
    print()
    print("Target: tfode step <= torchdiffeq's and <= 1.2x diffrax's at the same NFE (ratios: CPU medians).")
    C.print_loadavg(load_start, load_end)
    C.print_revision(rev_start, rev_end)
    C.print_notes_and_versions(notes, versions)
    return {"rows": list(rows.values()), "notes": notes, "versions": versions}
