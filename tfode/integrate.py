"""The integration loop: one ``tf.while_loop`` over attempted steps.

``integrate`` is a short driver over module-level pieces. Each iteration asks
the step-size controller where to step (``StepSizeController.propose``), takes
one Runge–Kutta step, asks the controller to accept or reject it (``adapt``),
writes every requested output time that an accepted step covers by dense
output into a preallocated buffer (``_write_outputs``: all of them in one
batched evaluation and scatter; under XLA, whose shapes must be static, one
per inner-loop iteration), and updates the status. No Python branching on
tensor values, so the same code runs eagerly, inside ``tf.function`` and under
``jit_compile=True``. Failures end the loop with a ``Status`` code; unreached
output times hold NaN.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import tensorflow as tf

from tfode._tf_compat import in_xla_context
from tfode.interpolation import dense_output
from tfode.norms import scaled_error_ratio
from tfode.runge_kutta import runge_kutta_step, select_rows
from tfode.solution import Status, stats_from_loop

__all__ = ["integrate"]


class _LoopState(NamedTuple):
    t: Any
    step: Any
    y: tuple
    f: tuple
    memory: Any
    index: Any
    num_steps: Any
    num_accepted: Any
    num_rejected: Any
    num_fn_evals: Any
    status: Any
    buffers: tuple


class _Problem(NamedTuple):
    """What every piece of the loop reads (Python objects and loop-invariant tensors)."""

    fn: Any
    t: Any
    num_times: Any
    t_end: Any
    direction: Any
    tableau: Any
    rtol: list
    atol: list
    controller: Any
    error_mask: Any
    dense: bool


def _all_finite(leaves):
    checks = [tf.reduce_all(tf.math.is_finite(leaf)) for leaf in leaves]
    return checks[0] if len(checks) == 1 else tf.reduce_all(tf.stack(checks))


def _time_at(p, index):
    return tf.gather(p.t, tf.minimum(index, p.num_times - 1))


def initial_state(p, y0, inputs_valid):
    """Evaluate ``f(t0, y0)``, pick the first step, set up buffers and counters."""
    t0 = p.t[0]
    f0 = list(p.fn(t0, y0))
    step0, memory, extra = p.controller.initial(p.fn, t0, y0, f0, p.t, p.direction, p.tableau, p.rtol, p.atol,
                                                p.error_mask)  # fmt: skip
    status = tf.constant(int(Status.RUNNING), tf.int32)
    status = tf.where(_all_finite(y0) & _all_finite(f0), status, int(Status.NON_FINITE))
    if inputs_valid is not None:
        status = tf.where(inputs_valid, status, int(Status.INVALID_INPUT))
    static_times = p.t.shape[0]
    if static_times is None or static_times == 1:
        single = tf.equal(p.num_times, 1) & tf.equal(status, int(Status.RUNNING))
        status = tf.where(single, int(Status.SUCCESS), status)
    buffers = ()
    if p.dense:
        buffers = tuple(
            tf.TensorArray(leaf.dtype, size=p.num_times, element_shape=leaf.shape).write(0, leaf) for leaf in y0
        )
    zero = tf.constant(0, tf.int32)
    return _LoopState(t=t0, step=tf.stop_gradient(step0), y=tuple(y0), f=tuple(f0), memory=memory,
                      index=tf.constant(1, tf.int32), num_steps=zero, num_accepted=zero, num_rejected=zero,
                      num_fn_evals=tf.constant(1 + extra, tf.int32), status=status, buffers=buffers)  # fmt: skip


def _landing(p, s):
    """The step to attempt, ``(t1, step)``: the controller's proposal, landing exactly on its target when close."""
    step, target = p.controller.propose(s.t, s.step, _time_at(p, s.index), p.t_end)
    remaining = tf.abs(target - s.t)
    lands = step * tf.constant(1.0 + p.controller.landing_slack, step.dtype) >= remaining
    step = tf.where(lands, remaining, step)
    return tf.where(lands, target, s.t + p.direction * step), step


def _write_outputs(p, s, t1, y1, stages, accept):
    """Dense output for every requested time in ``(s.t, t1]``; returns ``(index, buffers)``."""
    if not p.dense:
        return s.index + tf.cast(accept & tf.equal(t1, p.t_end), tf.int32), s.buffers
    dtype = y1[0].dtype
    dt = tf.cast(t1 - s.t, dtype)
    span = t1 - s.t

    def theta_at(times):
        # A zero-length step (repeated output times) sits at theta = 1.
        return tf.cast(tf.where(tf.equal(span, 0), tf.ones_like(times), (times - s.t) / span), dtype)

    if in_xla_context():  # static shapes: one output time per inner iteration

        def cond(index, _):
            return accept & (index < p.num_times) & (p.direction * (_time_at(p, index) - t1) <= 0)

        def body(index, buffers):
            values = dense_output(p.tableau, s.y, y1, stages, dt, theta_at(_time_at(p, index)))
            return index + 1, tuple(b.write(index, v) for b, v in zip(buffers, values))

        return tf.while_loop(cond, body, (s.index, s.buffers), maximum_iterations=p.num_times)
    # Elsewhere every covered time at once: K thetas, one interpolant evaluation, one scatter.
    # The times are sorted along `direction`, so the covered ones are a prefix of those left.
    count = tf.reduce_sum(tf.cast(p.direction * (p.t[s.index :] - t1) <= 0, tf.int32))
    count = tf.where(accept, count, 0)
    indices = s.index + tf.range(count)
    values = dense_output(p.tableau, s.y, y1, stages, dt, theta_at(tf.gather(p.t, indices)))
    return s.index + count, tuple(b.scatter(indices, v) for b, v in zip(s.buffers, values))


def _loop_body(p, max_num_steps, s):
    t1, step = _landing(p, s)
    y1, f1, error, stages = runge_kutta_step(p.fn, p.tableau, s.t, t1, list(s.y), list(s.f))
    ratio = None
    if p.controller.uses_error_estimate:
        # Step sizes are not differentiated: gradients hold the step sequence fixed.
        ratio = tf.stop_gradient(scaled_error_ratio(error, list(s.y), y1, p.rtol, p.atol, p.error_mask))
    finite = _all_finite(y1)
    accept, next_step, memory, failure = p.controller.adapt(s.t, step, ratio, s.memory, finite, p.direction,
                                                            p.tableau.error_order)  # fmt: skip
    index, buffers = _write_outputs(p, s, t1, y1, stages, accept)
    num_steps = s.num_steps + 1
    # The body runs only while s.status is RUNNING, so the new status is the step's failure
    # (RUNNING = -1 when none), else MAX_STEPS_REACHED (1, below every step failure's code)
    # once the budget is spent; reaching the last time overrides both.
    status = tf.where(num_steps >= max_num_steps, tf.maximum(failure, int(Status.MAX_STEPS_REACHED)), failure)
    status = tf.where(index >= p.num_times, int(Status.SUCCESS), status)
    return _LoopState(
        t=tf.where(accept, t1, s.t),
        step=tf.stop_gradient(next_step),
        y=tuple(select_rows(accept, a, b) for a, b in zip(y1, s.y)),
        f=tuple(select_rows(accept, a, b) for a, b in zip(f1, s.f)),
        memory=memory,
        index=index,
        num_steps=num_steps,
        num_accepted=s.num_accepted + tf.cast(accept, tf.int32),
        num_rejected=s.num_rejected + tf.cast(tf.logical_not(accept), tf.int32),
        num_fn_evals=s.num_fn_evals + p.tableau.fn_evals_per_step,
        status=status,
        buffers=buffers,
    )


def end_time_outputs(y0, y_end, reached, num_times):
    """Outputs without dense output (``num_times <= 2``, static): ``[y0, y_end]`` stacked per leaf, ``y_end``
    NaN where not ``reached`` (a scalar, or ``[B]`` per sample; internal)."""
    nan = [tf.fill(tf.shape(y), tf.constant(float("nan"), y.dtype)) for y in y_end]
    last = [select_rows(reached, y, missing) for y, missing in zip(y_end, nan)]
    return [tf.stack([a, b][:num_times]) for a, b in zip(y0, last)]


def collect_outputs(p, y0, final):
    """``[T, *leaf.shape]`` outputs; times the solve did not reach hold NaN."""
    if not p.dense:
        return end_time_outputs(y0, final.y, final.index >= p.num_times, p.num_times)

    def body(index, buffers):
        nan = [tf.fill(tf.shape(leaf), tf.constant(float("nan"), leaf.dtype)) for leaf in y0]
        return index + 1, tuple(b.write(index, v) for b, v in zip(buffers, nan))

    _, buffers = tf.while_loop(lambda index, _: index < p.num_times, body, (final.index, final.buffers),
                               maximum_iterations=p.num_times)  # fmt: skip
    return [b.stack() for b in buffers]


def make_problem(fn, t, tableau, rtol, atol, controller, error_mask=None):
    """The loop's ``_Problem`` for the times ``t`` (arguments as for ``integrate``; internal)."""
    static_times = t.shape[0]  # None: a dynamic number of output times (graph mode)
    num_times = static_times if static_times is not None else tf.shape(t)[0]
    direction = tf.sign(t[-1] - t[0])
    direction = tf.where(tf.equal(direction, 0), tf.ones_like(direction), direction)
    # Every step sequence lands exactly on the last time, so only interior output
    # times need dense output: with T <= 2 the loop carries no buffer.
    dense = static_times is None or static_times > 2
    return _Problem(fn=fn, t=t, num_times=num_times, t_end=t[-1], direction=direction, tableau=tableau,
                    rtol=rtol, atol=atol, controller=controller, error_mask=error_mask, dense=dense)  # fmt: skip


def run_steps(p, state, max_num_steps, max_iterations, stop=None):
    """Iterate ``_loop_body`` from ``state`` while the solve runs (internal).

    Args:
        p: the ``_Problem``; state: a ``_LoopState``.
        max_num_steps: Python int, the solve's budget of attempted steps (ends it with
            ``MAX_STEPS_REACHED``).
        max_iterations: Python int, the while loop's ``maximum_iterations`` (under XLA
            its gradient buffers have that many entries).
        stop: optional int32 scalar: also stop once ``num_steps`` reaches it.

    Returns:
        The final ``_LoopState``.
    """

    def cond(s):
        running = tf.equal(s.status, int(Status.RUNNING))
        return running if stop is None else running & (s.num_steps < stop)

    (final,) = tf.while_loop(cond, lambda s: (_loop_body(p, max_num_steps, s),), (state,),
                             maximum_iterations=max_iterations)  # fmt: skip
    return final


def integrate(fn, y0, t, tableau, rtol, atol, controller, max_num_steps, *, inputs_valid=None, error_mask=None):
    """Integrate ``dy/dt = fn(t, y)`` and return the states at the times ``t``.

    Args:
        fn: ``fn(t, leaves) -> leaves``; ``t`` a scalar in ``t``'s dtype.
        y0: list of state leaves (all one floating dtype).
        t: ``[T]`` monotone times (float32 or float64); repeats are zero-length steps.
        tableau: a ``ButcherTableau``.
        rtol, atol: lists (one per leaf) of tolerance tensors in norm dtype,
            broadcastable to the leaf.
        controller: a ``StepSizeController`` (checked against ``tableau`` by the caller).
        max_num_steps: Python int, budget of attempted steps.
        inputs_valid: optional scalar bool tensor from in-graph validation;
            ``False`` ends the solve with ``Status.INVALID_INPUT``.
        error_mask: optional list of bools, which leaves count in error control.

    Returns:
        ``(ys, stats)``: ``ys`` a list of ``[T, *leaf.shape]`` tensors and
        ``stats`` a ``SolverStats``.
    """
    with tf.name_scope("integrate"):
        p = make_problem(fn, t, tableau, rtol, atol, controller, error_mask)
        state = initial_state(p, y0, inputs_valid)
        final = run_steps(p, state, max_num_steps, max_num_steps)
        ys = collect_outputs(p, y0, final)
        stats = stats_from_loop(final)
        return ys, stats
