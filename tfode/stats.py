"""One type for a solve's counters, and one helper to record them.

``SolveStats`` holds variables ``num_fn_evals``, ``num_steps`` and ``status``;
``record_stats(recorder, stats)`` assigns a solve's ``SolverStats`` to them.
The forward solve of a layer, bijector or model and the adjoint's backward
solve (which runs later, inside ``tape.gradient``) all report through them.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["SolveStats", "record_stats"]

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
        if target is not None:
            updates.append(target.assign(tf.cast(getattr(stats, field), target.dtype)))
    return updates
