"""Irregularly sampled batches: validation, time gaps, and solves at per-series times.

Batch format used by every latent model:

* ``times``: ``[T]`` (shared by the batch) or ``[B, T]`` (each series its own),
  non-decreasing within a series, ``>= 0``; the latent trajectory starts at ``t = 0``.
* ``values``: ``[B, T, D]``; entries where ``mask == 0`` are ignored (may be NaN).
* ``mask``: ``[B, T, D]`` of 0/1 (optional, default all ones). Padding a short
  series = repeating its last time with an all-zero mask row.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfode.solvers import solve

__all__ = ["check_batch", "next_observed_gaps", "solve_at_series_times", "unpack_inputs"]


def check_batch(times, values, mask=None):
    """Validate a batch held in numpy/eager tensors; raise clear errors.

    Raises:
        ValueError: mismatched shapes, decreasing or negative times within a
            series, a series with no observed point, NaN in observed values.
    """
    times, values = np.asarray(times), np.asarray(values)
    mask = np.ones_like(values) if mask is None else np.asarray(mask)
    if values.ndim != 3:
        raise ValueError(f"values must be [batch, time, features], got shape {values.shape}.")
    if mask.shape != values.shape:
        raise ValueError(f"mask must have values' shape {values.shape}, got {mask.shape}.")
    if times.ndim not in (1, 2) or times.shape[-1] != values.shape[1]:
        raise ValueError(f"times must be [time] or [batch, time] matching values {values.shape}, got {times.shape}.")
    if times.ndim == 2 and times.shape[0] != values.shape[0]:
        raise ValueError(f"times has batch {times.shape[0]} but values has batch {values.shape[0]}.")
    if not np.all(np.isfinite(times)) or np.any(times < 0):
        raise ValueError("times must be finite and >= 0 (the latent state starts at t = 0).")
    if np.any(np.diff(times, axis=-1) < 0):
        raise ValueError("times must be non-decreasing within each series.")
    observed = mask > 0
    if not np.all(observed.any(axis=(1, 2))):
        empty = np.flatnonzero(~observed.any(axis=(1, 2)))
        raise ValueError(f"series {empty.tolist()} have no observed point (mask all zero).")
    if np.any(~np.isfinite(values[observed])):
        raise ValueError("values contain NaN/Inf at observed (mask == 1) entries.")


def unpack_inputs(inputs, obs_dim):
    """Validate a model's input dict; ``(times, values, mask, query)`` as tensors.

    Args:
        inputs: dict with ``times`` ``[T]`` or ``[B, T]``, ``values`` ``[B, T, D]``
            and optional ``mask`` ``[B, T, D]`` (default all ones) and
            ``query_times`` ``[Q]`` or ``[B, Q]`` (returned as ``None`` if absent).
        obs_dim: the model's ``D``.

    Everything is cast to the values' float dtype. Eagerly the whole batch is
    checked (``check_batch``, finite non-negative query times); in a graph,
    the static shapes and, at run time, the query batch size.

    Raises:
        ValueError: naming the offending argument.
    """
    if not isinstance(inputs, dict) or "times" not in inputs or "values" not in inputs:
        raise ValueError("inputs must be a dict with 'times' and 'values' (optional 'mask', 'query_times').")
    values = tf.convert_to_tensor(inputs["values"])
    if not values.dtype.is_floating:
        values = tf.cast(values, tf.float32)
    times = tf.cast(tf.convert_to_tensor(inputs["times"]), values.dtype)
    mask = inputs.get("mask")
    mask = tf.ones_like(values) if mask is None else tf.cast(tf.convert_to_tensor(mask), values.dtype)
    query = inputs.get("query_times")
    query = None if query is None else tf.cast(tf.convert_to_tensor(query), values.dtype)
    if values.shape.rank != 3:
        raise ValueError(f"values must be [batch, time, features], got shape {values.shape}.")
    if values.shape[-1] is not None and values.shape[-1] != obs_dim:
        raise ValueError(f"values must have obs_dim = {obs_dim} features, got shape {values.shape}.")
    if not mask.shape.is_compatible_with(values.shape):
        raise ValueError(f"mask must have values' shape {values.shape}, got {mask.shape}.")
    if times.shape.rank not in (1, 2) or not tf.TensorShape(times.shape[-1:]).is_compatible_with(values.shape[1:2]):
        raise ValueError(f"times must be [time] or [batch, time] matching values {values.shape}, got {times.shape}.")
    if query is not None:
        if query.shape.rank not in (1, 2):
            raise ValueError(f"query_times must be [query] or [batch, query], got shape {query.shape}.")
        if query.shape.rank == 2 and not tf.TensorShape(query.shape[:1]).is_compatible_with(values.shape[:1]):
            raise ValueError(f"query_times has batch {query.shape[0]} but values has batch {values.shape[0]}.")
    if tf.executing_eagerly():
        check_batch(times.numpy(), values.numpy(), mask.numpy())
        if query is not None and (not np.all(np.isfinite(query.numpy())) or np.any(query.numpy() < 0)):
            raise ValueError("query_times must be finite and >= 0 (the state starts at t = 0).")
    elif query is not None and query.shape.rank == 2:
        check = tf.debugging.assert_equal(
            tf.shape(query)[0], tf.shape(values)[0], message="query_times and values must have the same batch size"
        )
        with tf.control_dependencies([check]):
            query = tf.identity(query)
    return times, values, mask, query


def next_observed_gaps(times, step_observed):
    """Gap from each point to the next observed point of its series.

    Args:
        times: ``[B, T]``.
        step_observed: ``[B, T]`` bool, any feature observed at that time.

    Returns:
        ``[B, T]``: ``t_next_observed - t_i`` (0 where no later point is observed).
    """
    later = tf.linalg.band_part(tf.ones_like(times[0:1, :, None] * times[0:1, None, :]), 0, -1)
    later = later - tf.linalg.band_part(later, 0, 0)  # strictly upper: j > i
    candidate = tf.where((later > 0) & step_observed[:, None, :], times[:, None, :], tf.constant(np.inf, times.dtype))
    next_time = tf.reduce_min(candidate, axis=-1)
    return tf.where(tf.math.is_finite(next_time), next_time - times, tf.zeros_like(times))


def solve_at_series_times(func, z0, times, solver):
    """Solve ``dz/dt = func(t, z)`` from ``z(0) = z0`` at shared or per-series times.

    Shared times ``[Q]``: one solve of the batch. Per-series times ``[B, Q]``: a
    per-sample solve (``batch_axis=0``, with or without the adjoint): each series
    steps to its own times, so its result does not depend on the other series and
    the cost grows linearly with the batch (no union grid of all series' times).

    Args:
        func: vector field on ``[B, L]``; ``t`` is a scalar, or ``[B]`` per sample.
        z0: ``[B, L]`` at ``t = 0``.
        times: ``[Q]`` or ``[B, Q]``, ``>= 0``, non-decreasing per series.
        solver: the ``SolverConfig``.

    Returns:
        ``(zs, stats)``: ``zs`` ``[B, Q, L]``; ``stats`` scalars, or ``[B]`` per sample.
    """
    times = tf.convert_to_tensor(times)
    zero = tf.zeros([1], times.dtype)
    if times.shape.rank == 1:
        grid = tf.concat([zero, times], axis=0)
        solution = solve(func, z0, grid, solver.replace(batch_axis=None), _allow_repeated_times=True)
        return tf.transpose(solution.ys[1:], [1, 0, 2]), solution.stats
    batch = tf.shape(times)[0]
    rows = tf.concat([tf.zeros(tf.stack([batch, 1]), times.dtype), times], axis=1)
    solution = solve(func, z0, rows, solver.replace(batch_axis=0))
    return tf.transpose(solution.ys[1:], [1, 0, 2]), solution.stats
