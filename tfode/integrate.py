"""The integration loop: one ``tf.while_loop`` over attempted steps.

Each iteration takes one Runge–Kutta step, accepts or rejects it with
``tf.where`` (no Python branching on tensor values), writes every requested
output time that the accepted step covers by dense output into a preallocated
buffer (all of them in one batched evaluation and scatter; under XLA, whose
shapes must be static, one per inner-loop iteration), and proposes the next
step. The same code runs eagerly, inside
``tf.function`` and under ``jit_compile=True``. Failures end the loop with a
``Status`` code; unreached output times hold NaN.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import tensorflow as tf

from tfode._xla import in_xla_context
from tfode.controllers import select_initial_step
from tfode.interpolation import dense_output
from tfode.norms import scaled_error_ratio
from tfode.runge_kutta import runge_kutta_step
from tfode.solution import SolverStats, Status

__all__ = ["StepOptions", "integrate"]

# Stretch a step by up to this fraction rather than leave a sliver before the
# end (Hairer's dopri5.f uses 1.01 for the same purpose).
_ADAPTIVE_LANDING_SLACK = 0.01
# Fixed steps: absorb only float round-off accumulated over many steps.
_FIXED_LANDING_SLACK = 1e-3


class StepOptions(NamedTuple):
    """Step-size options, already validated and converted.

    Attributes:
        first_step: scalar tensor (time dtype) or None (Hairer's algorithm).
        min_step: scalar tensor (time dtype); 0 means "down to the resolution of t".
        max_step: scalar tensor (time dtype); +inf means unbounded.
        step_size: scalar tensor (time dtype) for fixed-step methods, or None
            to step on the grid of requested times.
        max_num_steps: Python int, budget of attempted steps.
    """

    first_step: Any
    min_step: Any
    max_step: Any
    step_size: Any
    max_num_steps: int


class _LoopState(NamedTuple):
    t: Any
    step: Any
    y: tuple
    f: tuple
    prev_ratio: Any
    index: Any
    num_steps: Any
    num_accepted: Any
    num_rejected: Any
    num_fn_evals: Any
    status: Any
    buffers: tuple


def _all_finite(leaves):
    checks = [tf.reduce_all(tf.math.is_finite(leaf)) for leaf in leaves]
    return tf.reduce_all(tf.stack(checks))


def integrate(fn, y0, t, tableau, rtol, atol, controller, options, *, inputs_valid=None, error_mask=None):
    """Integrate ``dy/dt = fn(t, y)`` and return the states at the times ``t``.

    Args:
        fn: ``fn(t, leaves) -> leaves``; ``t`` a scalar in ``t``'s dtype.
        y0: list of state leaves (all one floating dtype).
        t: ``[T]`` strictly monotone times (float32 or float64), ``T`` static.
        tableau: a ``ButcherTableau``.
        rtol, atol: lists (one per leaf) of tolerance tensors in norm dtype,
            broadcastable to the leaf.
        controller: a ``PIController`` (ignored for fixed-step tableaus).
        options: a ``StepOptions``.
        inputs_valid: optional scalar bool tensor from in-graph validation;
            ``False`` ends the solve with ``Status.INVALID_INPUT``.
        error_mask: optional list of bools, which leaves count in error control.

    Returns:
        ``(ys, stats)``: ``ys`` a list of ``[T, *leaf.shape]`` tensors and
        ``stats`` a ``SolverStats``.
    """
    with tf.name_scope("integrate"):
        static_times = t.shape[0]  # None: a dynamic number of output times (graph mode)
        num_times = static_times if static_times is not None else tf.shape(t)[0]
        t0, t_end = t[0], t[-1]
        direction = tf.sign(t_end - t0)
        direction = tf.where(tf.equal(direction, 0), tf.ones_like(direction), direction)
        grid_mode = not tableau.adaptive and options.step_size is None
        slack = _ADAPTIVE_LANDING_SLACK if tableau.adaptive else _FIXED_LANDING_SLACK

        f0 = list(fn(t0, y0))
        num_fn_evals = tf.constant(1, tf.int32)
        if tableau.adaptive and options.first_step is None:
            step0 = select_initial_step(fn, t0, y0, f0, direction, tableau.error_order, rtol, atol, error_mask)
            num_fn_evals += 1
        elif tableau.adaptive:
            step0 = options.first_step
        elif grid_mode:
            step0 = tf.abs(tf.gather(t, tf.minimum(1, num_times - 1)) - t0)
        else:
            step0 = options.step_size
        step0 = tf.clip_by_value(step0, options.min_step, options.max_step)

        status = tf.constant(int(Status.RUNNING), tf.int32)
        status = tf.where(_all_finite(y0) & _all_finite(f0), status, int(Status.NON_FINITE))
        if inputs_valid is not None:
            status = tf.where(inputs_valid, status, int(Status.INVALID_INPUT))
        if static_times is None or static_times == 1:
            single = tf.equal(num_times, 1) & tf.equal(status, int(Status.RUNNING))
            status = tf.where(single, int(Status.SUCCESS), status)

        # Only interior output times need dense output and a buffer: every step
        # sequence lands exactly on the last time, so with T <= 2 the loop
        # carries no buffer and no inner output loop.
        dense = static_times is None or static_times > 2
        buffers = ()
        if dense:
            buffers = tuple(
                tf.TensorArray(leaf.dtype, size=num_times, element_shape=leaf.shape).write(0, leaf) for leaf in y0
            )
        state = _LoopState(
            t=t0,
            step=step0,
            y=tuple(y0),
            f=tuple(f0),
            prev_ratio=tf.ones([], rtol[0].dtype),
            index=tf.constant(1, tf.int32),
            num_steps=tf.constant(0, tf.int32),
            num_accepted=tf.constant(0, tf.int32),
            num_rejected=tf.constant(0, tf.int32),
            num_fn_evals=num_fn_evals,
            status=status,
            buffers=buffers,
        )

        def time_at(index):
            return tf.gather(t, tf.minimum(index, num_times - 1))

        def write_outputs(s, t1, y1, stages, accept):
            """Dense output for every requested time in (s.t, t1]."""
            if not dense:
                return s.index + tf.cast(accept & tf.equal(t1, t_end), tf.int32), s.buffers
            dt = tf.cast(t1 - s.t, y1[0].dtype)

            def cond(index, _):
                covered = direction * (time_at(index) - t1) <= 0
                return accept & (index < num_times) & covered

            def body(index, buffers):
                # A zero-length step (repeated output times) sits at theta = 1.
                span = t1 - s.t
                theta = tf.where(tf.equal(span, 0), tf.ones_like(span), (time_at(index) - s.t) / span)
                theta = tf.cast(theta, y1[0].dtype)
                values = dense_output(tableau, s.y, y1, stages, dt, theta)
                return index + 1, tuple(b.write(index, v) for b, v in zip(buffers, values))

            if in_xla_context():  # static shapes: one output time per inner iteration
                return tf.while_loop(cond, body, (s.index, s.buffers), maximum_iterations=num_times)
            # Elsewhere every covered time at once: K thetas, one interpolant evaluation, one scatter.
            # The times are sorted along `direction`, so the covered ones are a prefix of those left.
            left = t[s.index :]
            count = tf.reduce_sum(tf.cast(direction * (left - t1) <= 0, tf.int32))
            count = tf.where(accept, count, 0)
            indices = s.index + tf.range(count)
            span = t1 - s.t
            theta = tf.where(tf.equal(span, 0), tf.ones_like(span), (tf.gather(t, indices) - s.t) / span)
            values = dense_output(tableau, s.y, y1, stages, dt, tf.cast(theta, y1[0].dtype))
            return s.index + count, tuple(b.scatter(indices, v) for b, v in zip(s.buffers, values))

        def loop_body(s):
            target = time_at(s.index) if grid_mode else t_end
            remaining = tf.abs(target - s.t)
            if grid_mode:
                step = remaining
            elif tableau.adaptive:
                step = tf.minimum(s.step, options.max_step)
            else:
                step = options.step_size
            lands = step * (1.0 + slack) >= remaining
            step = tf.where(lands, remaining, step)
            t1 = tf.where(lands, target, s.t + direction * step)

            y1, f1, error, stages = runge_kutta_step(fn, tableau, s.t, t1, list(s.y), list(s.f))
            num_fn_evals = s.num_fn_evals + tableau.fn_evals_per_step

            if tableau.adaptive:
                ratio = scaled_error_ratio(error, list(s.y), y1, rtol, atol, error_mask)
                accept = ratio <= 1.0
                next_step, prev_ratio = controller.adapt(step, ratio, s.prev_ratio, accept, tableau.error_order)
                next_step = tf.clip_by_value(next_step, options.min_step, options.max_step)
                stuck = tf.logical_not(accept) & (
                    (step <= options.min_step) | tf.equal(s.t + direction * next_step, s.t)
                )
                failure = tf.where(tf.math.is_finite(ratio), int(Status.STEP_SIZE_UNDERFLOW), int(Status.NON_FINITE))
                failure = tf.where(stuck, failure, int(Status.RUNNING))
            else:
                accept = _all_finite(y1)
                next_step, prev_ratio = s.step, s.prev_ratio
                failure = tf.where(accept, int(Status.RUNNING), int(Status.NON_FINITE))

            index, buffers = write_outputs(s, t1, y1, stages, accept)
            num_steps = s.num_steps + 1
            status = tf.where(tf.equal(failure, int(Status.RUNNING)), s.status, failure)
            status = tf.where(
                tf.equal(status, int(Status.RUNNING)) & (num_steps >= options.max_num_steps),
                int(Status.MAX_STEPS_REACHED),
                status,
            )
            status = tf.where(index >= num_times, int(Status.SUCCESS), status)
            return _LoopState(
                t=tf.where(accept, t1, s.t),
                step=next_step,
                y=tuple(tf.where(accept, a, b) for a, b in zip(y1, s.y)),
                f=tuple(tf.where(accept, a, b) for a, b in zip(f1, s.f)),
                prev_ratio=prev_ratio,
                index=index,
                num_steps=num_steps,
                num_accepted=s.num_accepted + tf.cast(accept, tf.int32),
                num_rejected=s.num_rejected + tf.cast(tf.logical_not(accept), tf.int32),
                num_fn_evals=num_fn_evals,
                status=status,
                buffers=buffers,
            )

        (final,) = tf.while_loop(
            lambda s: tf.equal(s.status, int(Status.RUNNING)),
            lambda s: (loop_body(s),),
            (state,),
            maximum_iterations=options.max_num_steps,
        )

        def fill_cond(index, _):
            return index < num_times

        def fill_body(index, buffers):
            nan = [tf.fill(tf.shape(leaf), tf.constant(float("nan"), leaf.dtype)) for leaf in y0]
            return index + 1, tuple(b.write(index, v) for b, v in zip(buffers, nan))

        if dense:
            _, buffers = tf.while_loop(fill_cond, fill_body, (final.index, final.buffers), maximum_iterations=num_times)
            ys = [b.stack() for b in buffers]
        else:
            reached = final.index >= num_times
            ys = [
                tf.stack([a, tf.where(reached, b, tf.constant(float("nan"), b.dtype))][:num_times])
                for a, b in zip(y0, final.y)
            ]
        stats = SolverStats(
            num_fn_evals=final.num_fn_evals,
            num_steps=final.num_steps,
            num_accepted=final.num_accepted,
            num_rejected=final.num_rejected,
            status=final.status,
            t_reached=final.t,
            step_size=final.step,
        )
        return ys, stats
