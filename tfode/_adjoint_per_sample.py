"""The adjoint method per sample: every sample's backward solve takes its own steps.

For a per-sample forward solve (``SolverConfig(batch_axis=0)``) with outputs
``y_b(t_{b,i})`` and cotangents ``g_{b,i}``, each sample's adjoint ``a_b`` solves,
backwards between that sample's own output times,

    dy_b/dt = f(t, y_b),   da_b/dt = -a_bᵀ ∂f/∂y_b,

with its own step sizes, error norm (over its ``y`` and ``a`` channels), status and
counters, ``a_b`` incremented by ``g_{b,i}`` at each output time (``tfode.per_sample``
runs the loop). The parameter gradient is the sum over samples

    ∂L/∂θ = Σ_b ∫_{t_{b,N-1}}^{t_{b,0}} -a_bᵀ ∂f/∂θ dt.

The parameters stay out of error control (the seminorm of Kidger, Chen & Lyons
2021), so the integrand need not be carried per sample: after each iteration the
Runge–Kutta quadrature of every sample's step (weights ``b_k h_b`` on its stages,
zero for rejected or frozen samples) is added to one running sum by one batched
vector–Jacobian product per stage with the per-sample weights folded into the
cotangent. Memory is O(P) for P parameters, not O(B·P). The price is one
re-evaluation of ``f`` per stage with a nonzero weight, on the stage inputs that
the step recorded (the stage states are rebuilt from its stage derivatives).

Gradients with respect to the times, per sample, as in ``tfode.adjoint``:
``∂L/∂t_{b,i} = g_{b,i} · f(t_{b,i}, y_{b,i})`` for ``i >= 1`` and
``∂L/∂t_{b,0} = -a_b(t_{b,0}⁺) · f(t_{b,0}, y_{b,0})``.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfode._captures import dense_gradient
from tfode.controllers import PIController
from tfode.per_sample import integrate_per_sample
from tfode.runge_kutta import along_batch, stage_inputs
from tfode.solution import SolverStats, Status, add_segment_stats

__all__ = ["backward_per_sample"]


def _row_dot(xs, ys):
    """``[B]``: ``sum_leaf sum(x * y)`` over each sample's elements."""
    return tf.add_n([tf.reduce_sum(tf.reshape(x * y, [tf.shape(x)[0], -1]), axis=1) for x, y in zip(xs, ys)])


class _ParameterQuadrature:
    """The batch-summed quadrature of ``-∫ a_bᵀ ∂f/∂θ dt`` along a per-sample backward solve.

    The hook of ``integrate_per_sample``: ``increments`` gets one iteration's steps
    ``[t0, t1]`` (``[B]`` each), the augmented start states ``(y, a)`` and stage
    derivatives, and ``accept`` ``[B]``; it returns one tensor per parameter.
    """

    def __init__(self, fn, params, tableau, num_leaves):
        self.fn = fn
        self.params = params
        self.tableau = tableau
        self.num_leaves = num_leaves
        self.initial = [tf.zeros(p.shape, p.dtype) for p in params]

    def increments(self, t0, t1, y_start, stages, accept):
        if not self.params:
            return []
        n = self.num_leaves
        outputs, cotangents = [], []
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(self.params)
            for i, weight in enumerate(self.tableau.b):
                if weight == 0.0:
                    continue
                t_i, state_i = stage_inputs(self.tableau, t0, t1, y_start, stages, i)
                # Rows of rejected or frozen samples enter f as zeros and get zero cotangents:
                # their (possibly non-finite) stages must not reach the sum, even times zero.
                y_i = [tf.where(along_batch(accept, y), y, tf.zeros_like(y)) for y in state_i[:n]]
                outputs += list(self.fn(t_i, y_i))
                for a in state_i[n:]:
                    scale = tf.cast(tf.constant(-weight, t0.dtype) * (t1 - t0), a.dtype)
                    weighted = along_batch(scale, a) * a
                    cotangents.append(tf.where(along_batch(accept, a), weighted, tf.zeros_like(a)))
        grads = tape.gradient(outputs, self.params, output_gradients=cotangents,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)  # fmt: skip
        return [dense_gradient(g, like) for g, like in zip(grads, self.initial)]


def backward_per_sample(make_fn, ys, cotangents, t, args, variables, config, initial_step, watched_args=None):
    """Gradients of a per-sample solve by per-sample backward solves.

    Args:
        make_fn: ``make_fn(args) -> fn`` with ``fn(t [B], leaves) -> leaves``.
        ys, cotangents: lists of ``[N, B, ...]`` forward outputs and their cotangents.
        t: ``[B, N]`` output times.
        args: extra tensors the field reads; variables: ``tf.Variable``s it reads.
        config: a ``tfode.adjoint.BackwardSolve`` (its ``seminorm`` must be True).
        initial_step: ``[B]`` the forward solve's last step sizes (start of the first segment).
        watched_args: the tensors the field reads for each of ``args`` (default ``args``); a
            captured tensor is read by closure, so its gradient is taken with respect to it, not
            to the copy ``tf.custom_gradient`` hands ``grad`` (as in ``tfode.adjoint``).

    Returns:
        ``(grads_y0, grad_t, grads_args, grads_vars, stats)``: ``grad_t`` ``[B, N]``,
        ``stats`` a ``SolverStats`` of ``[B]`` counters summed over the segments (status:
        each sample's worst).
    """
    num_times = t.shape[1] if t.shape[1] is not None else tf.shape(t)[1]
    num_leaves = len(ys)
    fn = make_fn(args)
    watched_args = list(args) if watched_args is None else list(watched_args)
    quadrature = _ParameterQuadrature(fn, list(variables) + watched_args, config.tableau, num_leaves)

    def augmented(time, state):
        y, a = state[:num_leaves], state[num_leaves:]
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(y)
            fy = list(fn(time, y))
        vjps = tape.gradient(fy, y, output_gradients=a, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return fy + [-dense_gradient(v, like) for v, like in zip(vjps, y)]

    def row(values, i):
        return [tf.gather(v, i) for v in values]

    def f_at(i):
        return list(fn(tf.gather(t, i, axis=1), row(ys, i)))

    rtol, atol = config.rtol + config.rtol, config.atol + config.atol
    batch = tf.shape(t)[0]
    zeros = tf.zeros([batch], tf.int32)
    adj = [tf.zeros_like(y[0]) for y in ys]
    acc = list(quadrature.initial)
    grad_t = tf.TensorArray(t.dtype, size=num_times, element_shape=tf.TensorShape([None]))
    # (evaluations, steps, worst status, time and step size where each sample first failed)
    counters = (zeros, zeros, zeros + int(Status.SUCCESS), t[:, 0], tf.zeros([batch], t.dtype))

    def solve_segment(i, adj, acc, grad_t, step, counters):
        g_i = row(cotangents, i)
        adj = [a + g for a, g in zip(adj, g_i)]
        grad_t = grad_t.write(i, tf.cast(_row_dot(g_i, f_at(i)), t.dtype))
        t_segment = tf.stack([tf.gather(t, i, axis=1), tf.gather(t, i - 1, axis=1)], axis=1)
        # A sample whose previous segment had zero length proposed no step: start from its span.
        step = tf.where(step > 0, step, tf.abs(t_segment[:, 1] - t_segment[:, 0]))
        controller = config.controller
        if isinstance(controller, PIController) and controller.first_step is None:
            controller = dataclasses.replace(controller, first_step=step)
        states, stats, increments = integrate_per_sample(
            augmented, row(ys, i) + adj, t_segment, config.tableau, rtol, atol, controller, config.max_num_steps,
            quadrature=quadrature,
        )  # fmt: skip
        adj = [s[-1] for s in states[num_leaves:]]
        acc = [total + increment for total, increment in zip(acc, increments)]
        counters = add_segment_stats(counters, stats)
        step = tf.where(stats.step_size > 0, stats.step_size, step)
        return i - 1, adj, acc, grad_t, step, counters

    if t.shape[1] is None or t.shape[1] > 1:
        _, adj, acc, grad_t, _, counters = tf.while_loop(
            lambda i, *_: i >= 1,
            solve_segment,
            (tf.convert_to_tensor(num_times - 1), adj, acc, grad_t, tf.cast(initial_step, t.dtype), counters),
            maximum_iterations=num_times - 1,
        )
    grad_t = grad_t.write(0, tf.cast(-_row_dot(adj, f_at(0)), t.dtype))
    grads_y0 = [a + g for a, g in zip(adj, row(cotangents, 0))]
    nfe, steps, status, t_fail, step_fail = counters
    stats = SolverStats(num_fn_evals=nfe + 1, num_steps=steps, num_accepted=zeros, num_rejected=zeros,
                        status=status, t_reached=t_fail, step_size=step_fail)  # fmt: skip
    grads_vars = acc[: len(variables)]
    grads_args = acc[len(variables) :]
    return grads_y0, tf.transpose(grad_t.stack()), grads_args, grads_vars, stats
