"""Dense output: the state anywhere inside an accepted step."""

from __future__ import annotations

import tensorflow as tf

from tfode.runge_kutta import along_batch, select_rows

__all__ = ["dense_output"]


def dense_output(tableau, y0, y1, stages, dt, theta, per_sample=False):
    """Evaluate the method's interpolant at ``t0 + theta * dt``.

    ``y(theta) = y0 + dt * sum_i k_i * sum_j dense[i, j] theta**(j+1)``; the
    coefficients are the tableau's own continuous extension (4th order for
    dopri5 and tsit5, the 6th-degree, 5th-order extension for dopri8) or the cubic
    Hermite interpolant for methods that have none.

    Args:
        tableau: a ``ButcherTableau``.
        y0, y1: lists of leaves at the step's start and end.
        stages: list of ``num_extended_stages`` stage lists (leaves).
        dt: signed step (state dtype, scalar; ``[B]`` per sample).
        theta: scalar in ``[0, 1]`` (state dtype), or ``[K]`` for ``K`` points at once;
            with ``per_sample``, ``[B]``: one point per sample (the leaves' leading axis).

    Returns:
        List of leaves (each ``[K, *leaf.shape]`` for a ``[K]`` theta); exactly
        ``y1`` where ``theta == 1``.
    """
    with tf.name_scope("dense_output"):
        dense = tableau.dense
        degree = dense.shape[1]
        powers = [theta]
        for _ in range(degree - 1):
            powers.append(powers[-1] * theta)
        weights = []
        for row in dense:
            terms = [p * tf.constant(w, theta.dtype) for w, p in zip(row, powers) if w != 0.0]
            weights.append(tf.add_n(terms) if terms else None)
        out = []
        for leaf in range(len(y0)):
            like = y0[leaf]
            terms = [_broadcast(w, theta, like, per_sample) * k[leaf] for w, k in zip(weights, stages) if w is not None]
            step = along_batch(dt, like) if per_sample else dt
            value = like + step * tf.add_n(terms)
            if per_sample or theta.shape.rank == 0:
                out.append(select_rows(theta >= 1, y1[leaf], value))
            else:
                out.append(tf.where(_broadcast(theta, theta, like, per_sample) >= 1, y1[leaf], value))
        return out


def _broadcast(x, theta, leaf, per_sample):
    """A per-theta coefficient to broadcast against ``leaf``: per sample ``[B] -> [B, 1, ..., 1]``;
    for ``K`` points of one state ``[K] -> [K, 1, ..., 1]`` (a leading axis added)."""
    if per_sample:
        return along_batch(x, leaf)
    return x if theta.shape.rank == 0 else tf.reshape(x, [-1] + [1] * len(leaf.shape))
