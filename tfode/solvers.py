"""Public entry points: ``tfode.odeint`` and ``tfode.solve``."""

from __future__ import annotations

import functools
import inspect
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tfode import _validation as v
from tfode._captures import captured_tensors, guard_nonfinite_gradients
from tfode._complex import has_complex_leaves, solve_complex
from tfode._eager_cache import cached_solve
from tfode._tf_compat import in_xla_context
from tfode.adjoint import BackwardSolve, adjoint_integrate
from tfode.checkpoint import JOINT, PER_SAMPLE, checkpointed_integrate
from tfode.config import DEFAULT_MAX_NUM_STEPS, SolverConfig, as_config
from tfode.integrate import integrate
from tfode.per_sample import integrate_per_sample
from tfode.solution import Solution
from tfode.solution import raise_on_failure as raise_on_failure_
from tfode.tableaus import get_tableau

__all__ = ["odeint", "solve", "solver_config"]


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
    config: SolverConfig
    rtol: list
    atol: list
    inputs_valid: Any


def solver_config(solver=None, *, method=None, rtol=None, atol=None, options=None, adjoint=None,
                  adjoint_method=None, adjoint_rtol=None, adjoint_atol=None, adjoint_options=None,
                  adjoint_norm=None):  # fmt: skip
    """The ``SolverConfig`` that ``solve``'s keywords describe: ``solver`` with each given keyword replaced.

    ``options`` (torchdiffeq-style dict, ``tfode.config.OPTION_NAMES``) edits the
    controller and budget; ``adjoint_options`` the backward solve's controller and budget.
    """
    keywords = dict(method=method, rtol=rtol, atol=atol, options=options, adjoint=adjoint,
                    adjoint_method=adjoint_method, adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol,
                    adjoint_options=adjoint_options, adjoint_norm=adjoint_norm)  # fmt: skip
    key = _config_key(solver, keywords)
    if key is None:
        return _solver_config(solver, **keywords)
    return _solver_config_memo(solver, key)


class _FrozenDict(tuple):
    """A dict keyword (``options``) as sorted ``(key, value)`` pairs, for the memo's key."""


def _config_key(solver, keywords):
    """``solver_config``'s keywords as a hashable tuple, or ``None`` (tensors, unhashable values)."""
    if solver is not None and not isinstance(solver, SolverConfig):
        return None
    items = []
    for name, value in keywords.items():
        if isinstance(value, dict):
            value = _FrozenDict(sorted(value.items(), key=lambda kv: str(kv[0])))
        elif tf.is_tensor(value) or isinstance(value, (list, np.ndarray)):
            return None
        items.append((name, type(value), value))  # the type too: True and 1 validate differently
    key = tuple(items)
    try:
        hash((solver, key))
    except TypeError:
        return None
    return key


@functools.lru_cache(maxsize=256)
def _solver_config_memo(solver, key):
    # SolverConfig is a frozen value: equal arguments give an equal config (built once).
    keywords = {name: dict(value) if isinstance(value, _FrozenDict) else value for name, _, value in key}
    return _solver_config(solver, **keywords)


def _solver_config(solver=None, *, method=None, rtol=None, atol=None, options=None, adjoint=None,
                   adjoint_method=None, adjoint_rtol=None, adjoint_atol=None, adjoint_options=None,
                   adjoint_norm=None):  # fmt: skip
    config = as_config(solver)
    changes = {
        "method": method, "rtol": rtol, "atol": atol, "adjoint": adjoint, "adjoint_method": adjoint_method,
        "adjoint_rtol": adjoint_rtol, "adjoint_atol": adjoint_atol, "adjoint_norm": adjoint_norm,
    }  # fmt: skip
    changes = {k: v for k, v in changes.items() if v is not None}
    if "method" in changes and get_tableau(changes["method"]).adaptive != config.tableau.adaptive:
        changes.setdefault("controller", None)  # the old method's controller may not fit the new one
    config = config.replace(**changes).with_options(options)
    if adjoint_options is not None:
        backward = SolverConfig(method=config.backward_tableau).with_options(adjoint_options)
        config = config.replace(adjoint_controller=backward.controller,
                                adjoint_max_num_steps=backward.max_num_steps)  # fmt: skip
    return config


def prepare(func, y0, t, config, args=(), allow_repeated_times=False, check_float_tolerances=True):
    """Validate the arguments of ``solve`` and convert them (internal).

    ``check_float_tolerances=False``: Python-number tolerances (which ``SolverConfig``
    has checked) are not converted (``rtol``, ``atol`` and ``inputs_valid`` then
    leave them out: an eager call's checks before its traced solve).
    """
    v.check_callable(func)
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"args must be a tuple of tensors, got {type(args).__name__}.")
    args = [tf.convert_to_tensor(a) for a in args]
    leaves, structure = v.as_state(y0)
    if config.batch_axis is None:
        t, t_valid = v.as_times(t, leaves[0].dtype, allow_repeats=allow_repeated_times)
    else:
        t, t_valid = v.as_sample_times(t, leaves)
    if config.controller is None and not config.tableau.adaptive and t.shape[-1] == 2:
        raise ValueError(
            f"Fixed-step method {config.tableau.name!r} needs a step size (options={{'step_size': h}} or "
            "controller=tfode.ConstantStepSize(h)), or a grid of more than two times t to step on; "
            "got t of length 2. controller=tfode.StepToOutputTimes() takes one step."
        )
    rtol_leaves = atol_leaves = rtol_valid = atol_valid = None
    if check_float_tolerances or not isinstance(config.rtol, float):
        rtol_leaves, rtol_valid = v.as_tolerance("rtol", config.rtol, leaves, structure)
    if check_float_tolerances or not isinstance(config.atol, float):
        atol_leaves, atol_valid = v.as_tolerance("atol", config.atol, leaves, structure)
    return Problem(
        make_fn=lambda bound: v.wrap_vector_field(func, structure, leaves, bound),
        args=args,
        leaves=leaves,
        structure=structure,
        t=t,
        config=config,
        rtol=rtol_leaves,
        atol=atol_leaves,
        inputs_valid=v.all_valid(t_valid, rtol_valid, atol_valid),
    )


# The library is plain TF ops and explicit tf.while_loops: skip AutoGraph's
# source conversion, which otherwise costs seconds on the first trace.
@tf.autograph.experimental.do_not_convert
def solve(
    func,
    y0,
    t,
    solver=None,
    *,
    method=None,
    rtol=None,
    atol=None,
    options=None,
    args=(),
    adjoint=None,
    adjoint_method=None,
    adjoint_rtol=None,
    adjoint_atol=None,
    adjoint_options=None,
    adjoint_norm=None,
    backward_stats=None,
    raise_on_failure=True,
    eager_cache=True,
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
            steps; with ``adjoint=False`` under XLA the gradient re-runs the
            loop from ``O(sqrt(max_num_steps))`` stored states, so its cost
            follows the steps taken, see ``tfode/checkpoint.py``), ``step_size`` (fixed-step
            methods; without it they step on the grid of ``t``), ``safety``,
            ``min_factor``, ``max_factor`` (see ``tfode.controllers.PIController``).
        args: tuple of extra tensors passed to ``func`` and differentiated.
        adjoint: use the adjoint method for gradients.
        adjoint_method, adjoint_rtol, adjoint_atol, adjoint_options: the
            backward solve's method, tolerances and options (default: the forward ones).
        adjoint_norm: ``"seminorm"`` (default; error control ignores the
            parameter-gradient channels, Kidger et al. 2021) or ``"full"``.
        backward_stats: optional ``tfode.SolveStats`` that the backward pass
            fills with its evaluation count, steps and status.
        raise_on_failure: if True (default), a failed solve raises
            ``IntegrationError`` eagerly, or an ``InvalidArgumentError`` when a
            graph runs (not under XLA, where Assert ops are dropped). If False,
            check ``solution.stats.status`` yourself.
        eager_cache: called eagerly, run the solve as a traced function cached by
            what forces a retrace (the field's code and closure, the state's structure,
            shapes and dtypes, the static config), so repeated calls cost about what a
            ``tf.function`` costs; the first call traces (``tfode/_eager_cache.py``).
            ``False`` dispatches every op eagerly (debugging; fields with Python side
            effects), as does ``tf.config.run_functions_eagerly(True)``. A field that
            needs eager values (numpy) is detected and runs eagerly. Ignored in graphs.
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
    config = solver_config(
        solver, method=method, rtol=rtol, atol=atol, options=options, adjoint=adjoint, adjoint_method=adjoint_method,
        adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol, adjoint_options=adjoint_options,
        adjoint_norm=adjoint_norm,
    )  # fmt: skip
    if has_complex_leaves(y0):
        return solve_complex(solve, func, y0, t, config, args=args, backward_stats=backward_stats,
                             raise_on_failure=raise_on_failure, eager_cache=eager_cache, name=name,
                             _allow_repeated_times=_allow_repeated_times)  # fmt: skip
    if eager_cache and tf.executing_eagerly() and not tf.config.functions_run_eagerly():
        # Validate eagerly (errors as in plain eager mode), then run the traced graph path.
        problem = prepare(func, y0, t, config, args, _allow_repeated_times, check_float_tolerances=False)
        cached = cached_solve(_graph_solve, func, problem, backward_stats, raise_on_failure, name,
                              _allow_repeated_times)  # fmt: skip
        if cached is not None:
            ys, stats = cached
            if raise_on_failure:  # eagerly: raises IntegrationError naming the first failed sample
                raise_on_failure_(ys, stats, problem.t[..., -1])
            return Solution(ts=problem.t, ys=tf.nest.pack_sequence_as(problem.structure, ys), stats=stats)
    ys, stats, problem = _solve(func, y0, t, config, args, backward_stats, raise_on_failure, raise_on_failure, name,
                                _allow_repeated_times)  # fmt: skip
    return Solution(ts=problem.t, ys=tf.nest.pack_sequence_as(problem.structure, ys), stats=stats)


def _graph_solve(func, y0, t, config, args, backward_stats, raise_backward, name, allow_repeated_times):
    """The body of an eager call's traced function: ``(ys leaves, stats)``; the caller checks the
    forward status, the adjoint's backward pass asserts its own (``raise_backward``)."""
    ys, stats, _ = _solve(func, y0, t, config, args, backward_stats, False, raise_backward, name,
                          allow_repeated_times)  # fmt: skip
    return ys, stats


def _solve(func, y0, t, config, args, backward_stats, raise_forward, raise_backward, name, allow_repeated_times):
    """``solve`` on a validated ``SolverConfig``: ``(ys leaves, stats, problem)``."""
    with tf.name_scope(name or "solve"):
        problem = prepare(func, y0, t, config, args, allow_repeated_times)
        controller = config.forward_controller
        forward = (config.tableau, problem.rtol, problem.atol, controller, config.step_budget(problem.t))
        if config.adjoint:
            ys, stats = adjoint_integrate(
                problem.make_fn, problem.leaves, problem.t, problem.args, *forward,
                _backward_solve(problem, raise_backward), inputs_valid=problem.inputs_valid,
                backward_stats=backward_stats, per_sample=config.batch_axis is not None,
            )  # fmt: skip
            ys = [tf.convert_to_tensor(y) for y in ys]
        else:
            ys, stats = _direct_integrate(func, problem, forward, per_sample=config.batch_axis is not None)
        if raise_forward:
            ys = raise_on_failure_(ys, stats, problem.t[..., -1])
        return ys, stats, problem


def _direct_integrate(func, problem, forward, per_sample):
    """The solve differentiated by backpropagation through the loop (joint or per sample)."""
    fn = problem.make_fn(problem.args)
    # Backpropagation through the loop must not see rejected steps' NaN derivatives.
    captured = captured_tensors(fn, problem.t[..., 0], problem.leaves, func=func)
    extra = [c for c in captured if all(c is not a for a in problem.args)]
    fn = guard_nonfinite_gradients(fn, problem.args + extra)
    if in_xla_context():
        # XLA sizes a while loop's gradient buffers by its maximum_iterations: re-run the
        # loop from checkpoints instead, at the cost of the steps taken.
        ys, stats = checkpointed_integrate(fn, problem.leaves, problem.t, problem.args + extra, *forward,
                                           inputs_valid=problem.inputs_valid,
                                           loop=PER_SAMPLE if per_sample else JOINT)  # fmt: skip
    else:
        loop = integrate_per_sample if per_sample else integrate
        ys, stats = loop(fn, problem.leaves, problem.t, *forward, inputs_valid=problem.inputs_valid)
    return [tf.convert_to_tensor(y) for y in ys], stats


def _backward_solve(problem, raise_on_failure):
    """The adjoint's ``BackwardSolve`` from the problem's ``SolverConfig``."""
    config = problem.config
    rtol, atol = problem.rtol, problem.atol
    if config.adjoint_rtol is not None:
        rtol, _ = v.as_tolerance("adjoint_rtol", config.adjoint_rtol, problem.leaves, problem.structure)
    if config.adjoint_atol is not None:
        atol, _ = v.as_tolerance("adjoint_atol", config.adjoint_atol, problem.leaves, problem.structure)
    budget = config.adjoint_max_num_steps or config.max_num_steps or DEFAULT_MAX_NUM_STEPS
    return BackwardSolve(
        tableau=config.backward_tableau,
        rtol=rtol,
        atol=atol,
        controller=config.backward_controller,
        max_num_steps=int(budget),
        seminorm=config.adjoint_norm == "seminorm",
        raise_on_failure=raise_on_failure,
    )


@tf.autograph.experimental.do_not_convert
def odeint(func, y0, t, solver=None, **kwargs):
    """Integrate ``dy/dt = func(t, y)`` and return the states at the times ``t``.

    The same arguments as ``tfode.solve`` (a ``SolverConfig`` and/or its keyword
    conveniences, ``args``, ``backward_stats``); failures always raise.

    Returns:
        States with ``y0``'s structure, each leaf ``[len(t), *leaf.shape]``.

    Raises:
        TypeError: an unknown keyword (named), or ``raise_on_failure``.

    Example:
        >>> ys = tfode.odeint(lambda t, y: -y, tf.constant([1.0]), tf.constant([0.0, 1.0]))
        >>> float(ys[-1, 0])  # exp(-1)
        0.36787...
    """
    if "raise_on_failure" in kwargs:
        raise TypeError("odeint always raises on failure; use tfode.solve(..., raise_on_failure=False).")
    unknown = sorted(set(kwargs) - _SOLVE_KEYWORDS)
    if unknown:
        raise TypeError(f"odeint() got unexpected keyword arguments {unknown}; it accepts {sorted(_SOLVE_KEYWORDS)}.")
    kwargs.setdefault("name", "odeint")
    return solve(func, y0, t, solver, **kwargs).ys


_SOLVE_KEYWORDS = frozenset(
    name
    for name in inspect.signature(solve).parameters
    if name not in ("func", "y0", "t", "solver") and not name.startswith("_") and name != "raise_on_failure"
)
