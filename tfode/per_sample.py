"""Per-sample solving: every sample of a batch gets its own steps, output times and status.

With ``SolverConfig(batch_axis=0)`` the leading axis of every state leaf is a
batch of independent problems. Each sample has its own current time, step size,
controller memory, accept/reject decision, status and counters; its error norm
is the RMS over its own elements only. So a sample's result does not depend on
the other samples in the batch (it equals its solve alone), a hard sample is
resolved to its tolerance instead of hiding in the batch RMS, and a failing
sample fails alone (NaN outputs, its own status) while the others finish.

The loop evaluates ``f`` on the whole batch each iteration and runs until every
sample is done; finished and failed samples are frozen (see below). Gradients
(backpropagation through the loop) stay exact for every sample: an iteration in
which some sample's trial stages are not finite (a step leaving ``f``'s domain)
is discarded for every sample, and the samples whose stages were finite redo the
identical step in the next iteration without counting it; so the
whole-evaluation gradient guard (``tfode._captures``), which zeroes an evaluation's
gradient when any of its outputs is not finite, never drops a contribution that
an accepted step used. Finished and failed samples stay frozen at their last
accepted state (a zero step there re-evaluates a finite ``f``). One limit
remains: a sample whose ``f`` is not finite at its start is frozen at the zero
state, and if ``f`` is not finite there either (e.g. the NaN comes from that
sample's own parameters, not its state), every later evaluation is non-finite
and the guard drops its gradient for all samples; keep such a sample out of the
batch, or make ``f`` finite at the zero state.

Output times may be shared ``[N]`` or per sample ``[B, N]`` (each row monotone;
pad shorter series by repeating their last time), written by a fixed-shape
masked dense output: no host synchronisation and no data-dependent shapes, so
the same code runs eagerly, in graphs and under XLA.

The vector field receives ``t`` of shape ``[B]``, one time per sample.

A ``quadrature`` accumulates a batch-summed integral along the solve (the
per-sample adjoint's parameter gradient, ``tfode._adjoint_per_sample``): after
every iteration it gets each sample's step and accept flag and returns
increments that do not carry a batch axis, so its memory does not grow with B.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import tensorflow as tf

from tfode._tf_compat import in_xla_context
from tfode.integrate import end_time_outputs
from tfode.interpolation import dense_output
from tfode.norms import scaled_error_ratio
from tfode.runge_kutta import runge_kutta_step, select_rows
from tfode.solution import Status, stats_from_loop

__all__ = [
    "collect_outputs",
    "initial_state",
    "integrate_per_sample",
    "make_problem",
    "max_iterations",
    "run_steps",
    "zero_buffers",
]


class _State(NamedTuple):
    t: Any  # [B]
    step: Any  # [B]
    y: tuple
    f: tuple
    memory: Any  # [B]
    index: Any  # [B] int32: the next output time to write
    num_steps: Any
    num_accepted: Any
    num_rejected: Any
    num_fn_evals: Any
    status: Any  # [B] int32
    buffers: tuple  # each [N, B, ...]
    integral: tuple  # the quadrature's running sums (empty without one)
    iteration: Any  # int32 scalar: loop iterations so far


class _Problem(NamedTuple):
    fn: Any
    t: Any  # [B, N]
    num_times: Any
    t_end: Any  # [B]
    direction: Any  # [B]
    tableau: Any
    rtol: list
    atol: list
    controller: Any
    error_mask: Any
    quadrature: Any
    dense: bool  # output buffers written by dense output; False for N <= 2 (the last time is the final state)


def _rows_finite(leaves):
    """``[B]``: whether every element of each sample is finite (leaves ``[B, ...]`` of static rank)."""
    checks = [tf.reduce_all(tf.math.is_finite(x), axis=list(range(1, x.shape.rank))) for x in leaves]
    return checks[0] if len(checks) == 1 else tf.reduce_all(tf.stack(checks), axis=0)


def _next_output_time(p, index):
    return tf.gather(p.t, tf.minimum(index, p.num_times - 1), axis=1, batch_dims=1)


def initial_state(p, y0, inputs_valid):
    """Evaluate ``f`` at the start, pick every sample's first step, set up buffers and counters (internal)."""
    t0 = p.t[:, 0]
    batch = tf.shape(t0)[0]
    given = y0
    y0_finite = _rows_finite(y0)
    y0 = [select_rows(y0_finite, y, tf.zeros_like(y)) for y in y0]  # a NaN start fails its sample alone
    # f0 twice: a sample whose derivative is not finite fails alone, and the others' f0 comes
    # from an evaluation with that row zeroed, whose gradient no NaN row can poison
    # (a tf.cond would do it only when needed, but a cond's gradient inside a loop cannot
    # capture the field's variables).
    f0_finite = _rows_finite(tf.nest.map_structure(tf.stop_gradient, list(p.fn(t0, y0))))
    # A sample that fails here is frozen at the zero state with f there (see the module docstring).
    safe = [select_rows(f0_finite, y, tf.zeros_like(y)) for y in y0]
    f0 = list(p.fn(t0, safe))
    step0, memory, extra = p.controller.initial(p.fn, t0, safe, f0, p.t, p.direction, p.tableau, p.rtol, p.atol,
                                                p.error_mask, per_sample=True)  # fmt: skip
    extra += 1  # the second evaluation of f0
    step0 = tf.broadcast_to(tf.stop_gradient(step0), [batch])
    memory = tf.broadcast_to(memory, [batch])
    status = tf.fill([batch], int(Status.RUNNING))
    status = tf.where(y0_finite & f0_finite, status, int(Status.NON_FINITE))
    if inputs_valid is not None:
        status = tf.where(inputs_valid, status, int(Status.INVALID_INPUT))
    status = tf.where(tf.equal(p.num_times, 1) & tf.equal(status, int(Status.RUNNING)), int(Status.SUCCESS), status)
    buffers = []
    for leaf in given if p.dense else ():
        # Row 0 holds y0, the rest NaN until written (a concat: a scatter fails on an empty batch).
        nan = tf.fill(tf.concat([[p.num_times - 1], tf.shape(leaf)], axis=0), tf.constant(float("nan"), leaf.dtype))
        buffers.append(tf.concat([leaf[None], nan], axis=0))
    zeros = tf.zeros([batch], tf.int32)
    return _State(t=t0, step=step0, y=tuple(safe), f=tuple(f0), memory=memory, index=zeros + 1, num_steps=zeros,
                  num_accepted=zeros, num_rejected=zeros, num_fn_evals=zeros + 1 + extra, status=status,
                  buffers=tuple(buffers), integral=tuple(p.quadrature.initial) if p.quadrature else (),
                  iteration=tf.constant(0, tf.int32))  # fmt: skip


def _write_outputs(p, s, t1, y_start, y1, stages, accept):
    """Dense output for every sample's requested times in ``(t, t1]``; returns ``(index, buffers)``.

    Without dense output (``N <= 2``) a sample's last time is reached when an accepted
    step lands on it. Under XLA (static shapes), and for large states, one inner iteration
    writes at most one output time per sample (a masked scatter into ``[N, B, ...]``) while
    any sample has a covered time left; otherwise every covered time at once
    (``_write_covered``).
    """
    if not p.dense:
        return s.index + tf.cast(accept & tf.equal(t1, p.t_end), tf.int32), s.buffers
    if not in_xla_context() and _elements_per_sample(y1) <= _COVERED_AT_ONCE_MAX_ELEMENTS:
        return _write_covered(p, s, t1, y_start, y1, stages, accept)
    span = t1 - s.t
    batch = tf.shape(span)[0]
    rows = tf.range(batch)

    def covered(index):
        return accept & (index < p.num_times) & (p.direction * (_next_output_time(p, index) - t1) <= 0)

    def body(index, buffers):
        write = covered(index)
        theta = _theta(s.t, span, _next_output_time(p, index))
        values = dense_output(p.tableau, y_start, y1, stages, tf.cast(span, y1[0].dtype),
                              tf.cast(theta, y1[0].dtype), per_sample=True)  # fmt: skip
        positions = tf.stack([tf.minimum(index, p.num_times - 1), rows], axis=1)
        updated = []
        for buffer, value in zip(buffers, values):
            old = tf.gather_nd(buffer, positions)
            updated.append(tf.tensor_scatter_nd_update(buffer, positions, select_rows(write, value, old)))
        return index + tf.cast(write, tf.int32), tuple(updated)

    return tf.while_loop(lambda index, _: tf.reduce_any(covered(index)), body, (s.index, s.buffers),
                         maximum_iterations=p.num_times)  # fmt: skip


# The one-scatter writer tiles the step's stages K times (K: the most output times one sample's
# step covers), transient memory ~ K * B * stages * elements; it pays off where per-op dispatch
# dominates, i.e. small states. Larger states keep the inner loop (memory ~ B * elements).
_COVERED_AT_ONCE_MAX_ELEMENTS = 1024


def _elements_per_sample(leaves):
    """Static number of state elements per sample (every leaf's non-batch axes); ``inf`` if unknown."""
    total = 0
    for leaf in leaves:
        dims = leaf.shape[1:]
        if not dims.is_fully_defined():
            return float("inf")
        total += dims.num_elements()
    return total


def _theta(t0, span, times):
    """``(times - t0) / span``; a zero-length step (repeated output times) sits at theta = 1. The division
    is guarded: frozen samples take zero-length steps every iteration, and a NaN in the unselected
    branch would reach the gradient."""
    zero = tf.equal(span, 0)
    return tf.where(zero, tf.ones_like(times), (times - t0) / tf.where(zero, tf.ones_like(span), span))


def _write_covered(p, s, t1, y_start, y1, stages, accept):
    """Every sample's covered output times in one interpolant evaluation and one scatter (dynamic shapes).

    Sample ``b`` covers ``count[b]`` times from ``index[b]`` on (its times are sorted along
    its direction). With ``K = max(count)``, the interpolant is evaluated at ``[K, B]``
    points (the step's data tiled ``K`` times along the batch) and the covered ones are
    scattered into ``[N, B, ...]``. Used outside XLA for states of at most
    ``_COVERED_AT_ONCE_MAX_ELEMENTS`` elements per sample.
    """
    batch = tf.shape(t1)[0]
    later = tf.range(p.num_times)[None, :] >= s.index[:, None]  # [B, N]
    reached = p.direction[:, None] * (p.t - t1[:, None]) <= 0
    count = tf.where(accept, tf.reduce_sum(tf.cast(later & reached, tf.int32), axis=1), 0)  # [B]
    k = tf.range(tf.maximum(tf.reduce_max(count), 0))  # [K]; an empty batch has K = 0
    positions = s.index[None, :] + k[:, None]  # [K, B]
    write = k[:, None] < count[None, :]
    clipped = tf.transpose(tf.minimum(positions, p.num_times - 1))  # [B, K]
    times = tf.transpose(tf.gather(p.t, clipped, axis=1, batch_dims=1))  # [K, B]
    span = t1 - s.t
    theta = _theta(s.t[None, :], span[None, :], times)
    copies = tf.shape(k)[0]

    def tiled(x):  # [B, ...] -> [K * B, ...], copy j at rows j*B .. (j+1)*B-1
        return tf.tile(x, tf.concat([[copies], tf.ones([x.shape.rank - 1], tf.int32)], axis=0))

    dtype = y1[0].dtype
    values = dense_output(p.tableau, [tiled(y) for y in y_start], [tiled(y) for y in y1],
                          [[tiled(x) for x in stage] for stage in stages], tf.cast(tiled(span), dtype),
                          tf.cast(tf.reshape(theta, [-1]), dtype), per_sample=True)  # fmt: skip
    rows = tf.broadcast_to(tf.range(batch)[None, :], tf.shape(positions))
    targets = tf.boolean_mask(tf.stack([positions, rows], axis=-1), write)  # [W, 2]
    flat_write = tf.reshape(write, [-1])
    buffers = tuple(
        tf.tensor_scatter_nd_update(buffer, targets, tf.boolean_mask(value, flat_write))
        for buffer, value in zip(s.buffers, values)
    )
    return s.index + count, buffers


def _loop_body(p, max_num_steps, s):
    active = tf.equal(s.status, int(Status.RUNNING))
    step, target = p.controller.propose(s.t, s.step, _next_output_time(p, s.index), p.t_end)
    remaining = tf.abs(target - s.t)
    lands = step * tf.constant(1.0 + p.controller.landing_slack, step.dtype) >= remaining
    step = tf.where(lands, remaining, step)
    t1 = tf.where(lands, target, s.t + p.direction * step)
    t1 = tf.where(active, t1, s.t)  # frozen samples take a zero step
    # Frozen (finished or failed) samples take a zero step from their last accepted state, where f is
    # finite (it was evaluated there), so their rows cannot make an evaluation non-finite and trip the
    # gradient guard for everyone. Rows without a finite f (failed at the start) enter as zeros.
    usable = active | _rows_finite(s.f)
    y_start = [select_rows(usable, y, tf.zeros_like(y)) for y in s.y]
    f_start = [select_rows(usable, f, tf.zeros_like(f)) for f in s.f]
    y1, f1, error, stages = runge_kutta_step(p.fn, p.tableau, s.t, t1, y_start, f_start)
    ratio = None
    if p.controller.uses_error_estimate:
        ratio = tf.stop_gradient(scaled_error_ratio(error, y_start, y1, p.rtol, p.atol, p.error_mask, True))
    accept, next_step, memory, failure = p.controller.adapt(s.t, step, ratio, s.memory, _rows_finite(y1),
                                                            p.direction, p.tableau.error_order)  # fmt: skip
    # A sample whose trial stages are not finite discards this iteration for everyone: the others
    # redo the identical step next time, uncounted (see the module docstring).
    stages_finite = _rows_finite([leaf for stage in stages for leaf in stage])
    redo = active & stages_finite & tf.reduce_any(active & ~stages_finite)
    active = active & ~redo
    accept = accept & active
    index, buffers = _write_outputs(p, s, t1, y_start, y1, stages, accept)
    integral = s.integral
    if p.quadrature is not None:
        increments = p.quadrature.increments(s.t, t1, y_start, stages, accept)
        integral = tuple(total + increment for total, increment in zip(s.integral, increments))
    counted = tf.cast(active, tf.int32)
    num_steps = s.num_steps + counted
    status = tf.where(active & tf.not_equal(failure, int(Status.RUNNING)), failure, s.status)
    out_of_budget = tf.equal(status, int(Status.RUNNING)) & (num_steps >= max_num_steps)
    status = tf.where(out_of_budget, int(Status.MAX_STEPS_REACHED), status)
    status = tf.where(active & (index >= p.num_times), int(Status.SUCCESS), status)
    return _State(
        t=tf.where(accept, t1, s.t),
        step=tf.stop_gradient(tf.where(active, next_step, s.step)),  # a redo keeps its step
        y=tuple(select_rows(accept, a, b) for a, b in zip(y1, s.y)),
        f=tuple(select_rows(accept, a, b) for a, b in zip(f1, s.f)),
        memory=tf.where(active, memory, s.memory),
        index=index,
        num_steps=num_steps,
        num_accepted=s.num_accepted + tf.cast(accept, tf.int32),
        num_rejected=s.num_rejected + tf.cast(active & ~accept, tf.int32),
        num_fn_evals=s.num_fn_evals + counted * p.tableau.fn_evals_per_step,
        status=status,
        buffers=buffers,
        integral=integral,
        iteration=s.iteration + 1,
    )


def integrate_per_sample(fn, y0, t, tableau, rtol, atol, controller, max_num_steps, *, inputs_valid=None,
                         error_mask=None, quadrature=None):  # fmt: skip
    """Integrate every sample of a batch on its own.

    Args:
        fn: ``fn(t, leaves) -> leaves`` with ``t`` ``[B]`` (one time per sample).
        y0: list of state leaves, each ``[B, ...]``.
        t: ``[B, N]`` output times, each row monotone (repeats allowed); ``t[:, 0]`` the start.
        tableau, rtol, atol, controller, max_num_steps, error_mask: as for ``integrate``;
            ``max_num_steps`` is each sample's budget.
        inputs_valid: optional ``[B]`` or scalar bool from in-graph validation.
        quadrature: optional object with ``initial`` (a list of tensors) and
            ``increments(t0, t1, y_start, stages, accept) -> list`` (same shapes as
            ``initial``), called once per iteration with each sample's step
            ``[t0, t1]`` (``[B]``), its start state and stages (frozen samples take a
            zero step) and ``accept`` ``[B]``; its running sums are returned.

    Returns:
        ``(ys, stats)``: ``ys`` a list of ``[N, B, ...]`` tensors (NaN where a sample
        did not reach a time) and ``stats`` a ``SolverStats`` of ``[B]`` tensors;
        with a ``quadrature``, ``(ys, stats, integral)``.
    """
    with tf.name_scope("integrate_per_sample"):
        p = make_problem(fn, t, tableau, rtol, atol, controller, error_mask, quadrature)
        state = initial_state(p, y0, inputs_valid)
        final = run_steps(p, state, max_num_steps, max_iterations(max_num_steps))
        stats = stats_from_loop(final)
        if quadrature is not None:
            return collect_outputs(p, y0, final), stats, list(final.integral)
        return collect_outputs(p, y0, final), stats


def max_iterations(max_num_steps):
    """The loop's iteration bound for a per-sample budget: each sample's budget is enforced by its
    own count, and redone iterations (see the module docstring) come on top."""
    return 2 * max_num_steps + 1


def make_problem(fn, t, tableau, rtol, atol, controller, error_mask=None, quadrature=None):
    """The loop's ``_Problem`` for per-sample times ``t`` ``[B, N]`` (internal)."""
    num_times = t.shape[1] if t.shape[1] is not None else tf.shape(t)[1]
    direction = tf.sign(t[:, -1] - t[:, 0])
    direction = tf.where(tf.equal(direction, 0), tf.ones_like(direction), direction)
    # Every sample's steps land exactly on its last time, so with N <= 2 no buffer is needed.
    dense = t.shape[1] is None or t.shape[1] > 2
    return _Problem(fn=fn, t=t, num_times=num_times, t_end=t[:, -1], direction=direction, tableau=tableau,
                    rtol=rtol, atol=atol, controller=controller, error_mask=error_mask,
                    quadrature=quadrature, dense=dense)  # fmt: skip


def run_steps(p, state, max_num_steps, max_iterations, stop=None):
    """Iterate the loop body from ``state`` while any sample runs (internal).

    Args:
        max_num_steps: Python int, each sample's budget of attempted steps.
        max_iterations: Python int, the while loop's ``maximum_iterations``.
        stop: optional int32 scalar: also stop once ``state.iteration`` reaches it.
    """

    def cond(s):
        running = tf.reduce_any(tf.equal(s.status, int(Status.RUNNING)))
        return running if stop is None else running & (s.iteration < stop)

    (final,) = tf.while_loop(cond, lambda s: (_loop_body(p, max_num_steps, s),), (state,),
                             maximum_iterations=max_iterations)  # fmt: skip
    return final


def collect_outputs(p, y0, final):
    """``[N, B, ...]`` outputs (NaN where a sample did not reach a time; internal)."""
    if p.dense:
        return list(final.buffers)
    return end_time_outputs(y0, final.y, final.index >= p.num_times, p.num_times)


def zero_buffers(p, like):
    """Output buffers of zeros ``[N, B, ...]`` for the leaves ``like`` (internal; none without dense output)."""
    if not p.dense:
        return ()
    return tuple(tf.zeros(tf.concat([[p.num_times], tf.shape(leaf)], axis=0), leaf.dtype) for leaf in like)
