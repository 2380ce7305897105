"""W1 diagnostic: how the error estimate and the controller set dopri5's NFE.

Runs tfode eagerly on W1 (counts only, no timing) with four variants:
    * error estimate: Shampine's embedded solution (b_hat = 1951/21600, 0,
      22642/50085, 451/720, -12231/42400, 649/6300, 1/60; tfode's DOPRI5, as in
      torchdiffeq and diffrax) or Dormand–Prince's original 4th-order one
      (5179/57600, 0, 7571/16695, 393/640, -92097/339200, 187/2100, 1/40; as in
      Hairer's dopri5.f, scipy RK45 and TFP), which is 3/2 of Shampine's;
    * controller: tfode's default I controller (beta1 = 1/5, beta2 = 0, as
      torchdiffeq/diffrax) or dopri5.f's PI controller (beta1 = 0.17,
      beta2 = 0.04), both through solve's ``options``.
Prints NFE and max abs error of y(1) against the same float64 DOP853 reference
as W1. Runs in one pinned worker process.

Usage: python -m benchmarks.run W1-nfe
"""

from __future__ import annotations

import dataclasses

from benchmarks import _common as C
from benchmarks.workloads import w1_forward as wf


def _field(tf, d):
    """The W1 vector field ``f(t, y)`` for the workload arrays ``d`` (weights transposed once)."""
    W1T, W2T = tf.constant(d["W1"].T.copy()), tf.constant(d["W2"].T.copy())

    def f(t, y):
        return tf.matmul(tf.tanh(tf.matmul(y, W1T) + d["b1"]), W2T) + d["b2"]

    return f


def add_args(p):
    pass


def worker(args, frameworks):
    import numpy as np

    tf = C.pin_tensorflow()

    import tfode
    from tfode.tableaus import DOPRI5

    dp_hat = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
    original = dataclasses.replace(
        DOPRI5, name="dopri5_original_error", b_error=tuple(b - h for b, h in zip(DOPRI5.b, dp_hat)), dense=None
    )
    pi = {"beta1": 0.17, "beta2": 0.04}
    variants = [
        ("Shampine error, I (tfode default, torchdiffeq/diffrax)", DOPRI5, {}),
        ("Shampine error, PI", DOPRI5, pi),
        ("DP error, I", original, {}),
        ("DP error, PI (dopri5.f)", original, pi),
    ]
    lines = ["| size | tol | " + " | ".join(v[0] for v in variants) + " |", "|---|---|" + "---:|" * len(variants)]
    for size in ("d2", "d32"):
        ref = wf.reference(args.weights, size)[0]
        d = C.load_workload(size, args.weights)
        f = _field(tf, d)
        y0, t_span = tf.constant(d["y0"]), tf.constant([0.0, 1.0])
        for tol in (1e-3, 1e-5, 1e-7):
            cells = []
            for _, tableau, options in variants:
                sol = tfode.solve(f, y0, t_span, method=tableau, rtol=tol, atol=tol, options=options or None)
                err = np.abs(sol.ys[-1].numpy() - ref).max()
                cells.append(f"{int(sol.stats.num_fn_evals)} ({err:.1e})")
            lines.append(f"| {size} | {tol:g} | " + " | ".join(cells) + " |")
    return {"table": lines}


WORKERS = {"tf": (worker, "tf")}


def report(args, ctx):
    res = ctx.run("tf")
    print(res.get("error") or "\n".join(res["table"]))
    return res
