"""One type for a solve's counters, and one helper to record them.

``SolveStats`` holds variables ``num_fn_evals``, ``num_steps`` and ``status``;
``record_stats(recorder, stats)`` assigns a solve's ``SolverStats`` to them.
The forward solve of a layer, bijector or model and the adjoint's backward
solve (which runs later, inside ``tape.gradient``) all report through them.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["SolveStats", "batch_fn_evals", "record_stats"]

_FIELDS = ("num_fn_evals", "num_steps", "status")


class SolveStats(tf.Module):
    """Counters of the last solve, in variables (they can be read after a graph ran).

    Under ``tf.distribute`` each replica writes its own copy (synchronized on
    read; an update is no cross-replica merge); a read outside replica context
    gives the first replica's counts.

    Args:
        name: module name.
        num_fn_evals, num_steps, status: optional existing scalar variables to write
            into instead of new int32 ones (e.g. a Keras layer's weights, which
            ``fit`` reports as metrics; any numeric dtype), or ``False`` to not
            record that counter.

    Attributes:
        num_fn_evals: evaluations of ``f`` (for the adjoint's backward solve: of the
            augmented dynamics, each one ``f`` plus one vector-Jacobian product, plus
            one ``f`` per output time).
        num_steps: attempted steps.
        status: the ``tfode.Status`` code (backward: the worst over its segments).

    Example:
        >>> stats = tfode.SolveStats()
        >>> with tf.GradientTape() as tape:
        ...     ys = tfode.odeint(f, y0, t, adjoint=True, backward_stats=stats)
        >>> tape.gradient(ys, y0); int(stats.num_fn_evals)
    """

    def __init__(self, name="solve_stats", *, num_fn_evals=None, num_steps=None, status=None):
        super().__init__(name=name)
        given = {"num_fn_evals": num_fn_evals, "num_steps": num_steps, "status": status}
        with self.name_scope:
            for field in _FIELDS:
                variable = given[field]
                if variable is False:
                    variable = None
                elif variable is None:
                    variable = tf.Variable(0, dtype=tf.int32, trainable=False, name=field,
                                           synchronization=tf.VariableSynchronization.ON_READ,
                                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)  # fmt: skip
                setattr(self, field, variable)


def record_stats(recorder, stats):
    """Assign a solve's counters to ``recorder``'s variables; returns the assign ops.

    Args:
        recorder: a ``SolveStats`` (or any object with some of the variables
            ``num_fn_evals``, ``num_steps``, ``status``), or ``None`` (no-op).
        stats: a ``SolverStats`` (scalar counters).
    """
    if recorder is None:
        return []
    updates = []
    for field in _FIELDS:
        target = getattr(recorder, field, None)
        # A Keras variable's assign returns the value, not the assignment: assign its tf.Variable,
        # whose op a graph built without automatic control dependencies (a gradient function) keeps.
        inner = getattr(target, "value", None)
        if isinstance(inner, tf.Variable):
            target = inner
        if target is not None:
            value = tf.convert_to_tensor(getattr(stats, field))
            if value.shape.rank != 0:  # a per-sample solve: the batch's cost, the worst status
                value = batch_fn_evals(stats) if field == "num_fn_evals" else _max_or_zero(value)
            updates.append(target.assign(tf.cast(value, target.dtype)))
    return updates


def _max_or_zero(values):
    values = tf.reshape(values, [-1])
    return tf.reduce_max(tf.concat([values, tf.zeros([1], values.dtype)], axis=0))


def batch_fn_evals(stats):
    """Evaluations of ``f`` on the whole batch: ``num_fn_evals``, or for a per-sample solve
    (``[B]`` counters) the largest, which is how often the batched ``f`` ran (0 for an empty batch)."""
    counts = tf.reshape(tf.convert_to_tensor(stats.num_fn_evals), [-1])
    return tf.reduce_max(tf.concat([counts, tf.zeros([1], counts.dtype)], axis=0))
