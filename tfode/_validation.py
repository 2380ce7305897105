"""Argument checks at the API boundary: clear errors naming the argument.

Values known in Python (eager tensors, constants, numpy arrays) are checked
here and raise ``ValueError``/``TypeError``. Values only known when a graph runs
(e.g. tolerances fed as ``tf.function`` arguments) are checked in-graph and end
the solve with ``Status.INVALID_INPUT``.
"""

from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf

from tfode.norms import norm_dtype

_FLOAT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


def _static_value(x):
    try:
        return tf.get_static_value(x)
    except (TypeError, ValueError):
        return None


def _is_integer_like(x):
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return False
    return tf.as_dtype(dtype).is_integer or tf.as_dtype(dtype).is_bool


def _is_number(x):
    return isinstance(x, (numbers.Real, np.number)) and not isinstance(x, (bool, np.bool_))


def numbers_to_tensor(y0):
    """A (nested) Python list of plain numbers as ONE tensor; anything else unchanged.

    ``[1.0, 2.0]`` is a state vector (as for ``tf.constant``), not a structure of two
    scalars: it becomes a float32 tensor ``[2]`` (ints too). A list holding any
    tensor or array stays a structure of leaves, and tuples and dicts always do.
    """
    if not isinstance(y0, list) or not y0:
        return y0
    flat = tf.nest.flatten(y0)
    if not all(_is_number(leaf) for leaf in flat) or not all(isinstance(x, list) for x in _sublists(y0)):
        return y0
    return tf.constant(np.asarray(y0, dtype=np.float32))


def _sublists(x):
    """Every nested container of a list of numbers (all must be lists for an array-like)."""
    for item in x:
        if isinstance(item, (list, tuple, dict)):
            yield item
            yield from _sublists(item)


def as_state(y0):
    """Convert ``y0`` (tensor or nested structure) to a flat list of leaves.

    A list of plain numbers is one tensor (``numbers_to_tensor``).

    Returns:
        ``(leaves, structure)``.

    Raises:
        TypeError: integer/complex leaves, or leaves of differing dtypes.
        ValueError: an empty structure.
    """
    y0 = numbers_to_tensor(y0)
    structure = y0
    raw = tf.nest.flatten(y0)
    if not raw:
        raise ValueError("y0 must contain at least one tensor, got an empty structure.")
    leaves = []
    for leaf in raw:
        if _is_integer_like(leaf):
            raise TypeError(f"y0 must have a floating dtype (float16/bfloat16/float32/float64), got {leaf.dtype}.")
        leaf = tf.convert_to_tensor(leaf)
        if leaf.dtype == tf.int32:  # a Python int literal
            leaf = tf.cast(leaf, tf.float32)
        if leaf.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"y0 must have a floating dtype (float16/bfloat16/float32/float64), got {leaf.dtype}.")
        leaves.append(leaf)
    dtypes = {leaf.dtype for leaf in leaves}
    if len(dtypes) > 1:
        raise TypeError(f"all leaves of y0 must share one dtype, got {sorted(d.name for d in dtypes)}.")
    return leaves, structure


def time_dtype(t, state_dtype):
    """Times are at least float32, and float64 whenever ``t`` or the state is."""
    t_dtype = getattr(t, "dtype", None)
    wide = state_dtype == tf.float64 or (t_dtype is not None and tf.as_dtype(t_dtype) == tf.float64)
    return tf.float64 if wide else tf.float32


def as_times(t, state_dtype, allow_repeats=False):
    """Convert and check the output times.

    With ``allow_repeats`` (internal: a latent model's shared query times may
    repeat), non-decreasing times with repeats are accepted.

    Returns:
        ``(t, valid)``: ``t`` a rank-1 tensor in time dtype with static length,
        and ``valid`` ``None`` (checked here) or a scalar bool tensor to check in-graph.

    Raises:
        TypeError: integer or complex ``t``.
        ValueError: wrong rank, no points, unknown length, non-finite or not
            strictly monotone values.
    """
    if _is_integer_like(t):
        raise TypeError(f"t must have a floating dtype, got {t.dtype}; pass e.g. tf.constant([0., 1.]).")
    dtype = time_dtype(t, state_dtype)
    if isinstance(t, (list, tuple)):
        t = np.asarray(t, dtype=dtype.as_numpy_dtype)
    t = tf.convert_to_tensor(t)
    if not t.dtype.is_floating:
        raise TypeError(f"t must have a floating dtype, got {t.dtype}.")
    t = tf.cast(t, dtype)
    if t.shape.rank != 1:
        raise ValueError(f"t must be a 1-D tensor of times, got shape {t.shape}.")
    if t.shape[0] is None and not allow_repeats:
        raise ValueError("t must have a statically known length (the output buffer is preallocated).")
    if t.shape[0] is not None and t.shape[0] < 1:
        raise ValueError("t must contain at least one time, got an empty tensor.")
    values = _static_value(t)
    if values is not None:
        if not np.all(np.isfinite(values)):
            raise ValueError(f"t must be finite, got {values}.")
        diffs = np.diff(values)
        if allow_repeats:
            if diffs.size and not np.all(diffs >= 0):
                raise ValueError(f"t must be non-decreasing, got {values}.")
        elif diffs.size and not (np.all(diffs > 0) or np.all(diffs < 0)):
            raise ValueError(f"t must be strictly increasing or strictly decreasing, got {values}.")
        return t, None
    finite = tf.reduce_all(tf.math.is_finite(t))
    if t.shape[0] is not None and t.shape[0] < 2:
        return t, finite
    diffs = t[1:] - t[:-1]
    if allow_repeats:
        return t, finite & tf.reduce_all(diffs >= 0)
    monotone = tf.reduce_all(diffs > 0) | tf.reduce_all(diffs < 0)
    return t, finite & monotone


def as_sample_times(t, leaves):
    """Output times of a per-sample solve: ``[N]`` (shared) or ``[B, N]``, each row monotone.

    Rows may repeat times (padding repeats a series' last time). Returns ``(t [B, N], valid)``
    with ``valid`` ``None`` (checked here) or a ``[B]`` bool tensor to check in-graph.

    Raises:
        ValueError: a leaf without a batch axis, batch sizes that differ, ``t`` of another
            rank or batch, non-finite or non-monotone rows.
    """
    for leaf in leaves:
        if leaf.shape.rank is not None and leaf.shape.rank < 1:
            raise ValueError("batch_axis=0 needs every leaf of y0 to have a leading batch axis, got a scalar.")
    sizes = {leaf.shape[0] for leaf in leaves if leaf.shape[0] is not None}
    if len(sizes) > 1:
        raise ValueError(f"batch_axis=0: the leaves of y0 have different batch sizes {sorted(sizes)}.")
    dtype = time_dtype(t, leaves[0].dtype)
    t = tf.cast(tf.convert_to_tensor(t), dtype) if not _is_integer_like(t) else tf.cast(t, dtype)
    batch = tf.shape(leaves[0])[0]
    if t.shape.rank == 1:
        t = tf.broadcast_to(t[None], tf.stack([batch, tf.shape(t)[0]]))
    elif t.shape.rank != 2:
        raise ValueError(f"per-sample t must be [N] or [B, N], got shape {t.shape}.")
    if t.shape[1] == 0:
        raise ValueError("t must hold at least one time, got shape [B, 0].")
    if sizes and t.shape[0] is not None and t.shape[0] != next(iter(sizes)):
        raise ValueError(f"t has {t.shape[0]} rows but y0 has a batch of {next(iter(sizes))}.")
    values = _static_value(t)
    if values is not None:
        if not np.all(np.isfinite(values)):
            raise ValueError("t must be finite.")
        diffs = np.diff(values, axis=1)
        bad = ~(np.all(diffs >= 0, axis=1) | np.all(diffs <= 0, axis=1))
        if np.any(bad):
            raise ValueError(f"each row of t must be monotone (repeats allowed); rows {np.flatnonzero(bad)} are not.")
        return t, None
    diffs = t[:, 1:] - t[:, :-1]
    monotone = tf.reduce_all(diffs >= 0, axis=1) | tf.reduce_all(diffs <= 0, axis=1)
    return t, tf.reduce_all(tf.math.is_finite(t), axis=1) & monotone


def _is_string_like(x):
    if isinstance(x, (str, bytes)):
        return True
    if isinstance(x, np.ndarray):
        return x.dtype.kind in "SUO"
    return tf.is_tensor(x) and x.dtype == tf.string


def as_tolerance(name, value, leaves, structure):
    """Convert ``rtol``/``atol`` into one tensor per leaf (norm dtype).

    ``value`` may be a scalar, a tensor broadcastable to every leaf, or a
    structure matching ``y0`` with one such value per leaf.

    Returns:
        ``(per_leaf, valid)`` with ``valid`` ``None`` or an in-graph bool.

    Raises:
        ValueError: non-positive/non-finite values, or shapes that do not broadcast.
    """
    dtype = norm_dtype(leaves[0].dtype)
    if value is None:
        raise ValueError(f"{name} must be given for an adaptive method.")
    try:
        tf.nest.assert_same_structure(value, structure)
        per_leaf = tf.nest.flatten(value) if len(leaves) > 1 or tf.nest.is_nested(structure) else [value]
    except (ValueError, TypeError):
        per_leaf = [value] * len(leaves)
    out, checks = [], []
    for tol, leaf in zip(per_leaf, leaves):
        if _is_string_like(tol):
            raise TypeError(f"{name} must be a number, a float tensor or a structure of them, got {tol!r}.")
        if _is_integer_like(tol) and not np.isscalar(tol):
            tol = tf.cast(tol, dtype)
        tol = tf.cast(tf.convert_to_tensor(tol), dtype)
        try:
            tf.broadcast_static_shape(tol.shape, leaf.shape)
        except ValueError as err:
            raise ValueError(f"{name} of shape {tol.shape} does not broadcast to y0's shape {leaf.shape}.") from err
        values = _static_value(tol)
        if values is not None:
            if not (np.all(np.isfinite(values)) and np.all(values > 0)):
                raise ValueError(f"{name} must be positive and finite, got {values}.")
        else:
            checks.append(tf.reduce_all(tf.math.is_finite(tol) & (tol > 0)))
        out.append(tol)
    valid = None
    if checks:
        valid = tf.reduce_all(tf.stack(checks))
    return out, valid


def all_valid(*flags):
    """Combine optional in-graph validity flags (``None`` means checked); a ``[B]`` flag stays per sample."""
    flags = [f for f in flags if f is not None]
    if not flags:
        return None
    combined = flags[0]
    for flag in flags[1:]:
        combined = combined & flag
    return combined


def check_callable(func):
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y) -> dy/dt, got {type(func).__name__}.")


def wrap_vector_field(func, structure, leaves, args=()):
    """Adapt the user's ``func(t, y, *args)`` to the loop's ``fn(t, leaves) -> leaves``.

    ``t`` is handed to ``func`` in the state's dtype. Every call checks the
    output's structure, dtype and static shape (Python-side, free in graphs).
    """
    state_dtype = leaves[0].dtype

    def fn(t, flat):
        y = tf.nest.pack_sequence_as(structure, flat)
        dy = func(tf.cast(t, state_dtype), y, *args)
        if dy is None or any(d is None for d in tf.nest.flatten(dy)):
            got = "None" if dy is None else f"{dy!r} (with a None)"
            raise TypeError(f"func(t, y) must return dy/dt with y0's structure, got {got}: a missing return statement?")
        try:
            tf.nest.assert_same_structure(dy, structure)
        except (ValueError, TypeError) as err:
            raise ValueError(f"func(t, y) must return a value with y0's structure; {err}") from err
        dy_flat = [tf.convert_to_tensor(d) for d in tf.nest.flatten(dy)]
        for d, leaf in zip(dy_flat, leaves):
            if d.dtype != state_dtype:
                raise TypeError(f"func(t, y) returned dtype {d.dtype}, but y0 has dtype {state_dtype}.")
            if not d.shape.is_compatible_with(leaf.shape):
                raise ValueError(f"func(t, y) returned shape {d.shape}, but y0 has shape {leaf.shape}.")
        return dy_flat

    return fn
