"""In-graph validation of TF Serving requests.

A served signature runs without Python, so a malformed request must fail INSIDE
the graph: each check here is a ``tf.debugging`` assertion whose message names the
request input and the rule it broke; TF Serving returns it as an
``InvalidArgumentError``. Every checked input is returned behind the assertions
(``tf.identity`` under ``control_dependencies``), so nothing downstream runs first.

Sizes are compared through ``tf.size``: a feed's static shape is the signature's
``TensorSpec``, which TF's session (and Grappler, which folds shapes it believes
known) does not enforce, so ``tf.shape(x)[-1]`` would be folded to the declared
size and never see a wrong one. ``tf.size(x)`` of a partly unknown shape is a
run-time value.
"""

from __future__ import annotations

import math

import tensorflow as tf

__all__ = ["check_inputs", "check_latent_request", "check_sample_request", "check_tolerances", "check_vectors"]


def _guard(checks, *tensors):
    with tf.control_dependencies(checks):
        out = tuple(tf.identity(t) for t in tensors)
    return out if len(out) > 1 else out[0]


def _size_check(name, x, inner, shape_text):
    """``x`` holds ``shape(x)[0] * inner`` elements: the declared trailing shape ``shape_text``."""
    expected = tf.shape(x, out_type=tf.int64)[0] * inner
    return tf.debugging.assert_equal(
        tf.size(x, out_type=tf.int64), expected, message=f"Invalid request: {name} must have shape {shape_text}"
    )


def _finite(name, x, where=None, rule=None):
    ok = tf.math.is_finite(x)
    if where is not None:
        ok = ok | tf.logical_not(where)
    return tf.debugging.Assert(tf.reduce_all(ok), [f"Invalid request: {name} must be {rule or 'finite (no NaN/Inf)'}"])


def _non_negative_sorted(name, times):
    """``times`` ``[B, N]``: finite, ``>= 0`` and non-decreasing along each row."""
    return [
        _finite(name, times),
        tf.debugging.Assert(
            tf.reduce_all(times >= 0), [f"Invalid request: {name} must be >= 0 (the latent state starts at t = 0)"]
        ),
        tf.debugging.Assert(
            tf.reduce_all(times[:, 1:] >= times[:, :-1]),
            [f"Invalid request: {name} must be non-decreasing within each series (sort each row)"],
        ),
    ]


def check_latent_request(times, values, mask, query, obs_dim):
    """Checks a latent ODE request; returns ``(times, values, mask, query)`` behind the checks.

    Rules (each message names its input):

    * ``observed_values`` ``[B, T, obs_dim]``; ``observed_times`` ``[B, T]`` and
      ``observed_mask`` ``[B, T, obs_dim]`` match it, ``query_times`` ``[B, Q]`` has its batch;
    * ``observed_times`` and ``query_times`` finite, ``>= 0``, non-decreasing per series;
    * every series has an observed entry (``observed_mask`` not all zero);
    * ``observed_values`` finite where ``observed_mask`` is nonzero (elsewhere ignored).

    Args:
        times: ``[B, T]``; values, mask: ``[B, T, D]``; query: ``[B, Q]``.
        obs_dim: ``D``.
    """
    with tf.name_scope("check_request"):
        shape = tf.shape(values, out_type=tf.int64)
        checks = [
            _size_check("observed_values", values, shape[1] * obs_dim, f"[batch, time, {obs_dim}]"),
            tf.debugging.assert_equal(
                tf.shape(times, out_type=tf.int64),
                shape[:2],
                message="Invalid request: observed_times must have shape [batch, time], matching observed_values",
            ),
            tf.debugging.assert_equal(
                tf.shape(mask, out_type=tf.int64),
                shape,
                message="Invalid request: observed_mask must have the shape of observed_values [batch, time, features]",
            ),
            tf.debugging.assert_equal(
                tf.shape(query, out_type=tf.int64)[0],
                shape[0],
                message="Invalid request: query_times must have the batch size of observed_values (one row per series)",
            ),
        ]
        with tf.control_dependencies(checks):  # the rules below index with these shapes
            observed = mask > 0
            checks += _non_negative_sorted("observed_times", times) + _non_negative_sorted("query_times", query)
            checks.append(
                tf.debugging.Assert(
                    tf.reduce_all(tf.reduce_any(observed, axis=[1, 2])),
                    [
                        "Invalid request: observed_mask must observe at least one value of every series "
                        "(a series whose mask is all zero)"
                    ],
                )
            )
            checks.append(
                _finite(
                    "observed_values",
                    values,
                    where=observed,
                    rule="finite where observed_mask is nonzero (masked entries may be NaN)",
                )
            )
        return _guard(checks, times, values, mask, query)


def check_vectors(name, x, dim):
    """``x`` ``[B, dim]`` finite (a flow's request); returns ``x`` behind the checks."""
    with tf.name_scope("check_request"):
        checks = [_size_check(name, x, dim, f"[batch, {dim}]")]
        with tf.control_dependencies(checks):
            checks.append(_finite(name, x))
        return _guard(checks, x)


def check_inputs(name, x, spec_shape):
    """``x`` with the signature's shape ``spec_shape`` (unknown batch only) and finite."""
    with tf.name_scope("check_request"):
        inner = math.prod(int(d) for d in spec_shape[1:]) if all(d is not None for d in spec_shape[1:]) else None
        text = "[" + ", ".join("batch" if d is None else str(d) for d in spec_shape) + "]"
        checks = [] if inner is None else [_size_check(name, x, inner, text)]
        with tf.control_dependencies(checks):
            checks.append(_finite(name, x))
        return _guard(checks, x)


def check_tolerances(rtol, atol):
    """Scalar ``rtol``/``atol`` positive and finite; returns them behind the checks."""
    with tf.name_scope("check_request"):
        checks = [
            tf.debugging.Assert(
                tf.math.is_finite(value) & (value > 0),
                [f"Invalid request: {name} must be positive and finite, got", value],
            )
            for name, value in (("rtol", rtol), ("atol", atol))
        ]
        return _guard(checks, rtol, atol)


def check_sample_request(num_samples):
    """``num_samples >= 0``; returns it behind the check."""
    with tf.name_scope("check_request"):
        check = tf.debugging.Assert(num_samples >= 0, ["Invalid request: num_samples must be >= 0, got", num_samples])
        return _guard([check], num_samples)
