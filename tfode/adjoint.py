"""Gradients of an ODE solve by the adjoint method, through ``tf.custom_gradient``.

For outputs ``y_i = y(t_i)``, ``i = 0..N-1``, of ``dy/dt = f(t, y, θ)`` and
incoming cotangents ``g_i = ∂L/∂y_i``, the adjoint ``a(t) = ∂L/∂y(t)`` solves,
backwards from ``t_{N-1}`` to ``t_0`` together with the state and the
parameter accumulator ``p``:

    dy/dt = f(t, y),   da/dt = -aᵀ ∂f/∂y,   dp/dt = -aᵀ ∂f/∂θ,

with ``a`` incremented by ``g_i`` and ``y`` re-anchored to the stored forward
``y_i`` at each output time. Then

    ∂L/∂y0  = a(t_0) + g_0        ∂L/∂θ = p(t_0)
    ∂L/∂t_i = g_i · f(t_i, y_i)   (i >= 1)
    ∂L/∂t_0 = -a(t_0⁺) · f(t_0, y_0)

where ``a(t_0⁺)`` excludes ``g_0``. The forward solve is not recorded on any
tape, so memory does not grow with the number of steps.

References:
    Chen, Rubanova, Bettencourt & Duvenaud (2018), "Neural Ordinary
    Differential Equations", Algorithm 1 and Appendix B.
    Kidger, Chen & Lyons (2021), "'Hey, that's not an ODE': Faster ODE
    Adjoints via Seminorms".
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import tensorflow as tf

from tfode._adjoint_per_sample import backward_per_sample
from tfode._captures import captured_tensors, dense_gradient, is_differentiable_tensor
from tfode._tf_compat import stop_recording
from tfode.controllers import PIController
from tfode.integrate import integrate
from tfode.per_sample import integrate_per_sample
from tfode.solution import SolverStats, Status, add_segment_stats, raise_on_failure
from tfode.stats import record_stats

__all__ = ["BackwardSolve", "adjoint_integrate"]


class BackwardSolve(NamedTuple):
    """How to solve the backward (augmented) system (internal; built from a ``SolverConfig``).

    Attributes:
        tableau: ``ButcherTableau`` for the backward solve.
        rtol, atol: per-leaf tolerance tensors for the state leaves (norm dtype);
            the adjoint leaves use the same, the parameter leaves use ``rtol[0]``/``atol[0]``.
        controller: the ``StepSizeController`` of each backward segment.
        max_num_steps: Python int, step budget of each segment.
        seminorm: if True, error control ignores the parameter channels.
        raise_on_failure: raise (eagerly) or assert (graphs) if the backward solve fails.
    """

    tableau: object
    rtol: list
    atol: list
    controller: object
    max_num_steps: int
    seminorm: bool
    raise_on_failure: bool = True


def _vdot(xs, ys):
    """``sum_leaf sum(x * y)`` in the dtype of ``xs``."""
    return tf.add_n([tf.reduce_sum(x * y) for x, y in zip(xs, ys)])


def adjoint_integrate(
    make_fn,
    y0,
    t,
    args,
    tableau,
    rtol,
    atol,
    controller,
    max_num_steps,
    config,
    *,
    inputs_valid=None,
    backward_stats=None,
    per_sample=False,
):
    """Forward solve whose gradient is computed by the adjoint method.

    Args:
        make_fn: ``make_fn(args) -> fn`` with ``fn(t, leaves) -> leaves``.
        y0: list of state leaves; t: ``[T]`` times; args: list of extra tensors
            handed to the vector field (differentiated like ``y0``).
        tableau, rtol, atol, controller, max_num_steps: the forward solve (see ``integrate``).
        config: a ``BackwardSolve``.
        inputs_valid: optional in-graph validity flag.
        backward_stats: optional ``SolveStats`` to record the backward pass.
        per_sample: ``t`` is ``[B, N]`` and every sample is solved on its own, forward
            (``integrate_per_sample``) and backward (``tfode._adjoint_per_sample``).

    Returns:
        ``(ys, stats)`` as ``integrate`` returns them; ``ys`` carries the custom gradient.
    """
    num_leaves, num_explicit = len(y0), len(args)

    def bind(all_args):
        # Captured tensors are read by closure; they are inputs only to receive gradients.
        return make_fn(all_args[:num_explicit])

    forward_loop = integrate_per_sample if per_sample else integrate
    backward = backward_per_sample if per_sample else _backward

    def run_forward(y0_in, t_in, args_in):
        return forward_loop(bind(args_in), y0_in, t_in, tableau, rtol, atol, controller, max_num_steps,
                            inputs_valid=inputs_valid)  # fmt: skip

    # Tensors that the field reads from its enclosing scope get gradients like `args`:
    # the custom gradient below only returns gradients for its inputs.
    if tf.executing_eagerly():
        # The loop runs as one traced graph call, unseen by outer tapes (memory must not
        # grow with the steps); tapes opened by the field itself live inside the graph.
        traced_forward = tf.function(run_forward, autograph=False).get_concrete_function(y0, t, list(args))
        captured = traced_forward.captured_inputs
    else:
        traced_forward = None
        captured = captured_tensors(make_fn(args), t[..., 0], y0)
    known = [*args, *y0, t]
    captures = [c for c in captured if is_differentiable_tensor(c) and all(c is not k for k in known)]
    args = list(args) + captures
    num_args = len(args)
    forward_stats = []

    @tf.custom_gradient
    def solve_forward(*inputs):
        y0_in = list(inputs[:num_leaves])
        t_in = inputs[num_leaves]
        args_in = list(inputs[num_leaves + 1 :])
        if traced_forward is not None:
            # Reading the variables the graph captures lets tf.custom_gradient see them
            # (it hands their list to `grad`); the call below runs unrecorded.
            for variable in traced_forward.graph.variables:
                if variable.trainable:
                    variable.read_value()
            with stop_recording():
                ys, stats = traced_forward(y0_in, t_in, args_in[:num_explicit])
            ys = list(ys)
        else:
            # In graphs gradients reach the loop only through this custom gradient, so no
            # loop intermediates are kept.
            ys, stats = run_forward(y0_in, t_in, args_in)
        forward_stats.append(stats)

        def grad(*cotangents, variables=None):
            variables = list(variables or [])
            grads_y0, grad_t, grads_args, grads_vars, bstats = backward(
                bind, ys, [dense_gradient(c, y) for c, y in zip(cotangents, ys)], t_in, args_in, variables, config,
                stats.step_size, watched_args=args_in[:num_explicit] + captures,
            )  # fmt: skip
            grads = grads_y0 + [grad_t] + grads_args + grads_vars
            if backward_stats is not None:
                updates = record_stats(backward_stats, bstats)
                with tf.control_dependencies(updates):
                    grads = [tf.identity(g) for g in grads]
            if config.raise_on_failure:
                grads = raise_on_failure(grads, bstats, t_in[..., 0], stage="backward")
            split = num_leaves + 1 + num_args
            return grads[:split], grads[split:]

        return ys, grad

    ys = solve_forward(*y0, t, *args)
    return list(ys), forward_stats[0]


def _backward(make_fn, ys, cotangents, t, args, variables, config, initial_step, watched_args=None):
    """Solve the augmented system backwards over every output interval.

    ``initial_step`` (the forward solve's last step size) starts the first
    segment; later segments continue from the step the previous one proposed.
    ``watched_args`` (default ``args``): the tensors the field reads for each of ``args``,
    which the vector-Jacobian products differentiate. The field reads a captured tensor by
    closure, so the tape must watch that tensor: in a graph, ``tf.custom_gradient`` hands
    ``grad`` copies of its inputs, which the field never reads (their gradient was zero).
    """
    watched_args = list(args) if watched_args is None else list(watched_args)
    num_times = t.shape[0] if t.shape[0] is not None else tf.shape(t)[0]
    num_leaves = len(ys)
    time_dtype = t.dtype
    fn = make_fn(args)

    def f_at(index):
        return fn(t[index] if isinstance(index, int) else tf.gather(t, index), [tf.gather(y, index) for y in ys])

    def cotangent_at(index):
        return [tf.gather(c, index) for c in cotangents]

    params = variables + list(args)
    sources = variables + watched_args
    param_templates = [tf.zeros(p.shape, p.dtype) for p in params]

    def augmented(time, state):
        y = state[:num_leaves]
        a = state[num_leaves : 2 * num_leaves]
        with tf.GradientTape() as tape:
            tape.watch(y)
            tape.watch(watched_args)
            tape.watch(variables)
            fy = make_fn(args)(time, y)
        vjps = tape.gradient(fy, y + sources, output_gradients=a, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        vjps = [dense_gradient(v, like) for v, like in zip(vjps, y + param_templates)]
        return list(fy) + [-v for v in vjps]

    rtol0, atol0 = config.rtol[0], config.atol[0]
    aug_rtol = config.rtol + config.rtol + [rtol0] * len(params)
    aug_atol = config.atol + config.atol + [atol0] * len(params)
    mask = [True] * (2 * num_leaves) + [not config.seminorm] * len(params)

    adj = [tf.zeros_like(y[0]) for y in ys]
    acc = [tf.zeros(p.shape, p.dtype) for p in params]
    grad_t = tf.TensorArray(time_dtype, size=num_times, element_shape=[])
    # (evaluations, steps, worst status, time and step size where it failed)
    counters = (
        tf.constant(0, tf.int32),
        tf.constant(0, tf.int32),
        tf.constant(int(Status.SUCCESS), tf.int32),
        t[0],
        tf.zeros([], time_dtype),
    )

    def segment_cond(i, *_):
        return i >= 1

    def solve_segment(t_segment, state, step):
        # Each segment starts from the step size the previous one proposed
        # (no restart of Hairer's selection at every output time).
        controller = config.controller
        if isinstance(controller, PIController) and controller.first_step is None:
            controller = dataclasses.replace(controller, first_step=step)
        states, stats = integrate(
            augmented, state, t_segment, config.tableau, aug_rtol, aug_atol,
            controller, config.max_num_steps, error_mask=mask,
        )  # fmt: skip
        return [s[-1] for s in states], stats

    def skip_segment(t_segment, state, step):
        # Repeated output times (e.g. repeated shared query times): nothing to integrate.
        zero = tf.zeros([], tf.int32)
        stats = SolverStats(zero, zero, zero, zero, zero + int(Status.SUCCESS), t_segment[0], step)
        return state, stats

    def segment_body(i, adj, acc, grad_t, step, counters):
        g_i = cotangent_at(i)
        adj = [a + g for a, g in zip(adj, g_i)]
        f_i = f_at(i)
        grad_t = grad_t.write(i, tf.cast(_vdot(g_i, f_i), time_dtype))
        y_i = [tf.gather(y, i) for y in ys]
        t_segment = tf.stack([tf.gather(t, i), tf.gather(t, i - 1)])
        t_segment.set_shape([2])
        state = y_i + adj + acc
        final, stats = tf.cond(
            tf.equal(t_segment[0], t_segment[1]),
            lambda: skip_segment(t_segment, state, step),
            lambda: solve_segment(t_segment, state, step),
        )
        adj = final[num_leaves : 2 * num_leaves]
        acc = final[2 * num_leaves :]
        step = tf.where(stats.step_size > 0, stats.step_size, step)
        counters = add_segment_stats(counters, stats)
        return i - 1, adj, acc, grad_t, step, counters

    if t.shape[0] is None or t.shape[0] > 1:
        _, adj, acc, grad_t, _, counters = tf.while_loop(
            segment_cond,
            segment_body,
            (tf.convert_to_tensor(num_times - 1), adj, acc, grad_t, tf.cast(initial_step, time_dtype), counters),
            maximum_iterations=num_times - 1,
        )
    f_0 = f_at(0)
    grad_t = grad_t.write(0, tf.cast(-_vdot(adj, f_0), time_dtype))
    grads_y0 = [a + g for a, g in zip(adj, cotangent_at(0))]
    grads_vars = acc[: len(variables)]
    grads_args = acc[len(variables) :]
    nfe, steps, status, t_fail, step_fail = counters
    stats = SolverStats(
        num_fn_evals=nfe + 1,
        num_steps=steps,
        num_accepted=tf.zeros([], tf.int32),
        num_rejected=tf.zeros([], tf.int32),
        status=status,
        t_reached=t_fail,
        step_size=step_fail,
    )
    return grads_y0, grad_t.stack(), grads_args, grads_vars, stats
