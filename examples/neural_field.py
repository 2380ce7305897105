"""Integrate a small neural vector field with every tfode method.

Builds a random 2-hidden-layer tanh MLP ``f(t, y)`` (time concatenated to the
input), integrates a batch of initial states from t=0 to t=1 eagerly and under
XLA, and prints the final state error against a tight dopri8 float64
reference, the number of function evaluations and steps, and the time per
solve. No data is downloaded.

Run: python examples/neural_field.py [--batch 64] [--dim 2]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfode  # noqa: E402


def make_field(dim, hidden, seed, dtype):
    rng = np.random.default_rng(seed)
    w1 = tf.constant(rng.normal(size=(dim + 1, hidden)) * 1.5 / np.sqrt(dim + 1), dtype)
    w2 = tf.constant(rng.normal(size=(hidden, dim)) * 1.5 / np.sqrt(hidden), dtype)

    def field(t, y):
        t_col = tf.fill([tf.shape(y)[0], 1], t)
        return tf.tanh(tf.concat([y, t_col], axis=1) @ w1) @ w2

    return field


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dim", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    args = parser.parse_args()

    y0 = np.random.default_rng(1).normal(size=(args.batch, args.dim))
    t = tf.constant([0.0, 0.5, 1.0])
    reference = tfode.odeint(
        make_field(args.dim, args.hidden, 0, tf.float64), tf.constant(y0), tf.cast(t, tf.float64),
        method="dopri8", rtol=1e-12, atol=1e-12,
    ).numpy()[-1]  # fmt: skip
    field = make_field(args.dim, args.hidden, 0, tf.float32)
    y0 = tf.constant(y0, tf.float32)

    print(f"Neural vector field: batch={args.batch}, dim={args.dim}, hidden={args.hidden}, t in [0, 1]")
    print("max |err|: largest error of y(1) (float32) against dopri8 in float64 at rtol = atol = 1e-12;")
    print("XLA ms: wall time per call of the compiled solve, mean of 5 calls after a first (compiling) call,")
    print("        so compile time is excluded.")
    print(f"{'method':>14} {'rtol=atol':>9} {'max |err|':>10} {'NFE':>6} {'steps':>6} {'XLA ms':>8}")
    for method in tfode.method_names():
        options = None if method not in ("euler", "midpoint", "rk4") else {"step_size": 0.02}
        for tol in (1e-3, 1e-6):
            if options is not None and tol != 1e-3:
                continue
            compiled = tf.function(
                lambda y, r, a, m=method, o=options: tfode.solve(field, y, t, method=m, rtol=r, atol=a, options=o),
                jit_compile=True,
            )
            r, a = tf.constant(tol), tf.constant(tol)
            sol = compiled(y0, r, a)
            start = time.perf_counter()
            repeats = 5
            for _ in range(repeats):
                sol = compiled(y0, r, a)
            sol.ys.numpy()
            elapsed = (time.perf_counter() - start) / repeats * 1e3
            err = np.abs(sol.ys.numpy()[-1] - reference).max()
            tol_text = f"{tol:.0e}" if options is None else "h=0.02"
            print(
                f"{method:>14} {tol_text:>9} {err:10.2e} {int(sol.stats.num_fn_evals):6d} "
                f"{int(sol.stats.num_steps):6d} {elapsed:8.2f}"
            )


if __name__ == "__main__":
    main()
