#!/usr/bin/env python
"""Diagnostic for w1_forward.py: why tfode's dopri5 takes more steps than torchdiffeq's.

Runs tfode eagerly on W1 (counts only, no timing) with four variants:
    * error estimate: Dormand–Prince's original embedded 4th-order solution
      (tfode's DOPRI5, as in Hairer's dopri5.f, scipy RK45 and TFP) or
      Shampine's alternative (b_hat = 1951/21600, 0, 22642/50085, 451/720,
      -12231/42400, 649/6300, 1/60: the estimate torchdiffeq and diffrax use,
      exactly 2/3 of the original one);
    * controller: tfode's default PI (beta1 = 0.17, beta2 = 0.04, dopri5.f's)
      or a plain I controller (beta1 = 1/5, beta2 = 0), as torchdiffeq/diffrax.
Prints NFE and max abs error of y(1) against the same float64 DOP853 reference
as w1_forward.py.

It swaps tfode.solvers.PIController for the run (the controller's beta1/beta2
are not reachable through solve's options), i.e. it depends on tfode internals.

Usage: python benchmarks/w1_nfe_variants.py
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _common as C  # noqa: E402
import w1_forward as wf  # noqa: E402


def _field(tf, d):
    """The W1 vector field ``f(t, y)`` for the workload arrays ``d`` (weights transposed once)."""
    W1T, W2T = tf.constant(d["W1"].T.copy()), tf.constant(d["W2"].T.copy())

    def f(t, y):
        return tf.matmul(tf.tanh(tf.matmul(y, W1T) + d["b1"]), W2T) + d["b2"]

    return f


def main():
    C.set_thread_env()
    import numpy as np
    import tensorflow as tf

    import tfode
    import tfode.solvers as solvers
    from tfode.controllers import PIController
    from tfode.tableaus import DOPRI5

    shampine_hat = (1951 / 21600, 0.0, 22642 / 50085, 451 / 720, -12231 / 42400, 649 / 6300, 1 / 60)
    shampine = dataclasses.replace(
        DOPRI5, name="dopri5_shampine_error", b_error=tuple(b - h for b, h in zip(DOPRI5.b, shampine_hat)), dense=None
    )
    variants = [
        ("DP error, PI (tfode default)", DOPRI5, {}),
        ("DP error, I", DOPRI5, dict(beta1=0.2, beta2=0.0)),
        ("Shampine error, PI", shampine, {}),
        ("Shampine error, I (torchdiffeq/diffrax)", shampine, dict(beta1=0.2, beta2=0.0)),
    ]
    print("| size | tol | " + " | ".join(v[0] for v in variants) + " |")
    print("|---|---|" + "---:|" * len(variants))
    try:
        for size in ("d2", "d32"):
            ref = wf.reference(C.DEFAULT_WEIGHTS, size)[0]
            d = C.load_workload(size, C.DEFAULT_WEIGHTS)
            f = _field(tf, d)
            y0, t_span = tf.constant(d["y0"]), tf.constant([0.0, 1.0])
            for tol in (1e-3, 1e-5, 1e-7):
                cells = []
                for _, tableau, kw in variants:
                    solvers.PIController = functools.partial(PIController, **kw)
                    sol = tfode.solve(f, y0, t_span, method=tableau, rtol=tol, atol=tol)
                    err = np.abs(sol.ys[-1].numpy() - ref).max()
                    cells.append(f"{int(sol.stats.num_fn_evals)} ({err:.1e})")
                print(f"| {size} | {tol:g} | " + " | ".join(cells) + " |")
    finally:
        solvers.PIController = PIController


if __name__ == "__main__":
    main()
