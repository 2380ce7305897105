"""Backpropagation through the integration loop under XLA, by checkpoints and recomputation (internal).

The direct gradient (``adjoint=False``) differentiates the loop's ``tf.while_loop``.
Under XLA, TensorFlow's gradient of a while loop stacks every loop intermediate
in buffers of ``maximum_iterations`` entries, allocated and zero-filled before the
loop runs: the solve paid for its whole step budget (``max_num_steps``, 10 000 by
default), not for the steps it took.

``checkpointed_integrate`` runs the same loop body in spans and computes the
gradient itself, in a ``tf.custom_gradient`` around the solve (the structure of
diffrax's ``RecursiveCheckpointAdjoint``, with two fixed levels):

* forward: the loop state (without the output buffers) is stored at the start of
  every span of ``S = C * M`` steps, ``C = min(16, budget)`` and
  ``M = ceil(sqrt(budget / C))``; nothing is recorded for TensorFlow's gradient;
* backward, span by span in reverse: re-run the span from its checkpoint, storing
  the state every ``C`` steps; then, group by group in reverse, re-run the ``C``
  steps under a tape (a while loop of at most ``C`` iterations: the only loop
  TensorFlow differentiates, so its buffers have ``C`` entries) and pull the
  cotangent of the group's end state back to its start state, adding up the
  gradients of the times, the captured tensors and the variables.

The state carried from step to step is ``(t, y, f)`` plus non-differentiable
bookkeeping (the step size and controller memory are ``stop_gradient``-ed by the
loop, counters are integers). Dense outputs written during a group are
recomputed into zero buffers and receive their cotangent there, so output
buffers never cross a checkpoint. The recomputed steps run the same ops on the
same inputs, so the gradient equals backpropagation through the plain loop up
to float round-off, including the rejected steps' guarded vector-Jacobian
products (``guard_nonfinite_gradients``).

Cost: memory ``O((ceil(budget / S) + M) * state + C * step intermediates)``,
i.e. ``O(sqrt(budget))`` states; time: the forward, at most one more forward for
the checkpoints of the spans, and one forward + backward through the steps taken.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import tensorflow as tf

from tfode import integrate as joint_loop
from tfode import per_sample as per_sample_loop
from tfode._captures import dense_gradient
from tfode.runge_kutta import along_batch
from tfode.solution import Status, stats_from_loop

__all__ = ["BASE_STEPS", "JOINT", "PER_SAMPLE", "Loop", "checkpointed_integrate", "spans"]

# Steps re-run under a tape at a time. Under XLA each costs its intermediates in
# the gradient buffers (~0.5 MB per dopri5 step for a [256, 64]-hidden MLP field):
# small enough that a short solve pays little for the slots it does not use,
# large enough that the checkpoints (M ~ sqrt(budget / C) states per level) stay few.
BASE_STEPS = 16


def spans(max_num_steps, base_steps=BASE_STEPS):
    """``(C, S, K)``: steps per taped group, steps per span and span checkpoints for a budget."""
    base = max(1, min(int(base_steps), int(max_num_steps)))
    fan = max(1, math.ceil(math.sqrt(max_num_steps / base)))
    span = base * fan
    return base, span, max(1, math.ceil(max_num_steps / span))


def _carry(state):
    """The state without its output buffers (what a checkpoint holds)."""
    return state._replace(buffers=())


def _differentiable(carry):
    return [carry.t, *carry.y, *carry.f]


def _joint_zero_buffers(p, like):
    if not p.dense:
        return ()
    return tuple(
        tf.TensorArray(leaf.dtype, size=p.num_times, element_shape=leaf.shape).unstack(
            tf.zeros(tf.concat([[p.num_times], tf.shape(leaf)], 0), leaf.dtype)
        )
        for leaf in like
    )


class Loop(NamedTuple):
    """The pieces of an integration loop that checkpointing re-runs.

    Attributes:
        make_problem: ``(fn, t, tableau, rtol, atol, controller, error_mask) -> problem``.
        initial_state: ``(problem, y0, inputs_valid) -> state``.
        run_steps: ``(problem, state, max_num_steps, max_iterations, stop) -> state``.
        collect_outputs: ``(problem, y0, final) -> ys``.
        zero_buffers: ``(problem, like) -> buffers`` of zeros.
        buffer_values: ``state -> list`` of the output buffers as tensors.
        max_iterations: ``max_num_steps -> int``, the loop's iteration bound.
        iterations: ``state -> int32`` loop iterations so far.
        running: ``state -> bool`` scalar, whether the solve goes on.
    """

    make_problem: Any
    initial_state: Any
    run_steps: Any
    collect_outputs: Any
    zero_buffers: Any
    buffer_values: Any
    max_iterations: Any
    iterations: Any
    running: Any


JOINT = Loop(joint_loop.make_problem, joint_loop.initial_state, joint_loop.run_steps, joint_loop.collect_outputs,
             _joint_zero_buffers, lambda s: [b.stack() for b in s.buffers], lambda n: n,
             lambda s: s.num_steps, lambda s: tf.equal(s.status, int(Status.RUNNING)))  # fmt: skip
PER_SAMPLE = Loop(per_sample_loop.make_problem, per_sample_loop.initial_state, per_sample_loop.run_steps,
                  per_sample_loop.collect_outputs, per_sample_loop.zero_buffers, lambda s: list(s.buffers),
                  per_sample_loop.max_iterations, lambda s: s.iteration,
                  lambda s: tf.reduce_any(tf.equal(s.status, int(Status.RUNNING))))  # fmt: skip


def _store(loop, p, max_num_steps, state, stride, slots, num_spans=None):
    """Run from ``state`` in spans of ``stride`` steps, storing the state at each span's start.

    Args:
        num_spans: int32 scalar: store this many checkpoints and run the steps between
            them only (not the last span). ``None``: run until the solve ends.

    Returns:
        ``(final state, checkpoints, count)``: ``checkpoints`` a list of ``[slots, ...]``
        tensors (``tf.nest.flatten`` of a carry), ``count`` the number stored.
    """
    flat = tf.nest.flatten(_carry(state))
    arrays = [tf.TensorArray(x.dtype, size=slots, element_shape=x.shape) for x in flat]

    def cond(k, s, arrays):
        if num_spans is None:
            return loop.running(s)
        return k < num_spans

    def body(k, s, arrays):
        arrays = [a.write(k, x) for a, x in zip(arrays, tf.nest.flatten(_carry(s)))]
        run = stride if num_spans is None else tf.where(k < num_spans - 1, stride, 0)
        s = loop.run_steps(p, s, max_num_steps, stride, stop=loop.iterations(s) + run)
        return k + 1, s, arrays

    count, final, arrays = tf.while_loop(cond, body, (tf.constant(0, tf.int32), state, arrays),
                                         maximum_iterations=slots)  # fmt: skip
    return final, [a.stack() for a in arrays], count


def checkpointed_integrate(fn, y0, t, captures, tableau, rtol, atol, controller, max_num_steps, *,
                           inputs_valid=None, error_mask=None, base_steps=None, loop=JOINT):  # fmt: skip
    """``integrate`` whose gradient re-runs the loop from checkpoints (for XLA; see the module docstring).

    Args:
        fn: ``fn(t, leaves) -> leaves``, the guarded vector field.
        y0, t, tableau, rtol, atol, controller, max_num_steps, inputs_valid, error_mask:
            as for ``integrate``.
        captures: floating tensors ``fn`` reads from its enclosing scope (``args`` and
            ``captured_tensors``): they receive gradients like ``y0`` and ``t``.
        base_steps: Python int, steps re-run under a tape at a time (``C``; default ``BASE_STEPS``,
            read when the solve is traced).
        loop: ``JOINT`` (``tfode.integrate``) or ``PER_SAMPLE`` (``tfode.per_sample``; ``t`` ``[B, N]``).

    Returns:
        ``(ys, stats)`` as ``integrate`` returns them; ``ys`` carries the custom gradient.
    """
    num_leaves = len(y0)
    known = [*y0, t]
    captures = [c for c in captures if all(c is not k for k in known)]
    base_steps = BASE_STEPS if base_steps is None else base_steps
    base, span, top_slots = spans(loop.max_iterations(max_num_steps), base_steps)
    fan = span // base
    results = []

    def problem(t_grid):
        return loop.make_problem(fn, t_grid, tableau, rtol, atol, controller, error_mask)

    @tf.custom_gradient
    def solve_forward(*inputs):
        y0_in, t_in = list(inputs[:num_leaves]), inputs[num_leaves]
        p = problem(t_in)
        state = loop.initial_state(p, y0_in, inputs_valid)
        final, checkpoints, count = _store(loop, p, max_num_steps, state, span, top_slots)
        ys = loop.collect_outputs(p, y0_in, final)
        results.append(stats_from_loop(final))
        template = _carry(final)

        def grad(*cotangents, variables=None):
            variables = list(variables or [])
            cotangents = [dense_gradient(c, y) for c, y in zip(cotangents, ys)]
            params = [t_in, *captures, *variables]

            def base_vjp(carry, num, g, acc):
                # Re-run `num` (<= C) steps from `carry` under a tape; pull `g` back to `carry`.
                sources = _differentiable(carry)
                with tf.GradientTape() as tape:
                    tape.watch(sources + params)
                    q = problem(t_in)
                    s = carry._replace(buffers=loop.zero_buffers(q, carry.y))
                    end = loop.run_steps(q, s, max_num_steps, base, stop=loop.iterations(carry) + num)
                    outs = _differentiable(end) + loop.buffer_values(end)
                out_grads = list(g) + (cotangents if q.dense else [])
                grads = tape.gradient(outs, sources + params, output_gradients=out_grads,
                                      unconnected_gradients=tf.UnconnectedGradients.ZERO)  # fmt: skip
                grads = [tf.convert_to_tensor(x) for x in grads]
                return grads[: len(sources)], [a + x for a, x in zip(acc, grads[len(sources) :])]

            def span_vjp(carry, num, g, acc):
                # Store a checkpoint every C steps of the span, then pull back group by group.
                q = problem(t_in)
                s = carry._replace(buffers=loop.zero_buffers(q, carry.y))
                groups = (num + base - 1) // base
                _, points, _ = _store(loop, q, max_num_steps, s, base, fan, num_spans=groups)
                return _reverse(base_vjp, points, groups, base, num, g, acc, fan)

            def _reverse(vjp, points, count, stride, total, g, acc, slots):
                def body(j, g, acc):
                    carry = tf.nest.pack_sequence_as(template, [tf.gather(x, j) for x in points])
                    g, acc = vjp(carry, tf.minimum(stride, total - j * stride), g, acc)
                    return j - 1, g, acc

                _, g, acc = tf.while_loop(lambda j, *_: j >= 0, body, (count - 1, g, acc),
                                          maximum_iterations=slots)  # fmt: skip
                return g, acc

            # The outputs read the final state only for T = 2 without dense output: ys[1] = y(t_end)
            # where the solve reached it (NaN elsewhere). ys[0] is y0 itself.
            reached = final.index >= p.num_times
            g_y = [tf.zeros_like(y) for y in final.y]
            if not p.dense and p.num_times == 2:
                g_y = [tf.where(along_batch(reached, c[1]), c[1], tf.zeros_like(c[1])) for c in cotangents]
            g = [tf.zeros_like(final.t), *g_y, *[tf.zeros_like(f) for f in final.f]]
            acc = [tf.zeros_like(x) for x in params]
            g, acc = _reverse(span_vjp, checkpoints, count, span, loop.iterations(final), g, acc, top_slots)

            # The initial state's differentiable part: its time, state and f (``f(t[0], y0)``;
            # the first step size is stop_gradient-ed), recomputed under a tape.
            with tf.GradientTape() as tape:
                tape.watch(y0_in + params)
                outs = _differentiable(_carry(loop.initial_state(problem(t_in), y0_in, inputs_valid)))
            grads = tape.gradient(outs, y0_in + params, output_gradients=g,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)  # fmt: skip
            grads = [tf.convert_to_tensor(x) for x in grads]
            grads_y0 = [gy + c[0] for gy, c in zip(grads[:num_leaves], cotangents)]
            grads_params = [a + x for a, x in zip(acc, grads[num_leaves:])]
            num_inputs = 1 + len(captures)
            return grads_y0 + grads_params[:num_inputs], grads_params[num_inputs:]

        return ys, grad

    ys = solve_forward(*y0, t, *captures)
    return list(ys), results[0]
