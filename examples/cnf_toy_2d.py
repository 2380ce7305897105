"""Continuous normalizing flows on FFJORD's 2-D toy densities, with and without RNODE.

For each data set (``tfode.datasets.toy_2d``, generated locally) the script trains a
CNF ``x = flow(z)``, ``z ~ N(0, I)``, whose vector field is
``tfode.layers.TimeMLP(hidden=(64, 64, 64))``, with the exact trace and dopri5 at
``rtol = atol = 1e-5`` (adjoint gradients), by maximum likelihood on fresh batches
(Grathwohl et al. 2019), once plainly and once with RNODE's kinetic-energy and
Jacobian-Frobenius penalties (Finlay et al. 2020; weights 0.01 each). It writes

* ``<out>/cnf_toy_2d_<variant>.png``: rows = data sets; columns = data | samples |
  density heat-map, one figure per variant;
* ``<out>/cnf_toy_2d.md``: a markdown table of test NLL, the density's mass on the
  plotted grid (trapezoidal rule; ≈ 1 for a proper density whose mass lies in the
  grid) and the mean numbers of vector-field evaluations (NFE) per training
  iteration, forward and backward.

NFE are the bijector's solver statistics: ``bijector.solve_stats.num_fn_evals``
(the last solve) and ``bijector.backward_stats.num_fn_evals`` (the adjoint's
backward solve, evaluations of the augmented dynamics, each one field evaluation
plus its vector-Jacobian product). Evaluation and sampling solve only
``(z, log-det)``: the RNODE channels are integrated by the training loss alone.
For the FFJORD comparison (``tfb.FFJORD`` has no statistics) a wrapper around the
vector field counts evaluations in a variable for both implementations.

``--compare-ffjord`` then times one training step (loss + gradient, batch
``--batch-size``) of the flow trained last (first variant, last data set) against
``tfp.bijectors.FFJORD`` with the same vector field and weights, TFP's default
``DormandPrince`` at the same tolerances and ``trace_jacobian_exact``: both as a
``tf.function`` without XLA, plus tfode under XLA (FFJORD's XLA gradient does not
compile).

Every data set reuses one model per variant (weights and optimizer re-initialised),
so the training step is traced (and compiled) once per variant.

Run: python examples/cnf_toy_2d.py [--datasets 8gaussians,moons,checkerboard,rings]
    [--iters 1000] [--batch-size 512] [--rtol 1e-5 --atol 1e-5] [--method dopri5]
    [--trace exact] [--no-jit] [--compare-ffjord] [--out outputs/] [--quick]
``--quick`` (smoke run, < 2 minutes on an idle 2-core CPU): 8gaussians only, 10
iterations of batch 256 at rtol = atol = 1e-3 without XLA, small grids.

Measured numbers and the command used: ``examples/RESULTS_cnf_toy_2d.md``.

References:
    Grathwohl et al. (2019), "FFJORD: Free-form Continuous Dynamics for Scalable
    Reversible Generative Models".
    Finlay, Jacobsen, Nurbekyan & Oberman (2020), "How to train your neural ODE".
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402

import tfode  # noqa: E402

tfd, tfb = tfp.distributions, tfp.bijectors
LIMIT = 4.0  # plots and the density grid cover [-LIMIT, LIMIT]^2


class CountingField:
    """``f(t, z)`` of a Keras vector field that counts its evaluations in a variable."""

    def __init__(self, layer):
        self.layer = layer
        self.count = tf.Variable(0, dtype=tf.int64, trainable=False, name="nfe")

    def __call__(self, t, z):
        self.count.assign_add(1)
        return self.layer(t, z)


class Flow:
    """One CNF variant: vector field, bijector, distribution, optimizer and traced functions."""

    def __init__(self, args, rnode):
        self.rnode = rnode
        self.weights = (args.kinetic_weight, args.jacobian_weight) if rnode else (0.0, 0.0)
        keras.utils.set_random_seed(args.seed)
        self.layer = tfode.layers.TimeMLP(hidden=args.hidden)
        self.layer(tf.zeros([]), tf.zeros([1, 2]))  # build
        self.initial_weights = [v.numpy() for v in self.layer.weights]
        self.bijector = tfode.ContinuousFlowBijector(
            self.layer, 0.0, 1.0, trace=args.trace, method=args.method, rtol=args.rtol, atol=args.atol, seed=args.seed
        )
        self.base = tfd.MultivariateNormalDiag(tf.zeros([2]))
        self.distribution = tfd.TransformedDistribution(self.base, self.bijector)
        self.optimizer = keras.optimizers.Adam(args.lr)
        self.optimizer.build(self.layer.trainable_variables)
        # Its variables hold the iteration count, the learning rate and the moments.
        self.initial_optimizer_state = [v.numpy() for v in self.optimizer.variables]
        self.train_step = tf.function(self._train_step, autograph=False, jit_compile=args.jit)
        self.log_prob = tf.function(self._log_prob, autograph=False)
        self.forward = tf.function(self.bijector.forward, autograph=False)

    def _log_prob(self, x):
        """``(log p(x), NFE of its solve)``."""
        log_prob = self.distribution.log_prob(x)
        with tf.control_dependencies([log_prob]):
            return log_prob, self.bijector.solve_stats.num_fn_evals.read_value()

    def reset(self):
        """Initial weights and a fresh optimizer state (keeps the traced functions)."""
        for v, value in zip(self.layer.weights, self.initial_weights):
            v.assign(value)
        for v, value in zip(self.optimizer.variables, self.initial_optimizer_state):
            v.assign(value)

    def loss(self, x):
        """``(loss, nll)``: ``-mean log p(x)`` plus the weighted RNODE terms."""
        if not self.rnode:
            nll = -tf.reduce_mean(self.distribution.log_prob(x))
            return nll, nll
        z, ildj, terms = self.bijector.inverse_and_regularization(x)
        nll = -tf.reduce_mean(self.base.log_prob(z) + ildj)
        kinetic, frobenius = (tf.reduce_mean(terms[k]) for k in ("kinetic_energy", "jacobian_frobenius"))
        return nll + self.weights[0] * kinetic + self.weights[1] * frobenius, nll

    def _train_step(self, x):
        variables = self.layer.trainable_variables
        with tf.GradientTape() as tape:
            loss, nll = self.loss(x)
        with tf.control_dependencies([loss]):
            forward_nfe = self.bijector.solve_stats.num_fn_evals.read_value()
        grads = tape.gradient(loss, variables)
        with tf.control_dependencies(grads):
            backward_nfe = self.bijector.backward_stats.num_fn_evals.read_value()
        self.optimizer.apply_gradients(zip(grads, variables))
        return loss, nll, forward_nfe, backward_nfe


def chunks(x, batch):
    """``(chunk, n)``: ``x`` in float32 chunks of ``batch`` rows, the last padded (one trace); ``n`` real rows."""
    for i in range(0, len(x), batch):
        chunk = x[i : i + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        yield tf.constant(chunk, tf.float32), n


def log_prob_and_nfe(flow, x, batch):
    """``(log p(x), mean NFE of one chunk's log p solve)``."""
    values, nfe = [], []
    for chunk, n in chunks(x, batch):
        value, count = flow.log_prob(chunk)
        values.append(value.numpy()[:n])
        nfe.append(int(count))
    return np.concatenate(values), float(np.mean(nfe))


def train(flow, name, args):
    flow.reset()
    losses, forward_nfe, backward_nfe = [], [], []
    start = first = time.perf_counter()
    for it in range(args.iters):
        if it == 1:  # the first iteration traces (and compiles) the step: timed apart
            first, start = time.perf_counter() - start, time.perf_counter()
        x = tfode.datasets.toy_2d(name, args.batch_size, seed=args.seed + 1 + it)  # fresh samples
        loss, nll, nfe_f, nfe_b = flow.train_step(tf.constant(x))
        losses.append(float(nll))
        forward_nfe.append(int(nfe_f))
        backward_nfe.append(int(nfe_b))
        if args.log_every and (it + 1) % args.log_every == 0:
            recent = slice(-args.log_every, None)
            print(f"  [{name} {'rnode' if flow.rnode else 'plain'}] iter {it + 1}: nll {np.mean(losses[recent]):.3f}"
                  f" NFE fwd {np.mean(forward_nfe[recent]):.0f} bwd {np.mean(backward_nfe[recent]):.0f}",
                  flush=True)  # fmt: skip
    per_iter = (time.perf_counter() - start) / max(args.iters - 1, 1)
    return dict(train_nll=losses, fwd_nfe=float(np.mean(forward_nfe)), bwd_nfe=float(np.mean(backward_nfe)),
                first_s=first if args.iters > 1 else time.perf_counter() - start, per_iter_s=per_iter)  # fmt: skip


def evaluate(flow, name, args):
    test = tfode.datasets.toy_2d(name, args.test_size, seed=10_000 + args.seed)
    log_prob, test_nfe = log_prob_and_nfe(flow, test, args.eval_batch)
    axis = np.linspace(-LIMIT, LIMIT, args.grid)
    grid = np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2).astype(np.float32)
    density = np.exp(log_prob_and_nfe(flow, grid, args.eval_batch)[0]).reshape(args.grid, args.grid)
    weights = np.ones(args.grid)
    weights[[0, -1]] = 0.5  # trapezoidal rule
    mass = float(weights @ density.astype(np.float64) @ weights) * (axis[1] - axis[0]) ** 2
    z = np.random.default_rng(args.seed).normal(size=(args.num_samples, 2)).astype(np.float32)
    samples = np.concatenate([flow.forward(chunk).numpy()[:n] for chunk, n in chunks(z, args.eval_batch)])
    return dict(test_nll=-float(np.mean(log_prob)), test_nfe=test_nfe, density=density, samples=samples, mass=mass)


def plot(results, names, variant, args, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(names), 3, figsize=(9, 3 * len(names)), squeeze=False)
    bins = np.linspace(-LIMIT, LIMIT, 150)
    for row, name in enumerate(names):
        r = results[(name, variant)]
        data = tfode.datasets.toy_2d(name, args.num_samples, seed=20_000 + args.seed)
        axes[row, 0].hist2d(data[:, 0], data[:, 1], bins=bins, cmap="viridis")
        axes[row, 1].hist2d(r["samples"][:, 0], r["samples"][:, 1], bins=bins, cmap="viridis")
        axes[row, 2].imshow(r["density"], origin="lower", extent=(-LIMIT, LIMIT, -LIMIT, LIMIT), cmap="viridis")
        axes[row, 0].set_ylabel(name)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlim(-LIMIT, LIMIT)
            ax.set_ylim(-LIMIT, LIMIT)
            ax.set_aspect("equal")
    for ax, title in zip(axes[0], ("data", f"samples ({variant})", f"density ({variant})")):
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def time_against_ffjord(flow, x, args, repeats):
    """Median ms of one loss + gradient step: tfode (graph, XLA) vs tfb.FFJORD (graph)."""
    variables = flow.layer.trainable_variables
    base = tfd.MultivariateNormalDiag(tf.zeros([2]))
    tfode_field, ffjord_field = CountingField(flow.layer), CountingField(flow.layer)
    tfode_dist = tfd.TransformedDistribution(base, tfode.ContinuousFlowBijector(
        tfode_field, 0.0, 1.0, trace="exact", method=args.method, rtol=args.rtol, atol=args.atol))  # fmt: skip
    solver = tfp.math.ode.DormandPrince(rtol=args.rtol, atol=args.atol)  # TFP defaults otherwise
    ffjord = tfb.FFJORD(state_time_derivative_fn=ffjord_field, ode_solve_fn=solver.solve,
                        trace_augmentation_fn=tfb.ffjord.trace_jacobian_exact)  # fmt: skip
    ffjord_dist = tfd.TransformedDistribution(base, ffjord)

    def step_fn(dist, field, jit):
        def step(x):
            before = field.count.read_value()
            with tf.GradientTape() as tape:
                loss = -tf.reduce_mean(dist.log_prob(x))
            mid = field.count.read_value()
            grads = tape.gradient(loss, variables)
            with tf.control_dependencies(grads):
                after = field.count.read_value()
            return loss, grads, mid - before, after - mid

        return tf.function(step, autograph=False, jit_compile=jit)

    steps = {
        "tfode graph": step_fn(tfode_dist, tfode_field, False),
        "tfode XLA": step_fn(tfode_dist, tfode_field, True),
        "tfb.FFJORD graph": step_fn(ffjord_dist, ffjord_field, False),
    }
    x = tf.constant(x)
    rows = {}
    for name, step in steps.items():
        start = time.perf_counter()
        loss, grads, nfe_f, nfe_b = step(x)
        rows[name] = dict(first_s=time.perf_counter() - start, loss=float(loss), nfe_f=int(nfe_f), nfe_b=int(nfe_b),
                          grads=[g.numpy() for g in grads], wall=[], cpu=[])  # fmt: skip
        step(x)  # warm-up
    for _ in range(repeats):  # interleaved, so all see the same machine load
        for name, step in steps.items():
            w0, c0 = time.perf_counter(), time.process_time()
            out = step(x)
            _ = [g.numpy() for g in out[1]]
            rows[name]["wall"].append(time.perf_counter() - w0)
            rows[name]["cpu"].append(time.process_time() - c0)
    ref = np.concatenate([g.ravel() for g in rows["tfb.FFJORD graph"]["grads"]])
    lines = [
        f"One training step (loss + gradient), batch {x.shape[0]}, {args.method} rtol={args.rtol:g} "
        f"atol={args.atol:g}, exact trace; medians of {repeats} interleaved runs:",
        "",
        "| implementation | wall ms | CPU ms | fwd NFE | bwd NFE | loss | grad rel. diff vs FFJORD | first call s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        g = np.concatenate([g.ravel() for g in r["grads"]])
        diff = np.linalg.norm(g - ref) / np.linalg.norm(ref)
        lines.append(
            f"| {name} | {np.median(r['wall']) * 1e3:.1f} | {np.median(r['cpu']) * 1e3:.1f} | {r['nfe_f']} | "
            f"{r['nfe_b']} | {r['loss']:.4f} | {diff:.1e} | {r['first_s']:.1f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="8gaussians,moons,checkerboard,rings",
                        help=f"comma-separated names from {', '.join(tfode.datasets.TOY_2D)}")  # fmt: skip
    parser.add_argument("--iters", type=int, default=1000, help="training iterations per data set and variant")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", default="64,64,64", help="TimeMLP hidden widths")
    parser.add_argument("--method", default="dopri5")
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--trace", choices=("exact", "hutchinson"), default="exact")
    parser.add_argument("--kinetic-weight", type=float, default=0.01, help="RNODE variant")
    parser.add_argument("--jacobian-weight", type=float, default=0.01, help="RNODE variant")
    parser.add_argument("--variants", default="plain,rnode", help="plain, rnode or both")
    parser.add_argument("--no-jit", dest="jit", action="store_false", help="train without XLA")
    parser.add_argument("--test-size", type=int, default=10_000)
    parser.add_argument("--num-samples", type=int, default=20_000, help="points in the data and sample columns")
    parser.add_argument("--grid", type=int, default=120, help="density heat-map resolution")
    parser.add_argument("--eval-batch", type=int, default=2000)
    parser.add_argument("--compare-ffjord", action="store_true", help="time a step against tfp.bijectors.FFJORD")
    parser.add_argument("--timing-repeats", type=int, default=10)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs")
    parser.add_argument("--quick", action="store_true", help="smoke run (< 2 minutes)")
    args = parser.parse_args()
    if args.quick:
        args.datasets, args.iters, args.batch_size, args.jit = "8gaussians", 10, 256, False
        args.rtol = args.atol = 1e-3
        args.test_size, args.num_samples, args.grid, args.eval_batch, args.log_every = 1000, 1000, 40, 1000, 0
        args.timing_repeats = 3
    args.hidden = tuple(int(h) for h in args.hidden.split(","))
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    for name in names:
        if name not in tfode.datasets.TOY_2D:
            parser.error(f"unknown data set {name!r}; choose from {', '.join(tfode.datasets.TOY_2D)}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or set(variants) - {"plain", "rnode"}:
        parser.error("--variants must be plain, rnode or plain,rnode")
    os.makedirs(args.out, exist_ok=True)
    print(f"CNF on {', '.join(names)}: TimeMLP{args.hidden}, {args.trace} trace, {args.method} "
          f"rtol={args.rtol:g} atol={args.atol:g}, {args.iters} iterations of batch {args.batch_size}, "
          f"XLA={args.jit}", flush=True)  # fmt: skip

    results, flows = {}, {}
    for variant in variants:
        flows[variant] = flow = Flow(args, rnode=variant == "rnode")
        for name in names:
            r = train(flow, name, args)
            r.update(evaluate(flow, name, args))
            results[(name, variant)] = r
            print(f"{name} {variant}: test NLL {r['test_nll']:.3f} (NFE {r['test_nfe']:.0f}), grid mass "
                  f"{r['mass']:.4f}, NFE/iter "
                  f"fwd {r['fwd_nfe']:.1f} bwd {r['bwd_nfe']:.1f}, first iteration {r['first_s']:.1f} s, "
                  f"then {r['per_iter_s']:.2f} s/iter",
                  flush=True)  # fmt: skip
        path = os.path.join(args.out, f"cnf_toy_2d_{variant}.png")
        plot(results, names, variant, args, path)
        print(f"wrote {path}", flush=True)

    rnode_text = f"RNODE (kinetic {args.kinetic_weight:g}, Jacobian {args.jacobian_weight:g})"
    lines = [
        f"CNF, TimeMLP{args.hidden}, {args.trace} trace, {args.method} rtol={args.rtol:g} atol={args.atol:g}, adjoint; "
        f"{args.iters} iterations of batch {args.batch_size}, Adam {args.lr:g}; test NLL on {args.test_size} "
        f"held-out points (test NFE: one log p solve of {args.eval_batch} points, without RNODE channels); "
        f"grid mass: ∫ p over [-{LIMIT:g}, {LIMIT:g}]² (trapezoidal, {args.grid}² points); "
        "fwd / bwd NFE: vector-field evaluations per training iteration (mean over training).",
        "",
        "| data set | variant | test NLL (nats) | grid mass | test NFE | fwd NFE / iter | bwd NFE / iter | s / iter |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        for variant in variants:
            r = results[(name, variant)]
            label = rnode_text if variant == "rnode" else "plain"
            lines.append(f"| {name} | {label} | {r['test_nll']:.3f} | {r['mass']:.4f} | {r['test_nfe']:.0f} | "
                         f"{r['fwd_nfe']:.1f} | {r['bwd_nfe']:.1f} | {r['per_iter_s']:.2f} |")  # fmt: skip
    if args.compare_ffjord:
        x = tfode.datasets.toy_2d(names[-1], args.batch_size, seed=30_000 + args.seed)
        lines += ["", time_against_ffjord(flows[variants[0]], x, args, args.timing_repeats)]
    table = "\n".join(lines)
    print("\n" + table)
    path = os.path.join(args.out, "cnf_toy_2d.md")
    with open(path, "w") as fh:
        fh.write(table + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
