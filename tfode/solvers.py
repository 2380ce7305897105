"""Public entry points: ``tfode.odeint`` and ``tfode.solve``."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import tensorflow as tf

from tfode import _validation as v
from tfode.controllers import PIController
from tfode.integrate import StepOptions, integrate
from tfode.solution import IntegrationError, Solution, Status
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
)


class Problem(NamedTuple):
    """A validated problem, ready for ``integrate`` (internal)."""

    fn: Any
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
    if isinstance(max_num_steps, bool) or not isinstance(max_num_steps, int) or max_num_steps < 1:
        raise ValueError(f"options['max_num_steps'] must be a positive Python int, got {max_num_steps!r}.")

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
    if not tableau.adaptive and step_size is None and t.shape[0] <= 2:
        raise ValueError(
            f"Fixed-step method {tableau.name!r} needs options['step_size'], or a grid of more than two "
            f"times t to step on; got t of length {t.shape[0]} and no step_size."
        )
    step_options = StepOptions(
        first_step=scalar("first_step"),
        min_step=scalar("min_step", tf.zeros([], time_dtype), allow_zero=True),
        max_step=scalar("max_step", tf.constant(math.inf, time_dtype)),
        step_size=step_size,
        max_num_steps=max_num_steps,
    )
    controller = PIController(
        **{k: float(options[k]) for k in ("safety", "min_factor", "max_factor") if options.get(k) is not None}
    )
    return step_options, controller


def prepare(func, y0, t, method, rtol, atol, options):
    """Validate the arguments of ``solve`` and convert them (internal)."""
    v.check_callable(func)
    tableau = get_tableau(method)
    leaves, structure = v.as_state(y0)
    t, t_valid = v.as_times(t, leaves[0].dtype)
    rtol_leaves, rtol_valid = v.as_tolerance("rtol", rtol, leaves, structure)
    atol_leaves, atol_valid = v.as_tolerance("atol", atol, leaves, structure)
    step_options, controller = _parse_options(options, tableau, t, t.dtype)
    return Problem(
        fn=v.wrap_vector_field(func, structure, leaves),
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


def _raise_or_assert(ys, stats, t_end):
    """Turn a failure status into an error: Python in eager mode, an Assert op in graphs.

    Under ``jit_compile=True`` XLA drops Assert ops; unreached outputs are then
    NaN and ``stats.status`` tells the cause.
    """
    if tf.executing_eagerly():
        status = int(stats.status)
        if status != Status.SUCCESS:
            raise IntegrationError(status, float(stats.t_reached), float(stats.step_size), float(t_end))
        return ys
    check = tf.debugging.Assert(
        tf.equal(stats.status, int(Status.SUCCESS)),
        [
            "tfode: ODE solve failed (status 1: max_num_steps exhausted, 2: step size underflow, "
            "3: NaN/Inf state, 4: invalid tolerances or times); status, t reached, step size:",
            stats.status,
            stats.t_reached,
            stats.step_size,
        ],
    )
    with tf.control_dependencies([check]):
        return [tf.identity(y) for y in ys]


def solve(
    func,
    y0,
    t,
    *,
    method="dopri5",
    rtol=DEFAULT_RTOL,
    atol=DEFAULT_ATOL,
    options=None,
    raise_on_failure=True,
    name=None,
) -> Solution:
    """Solve ``dy/dt = func(t, y)`` from ``y(t[0]) = y0`` and report statistics.

    Args:
        func: ``func(t, y) -> dy/dt``; ``t`` is a scalar tensor in ``y0``'s
            dtype, ``y`` has ``y0``'s structure (a tensor, tuple or dict of tensors).
        y0: initial state, a floating tensor ``[...]`` or a nested structure of
            tensors of one floating dtype.
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
            steps), ``step_size`` (fixed-step methods; without it they step on
            the grid of ``t``), ``safety``, ``min_factor``, ``max_factor``
            (PI controller constants, see ``tfode.controllers.PIController``).
        raise_on_failure: if True (default), a failed solve raises
            ``IntegrationError`` eagerly, or an ``InvalidArgumentError`` when a
            graph runs (not under XLA, where Assert ops are dropped). If False,
            check ``solution.stats.status`` yourself.
        name: name scope.

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
    with tf.name_scope(name or "solve"):
        problem = prepare(func, y0, t, method, rtol, atol, options)
        ys, stats = integrate(
            problem.fn,
            problem.leaves,
            problem.t,
            problem.tableau,
            problem.rtol,
            problem.atol,
            problem.controller,
            problem.step_options,
            inputs_valid=problem.inputs_valid,
        )
        if raise_on_failure:
            ys = _raise_or_assert(ys, stats, problem.t[-1])
        return Solution(ts=problem.t, ys=tf.nest.pack_sequence_as(problem.structure, ys), stats=stats)


def odeint(func, y0, t, *, method="dopri5", rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL, options=None, name=None):
    """Integrate ``dy/dt = func(t, y)`` and return the states at the times ``t``.

    The same arguments as ``tfode.solve``; failures always raise.

    Returns:
        States with ``y0``'s structure, each leaf ``[len(t), *leaf.shape]``.

    Example:
        >>> ys = tfode.odeint(lambda t, y: -y, tf.constant([1.0]), tf.constant([0.0, 1.0]))
        >>> float(ys[-1, 0])  # exp(-1)
        0.36787...
    """
    return solve(func, y0, t, method=method, rtol=rtol, atol=atol, options=options, name=name or "odeint").ys
