"""Public entry points: ``tfode.odeint`` and ``tfode.solve``."""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import tensorflow as tf

from tfode import _validation as v
from tfode._complex import expand_tolerance, has_complex_leaves, solve_complex
from tfode.adjoint import AdjointConfig, adjoint_integrate
from tfode.controllers import PIController
from tfode.integrate import StepOptions, integrate
from tfode.solution import Solution
from tfode.solution import raise_on_failure as raise_on_failure_
from tfode.tableaus import ButcherTableau, get_tableau

__all__ = ["odeint", "solve", "DEFAULT_RTOL", "DEFAULT_ATOL", "OPTION_NAMES"]

DEFAULT_RTOL = 1e-6
DEFAULT_ATOL = 1e-8
DEFAULT_MAX_NUM_STEPS = 10_000

OPTION_NAMES = (
    "first_step",
    "min_step",
    "max_step",
    "max_num_steps",
    "step_size",
    "safety",
    "min_factor",
    "max_factor",
    "beta1",
    "beta2",
)


class Problem(NamedTuple):
    """A validated problem, ready for ``integrate`` (internal).

    ``make_fn(args)`` returns the loop's ``fn(t, leaves) -> leaves`` with the
    extra tensors ``args`` bound (the adjoint re-binds them inside its custom gradient).
    """

    make_fn: Any
    args: list
    leaves: list
    structure: Any
    t: Any
    tableau: ButcherTableau
    rtol: list
    atol: list
    controller: PIController
    step_options: StepOptions
    inputs_valid: Any


def _parse_options(options, tableau, t, time_dtype):
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise ValueError(f"Unknown options {unknown}; valid options are: {', '.join(OPTION_NAMES)}.")
    max_num_steps = options.get("max_num_steps", DEFAULT_MAX_NUM_STEPS)
    if isinstance(max_num_steps, bool) or not isinstance(max_num_steps, numbers.Integral) or max_num_steps < 1:
        raise ValueError(f"options['max_num_steps'] must be a positive int, got {max_num_steps!r}.")
    max_num_steps = int(max_num_steps)

    def scalar(name, default=None, allow_zero=False):
        value = options.get(name)
        if value is None:
            return default
        return v.positive_scalar_option(name, value, time_dtype, allow_zero=allow_zero)

    step_size = scalar("step_size")
    if tableau.adaptive and step_size is not None:
        raise ValueError(
            f"options['step_size'] applies to fixed-step methods only; method {tableau.name!r} is adaptive "
            "(use 'first_step' or 'max_step')."
        )
    if not tableau.adaptive and step_size is None and t.shape[0] == 2:
        raise ValueError(
            f"Fixed-step method {tableau.name!r} needs options['step_size'], or a grid of more than two "
            "times t to step on; got t of length 2 and no step_size."
        )
    if not tableau.adaptive and "max_num_steps" not in options:
        max_num_steps = _fixed_step_budget(t, step_size, max_num_steps)
    step_options = StepOptions(
        first_step=scalar("first_step"),
        min_step=scalar("min_step", tf.zeros([], time_dtype), allow_zero=True),
        max_step=scalar("max_step", tf.constant(math.inf, time_dtype)),
        step_size=step_size,
        max_num_steps=max_num_steps,
    )
    controller = PIController(
        **{
            k: float(options[k])
            for k in ("safety", "min_factor", "max_factor", "beta1", "beta2")
            if options.get(k) is not None
        }
    )
    return step_options, controller


def _fixed_step_budget(t, step_size, default):
    """Exact step count of a fixed-step solve when ``t`` and ``step_size`` are static.

    It bounds the loop, and under XLA it sizes the buffers that backpropagation
    through the loop (``adjoint=False``) preallocates, so a tight bound saves
    memory (10 000 default steps of a [8, 256] state cost ~300 MiB).
    """
    times = v._static_value(t)
    if times is None or t.shape[0] is None:
        return default
    if step_size is None:
        return max(t.shape[0] - 1, 1)
    size = v._static_value(step_size)
    if size is None:
        return default
    # +2: round-off in the step count and the stretched last step.
    return int(math.ceil(abs(float(times[-1]) - float(times[0])) / float(size))) + 2


def prepare(func, y0, t, method, rtol, atol, options, args=(), allow_repeated_times=False):
    """Validate the arguments of ``solve`` and convert them (internal)."""
    v.check_callable(func)
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"args must be a tuple of tensors, got {type(args).__name__}.")
    args = [tf.convert_to_tensor(a) for a in args]
    tableau = get_tableau(method)
    leaves, structure = v.as_state(y0)
    t, t_valid = v.as_times(t, leaves[0].dtype, allow_repeats=allow_repeated_times)
    if not tableau.adaptive:
        # Fixed-step methods ignore tolerances (None is fine); the adjoint may still use them.
        rtol = DEFAULT_RTOL if rtol is None else rtol
        atol = DEFAULT_ATOL if atol is None else atol
    rtol_leaves, rtol_valid = v.as_tolerance("rtol", rtol, leaves, structure)
    atol_leaves, atol_valid = v.as_tolerance("atol", atol, leaves, structure)
    step_options, controller = _parse_options(options, tableau, t, t.dtype)
    return Problem(
        make_fn=lambda bound: v.wrap_vector_field(func, structure, leaves, bound),
        args=args,
        leaves=leaves,
        structure=structure,
        t=t,
        tableau=tableau,
        rtol=rtol_leaves,
        atol=atol_leaves,
        controller=controller,
        step_options=step_options,
        inputs_valid=v.all_valid(t_valid, rtol_valid, atol_valid),
    )


# The library is plain TF ops and explicit tf.while_loops: skip AutoGraph's
# source conversion, which otherwise costs seconds on the first trace.
@tf.autograph.experimental.do_not_convert
def solve(
    func,
    y0,
    t,
    *,
    method="dopri5",
    rtol=DEFAULT_RTOL,
    atol=DEFAULT_ATOL,
    options=None,
    args=(),
    adjoint=False,
    adjoint_method=None,
    adjoint_rtol=None,
    adjoint_atol=None,
    adjoint_options=None,
    adjoint_norm="seminorm",
    backward_stats=None,
    raise_on_failure=True,
    name=None,
    _allow_repeated_times=False,
) -> Solution:
    """Solve ``dy/dt = func(t, y)`` from ``y(t[0]) = y0`` and report statistics.

    Gradients flow to ``y0``, every time in ``t``, ``args`` and every
    ``tf.Variable`` (Keras weight) that ``func`` reads: by backpropagation
    through the solver loop (``adjoint=False``, exact for the discretisation)
    or by the adjoint method (``adjoint=True``: a second solve backwards in
    time, memory independent of the number of steps).

    Args:
        func: ``func(t, y, *args) -> dy/dt``; ``t`` is a scalar tensor in
            ``y0``'s dtype, ``y`` has ``y0``'s structure (a tensor, tuple or
            dict of tensors).
        y0: initial state, a floating or complex tensor ``[...]`` or a nested
            structure of tensors of one dtype. Complex states are solved on
            their real view (real and imaginary parts as a trailing axis of 2:
            the error norm covers both); ``t`` stays real.
        t: ``[T]`` strictly increasing or strictly decreasing output times,
            ``T >= 1``; ``t[0]`` is the initial time. Float32 or float64.
        method: a name from ``tfode.method_names()`` (adaptive: dopri5, tsit5,
            bosh3, fehlberg2, adaptive_heun, dopri8; fixed: euler, midpoint,
            rk4) or a ``ButcherTableau``.
        rtol, atol: relative and absolute tolerances (adaptive methods); Python
            floats, tensors broadcastable to ``y0`` or structures matching ``y0``.
            Pass tensors to change them without retracing a ``tf.function``.
            Defaults ``1e-6`` and ``1e-8``.
        options: dict with any of ``first_step``, ``min_step``, ``max_step``,
            ``max_num_steps`` (Python int, default 10000, counts attempted
            steps; with ``adjoint=False`` under XLA it also sizes the gradient
            buffers, so keep it small there), ``step_size`` (fixed-step
            methods; without it they step on the grid of ``t``), ``safety``,
            ``min_factor``, ``max_factor`` (see ``tfode.controllers.PIController``).
        args: tuple of extra tensors passed to ``func`` and differentiated.
        adjoint: use the adjoint method for gradients.
        adjoint_method, adjoint_rtol, adjoint_atol, adjoint_options: the
            backward solve's method, tolerances and options (default: the forward ones).
        adjoint_norm: ``"seminorm"`` (default; error control ignores the
            parameter-gradient channels, Kidger et al. 2021) or ``"full"``.
        backward_stats: optional ``tfode.BackwardStats`` that the backward pass
            fills with its evaluation count, steps and status.
        raise_on_failure: if True (default), a failed solve raises
            ``IntegrationError`` eagerly, or an ``InvalidArgumentError`` when a
            graph runs (not under XLA, where Assert ops are dropped). If False,
            check ``solution.stats.status`` yourself.
        name: name scope.
        _allow_repeated_times: internal; accept non-decreasing ``t`` with repeats.

    Returns:
        A ``Solution`` with ``ts`` ``[T]``, ``ys`` (structure of ``y0``, each
        leaf ``[T, *leaf.shape]``) and ``stats``.

    Raises:
        ValueError, TypeError: for malformed arguments (each message names the argument).
        IntegrationError: eagerly, when the solve fails and ``raise_on_failure``.

    Example:
        >>> sol = tfode.solve(lambda t, y: -y, tf.ones([3]), tf.linspace(0., 1., 5))
        >>> sol.ys.shape, int(sol.stats.status)
        (TensorShape([5, 3]), 0)
    """
    if has_complex_leaves(y0):
        return solve_complex(
            solve, func, y0, t, rtol, atol, method=method, options=options, args=args, adjoint=adjoint,
            adjoint_method=adjoint_method, adjoint_rtol=expand_tolerance(adjoint_rtol, y0),
            adjoint_atol=expand_tolerance(adjoint_atol, y0), adjoint_options=adjoint_options,
            adjoint_norm=adjoint_norm, backward_stats=backward_stats, raise_on_failure=raise_on_failure,
            name=name, _allow_repeated_times=_allow_repeated_times,
        )  # fmt: skip
    with tf.name_scope(name or "solve"):
        problem = prepare(func, y0, t, method, rtol, atol, options, args, _allow_repeated_times)
        forward = (problem.tableau, problem.rtol, problem.atol, problem.controller, problem.step_options)
        if adjoint:
            config = _adjoint_config(problem, adjoint_method, adjoint_rtol, adjoint_atol, adjoint_options,
                                     adjoint_norm, raise_on_failure)  # fmt: skip
            ys, stats = adjoint_integrate(
                problem.make_fn, problem.leaves, problem.t, problem.args, *forward, config,
                inputs_valid=problem.inputs_valid, backward_stats=backward_stats,
            )  # fmt: skip
        else:
            ys, stats = integrate(
                problem.make_fn(problem.args), problem.leaves, problem.t, *forward, inputs_valid=problem.inputs_valid
            )
        if raise_on_failure:
            ys = raise_on_failure_(ys, stats, problem.t[-1])
        return Solution(ts=problem.t, ys=tf.nest.pack_sequence_as(problem.structure, ys), stats=stats)


def _adjoint_config(problem, method, rtol, atol, options, norm, raise_on_failure):
    if norm not in ("seminorm", "full"):
        raise ValueError(f"adjoint_norm must be 'seminorm' or 'full', got {norm!r}.")
    tableau = problem.tableau if method is None else get_tableau(method)
    leaves, structure = problem.leaves, problem.structure
    if rtol is None:
        rtol_leaves = problem.rtol
    else:
        rtol_leaves, _ = v.as_tolerance("adjoint_rtol", rtol, leaves, structure)
    if atol is None:
        atol_leaves = problem.atol
    else:
        atol_leaves, _ = v.as_tolerance("adjoint_atol", atol, leaves, structure)
    if options is None and method is None:
        step_options, controller = problem.step_options, problem.controller
    else:
        # A backward segment runs between two output times: no grid of t to step on.
        segment = tf.zeros([3], problem.t.dtype)
        step_options, controller = _parse_options(options, tableau, segment, problem.t.dtype)
    return AdjointConfig(
        tableau=tableau,
        rtol=rtol_leaves,
        atol=atol_leaves,
        controller=controller,
        step_options=step_options,
        seminorm=norm == "seminorm",
        raise_on_failure=raise_on_failure,
    )


@tf.autograph.experimental.do_not_convert
def odeint(
    func, y0, t, *, method="dopri5", rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL, options=None, name=None, **adjoint_kwargs
):
    """Integrate ``dy/dt = func(t, y)`` and return the states at the times ``t``.

    The same arguments as ``tfode.solve`` (``args``, ``adjoint`` and the
    ``adjoint_*`` keywords pass through); failures always raise.

    Returns:
        States with ``y0``'s structure, each leaf ``[len(t), *leaf.shape]``.

    Example:
        >>> ys = tfode.odeint(lambda t, y: -y, tf.constant([1.0]), tf.constant([0.0, 1.0]))
        >>> float(ys[-1, 0])  # exp(-1)
        0.36787...
    """
    if "raise_on_failure" in adjoint_kwargs:
        raise TypeError("odeint always raises on failure; use tfode.solve(..., raise_on_failure=False).")
    v.check_keywords("odeint", adjoint_kwargs, solve, exclude=("func", "y0", "t", "raise_on_failure"))
    return solve(
        func, y0, t, method=method, rtol=rtol, atol=atol, options=options, name=name or "odeint", **adjoint_kwargs
    ).ys
