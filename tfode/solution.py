"""What a solve returns: states, statistics and a status code."""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

import tensorflow as tf

__all__ = ["IntegrationError", "Solution", "SolverStats", "Status", "raise_on_failure"]


class Status(enum.IntEnum):
    """Outcome of a solve, carried as an int32 tensor through graphs.

    ``RUNNING`` exists only inside the loop.
    """

    RUNNING = -1
    SUCCESS = 0
    MAX_STEPS_REACHED = 1
    STEP_SIZE_UNDERFLOW = 2
    NON_FINITE = 3
    INVALID_INPUT = 4


STATUS_MESSAGES = {
    Status.MAX_STEPS_REACHED: "the step budget options['max_num_steps'] was exhausted",
    Status.STEP_SIZE_UNDERFLOW: (
        "the step size fell below options['min_step'] or below the resolution of t "
        "(the problem may be stiff or have a singularity)"
    ),
    Status.NON_FINITE: "the state or its derivative became NaN or infinite",
    Status.INVALID_INPUT: (
        "invalid input seen inside the graph: tolerances must be positive and finite, t strictly monotone and finite"
    ),
}


class IntegrationError(RuntimeError):
    """Raised when a solve does not reach the last requested time.

    Attributes:
        status: the ``Status`` code.
        t_reached: the time the solver reached (Python float).
        step_size: the last step size tried (Python float).
    """

    def __init__(self, status, t_reached, step_size, t_end, stage="forward", prefix=""):
        self.status = Status(status)
        self.t_reached = t_reached
        self.step_size = step_size
        super().__init__(
            f"{prefix}{stage.capitalize()} ODE solve failed with status {self.status.name}: "
            f"{STATUS_MESSAGES[self.status]}; "
            f"reached t={t_reached:.9g} of t={t_end:.9g} with step size {step_size:.3g}."
        )


def raise_on_failure(values, stats, t_end, stage="forward"):
    """Turn a failure status into an error: Python in eager mode, an Assert op in graphs.

    Under ``jit_compile=True`` XLA drops Assert ops; unreached outputs are then
    NaN and ``stats.status`` tells the cause.

    Args:
        values: list of tensors to return (guarded by the check in graphs).
        stats: ``SolverStats`` of the solve.
        t_end: the last requested time.
        stage: "forward" or "backward", for the message.

    Returns:
        ``values``, with a control dependency on the check in graph mode.
    """
    if tf.executing_eagerly():
        statuses = stats.status.numpy().reshape(-1)  # [B] per sample
        failed = [i for i, code in enumerate(statuses) if code != Status.SUCCESS]
        if failed:
            i = failed[0]
            pick = (lambda x: float(x.numpy().reshape(-1)[i])) if statuses.size > 1 else (lambda x: float(x))
            sample = f"sample {i} of {statuses.size}: " if statuses.size > 1 else ""
            end = float(tf.reshape(t_end, [-1])[i] if tf.size(t_end) > 1 else tf.reshape(t_end, [-1])[0])
            raise IntegrationError(int(statuses[i]), pick(stats.t_reached), pick(stats.step_size), end, stage,
                                   prefix=sample)  # fmt: skip
        return values
    check = tf.debugging.Assert(
        tf.reduce_all(tf.equal(stats.status, int(Status.SUCCESS))),
        [
            f"tfode: {stage} ODE solve failed (status 1: max_num_steps exhausted, 2: step size underflow, "
            "3: NaN/Inf state, 4: invalid tolerances or times); status, t reached, step size:",
            stats.status,
            stats.t_reached,
            stats.step_size,
        ],
    )
    with tf.control_dependencies([check]):
        return [tf.identity(v) for v in values]


class SolverStats(NamedTuple):
    """Counters of one solve (int32 scalars) and where it stopped.

    Attributes:
        num_fn_evals: evaluations of ``func`` in the forward solve.
        num_steps: attempted steps (accepted + rejected).
        num_accepted: accepted steps.
        num_rejected: rejected steps.
        status: int32 ``Status`` code; 0 is success.
        t_reached: time reached (time dtype).
        step_size: last proposed step magnitude (time dtype).
    """

    num_fn_evals: Any
    num_steps: Any
    num_accepted: Any
    num_rejected: Any
    status: Any
    t_reached: Any
    step_size: Any


def add_segment_stats(counters, stats):
    """An adjoint's backward counters after one more segment (internal).

    Args:
        counters: ``(evaluations, steps, worst status, time and step size of the first
            failure)``, scalars or ``[B]`` per sample.
        stats: the segment's ``SolverStats``; one more evaluation of ``f`` (at the
            segment's output time) is counted with it.
    """
    nfe, steps, status, t_fail, step_fail = counters
    first_failure = tf.equal(status, int(Status.SUCCESS)) & tf.not_equal(stats.status, int(Status.SUCCESS))
    return (
        nfe + stats.num_fn_evals + 1,
        steps + stats.num_steps,
        tf.maximum(status, stats.status),
        tf.where(first_failure, stats.t_reached, t_fail),
        tf.where(first_failure, stats.step_size, step_fail),
    )


def stats_from_loop(final):
    """The ``SolverStats`` of a finished integration loop state (the fields of the same names, ``step`` as
    ``step_size`` and ``t`` as ``t_reached``)."""
    return SolverStats(
        num_fn_evals=final.num_fn_evals,
        num_steps=final.num_steps,
        num_accepted=final.num_accepted,
        num_rejected=final.num_rejected,
        status=final.status,
        t_reached=final.t,
        step_size=final.step,
    )


class Solution(NamedTuple):
    """Result of ``tfode.solve``.

    Attributes:
        ts: the requested times, ``[len(t)]``.
        ys: states at ``ts`` with ``y0``'s structure; each leaf ``[len(t), *leaf.shape]``.
            Times the solver did not reach hold NaN.
        stats: a ``SolverStats``.
    """

    ts: Any
    ys: Any
    stats: SolverStats

    @property
    def success(self):
        """Scalar bool tensor: the solve reached the last time."""
        return tf.equal(self.stats.status, int(Status.SUCCESS))
