"""``SolverConfig``: every setting of a solve as one frozen, serialisable value.

``tfode.solve``/``odeint`` accept it (their keywords are conveniences built on
it), and every layer, bijector, encoder and model holds one, round-trips it
through ``get_config`` and ``.keras`` files, and accepts a replacement per call
(``layer(x, solver=config.replace(rtol=1e-2, atol=1e-2))``). Nothing is read
from global or thread-local state.

Defaults, in one table (``DEFAULTS``). ``solve`` uses ``SolverConfig()``; the
objects that differ say why:

=====================  ======  ======  =======  ====================================================
who                    rtol    atol    adjoint  why it differs
=====================  ======  ======  =======  ====================================================
``solve``, ``odeint``  1e-6    1e-8    False    torchdiffeq's defaults: a general-purpose solve
``ODELayer``           1e-3    1e-3    True     ODE-Nets classify as well at loose tolerances
                                                (digits: 0.89% error from 1e-1 to 1e-5) and train
                                                3x faster; the adjoint keeps memory flat
``ContinuousFlow...``  1e-5    1e-5    True     log-densities need accurate traces (FFJORD's 1e-5)
``LatentODE``          1e-3    1e-4    True     Rubanova et al.'s settings for latent trajectories
encoders, ``ODERNN``   1e-3    1e-4    False    short solves between observations; backprop is
                                                cheaper than an adjoint per gap
=====================  ======  ======  =======  ====================================================
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any

import numpy as np
import tensorflow as tf

from tfode.controllers import (
    ConstantStepSize,
    PIController,
    StepSizeController,
    StepToOutputTimes,
    _static_float,
    controller_from_config,
)
from tfode.tableaus import ButcherTableau, get_tableau

__all__ = ["DEFAULTS", "DEFAULT_MAX_NUM_STEPS", "OPTION_NAMES", "SolverConfig"]

DEFAULT_MAX_NUM_STEPS = 10_000

# Keys of the torchdiffeq-style ``options`` dict that ``solve`` accepts as a convenience.
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
_PI_OPTIONS = ("first_step", "min_step", "max_step", "safety", "min_factor", "max_factor", "beta1", "beta2")


def _check_tolerance(name, value, allow_none=False):
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{name} must be given, got None.")
    if tf.is_tensor(value) or isinstance(value, (np.ndarray, list, tuple, dict)):
        return value  # per-element or structured tolerances, checked by the solve
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, a float tensor or a structure of them, got {value!r}.")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value!r}.")
    return value


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    """How to solve an ODE: method, tolerances, step-size control, step budget, gradients.

    A frozen value: ``config.replace(rtol=1e-2)`` returns a new one. Tolerances
    may be Python floats (serialisable) or tensors (e.g. a served signature's
    ``rtol`` input: a new value then needs no retrace).

    Args:
        method: a name from ``tfode.method_names()`` or a ``ButcherTableau``.
        rtol, atol: relative and absolute tolerances: positive numbers, tensors
            broadcastable to the state, or structures matching it.
        controller: a ``StepSizeController``; ``None`` picks ``PIController()`` for
            adaptive methods and ``StepToOutputTimes()`` for fixed-step ones.
        max_num_steps: budget of attempted steps (Python int); ``None``: 10 000, or
            the exact count for fixed steps over static times. Under XLA with
            ``adjoint=False`` the gradient (joint or per sample) keeps
            ``O(sqrt(max_num_steps))`` checkpoints (``tfode/checkpoint.py``), so it costs
            the steps taken, not the budget.
        adjoint: gradients by the adjoint method (a backward solve, memory flat in
            the number of steps) instead of backpropagation through the loop.
        adjoint_method, adjoint_rtol, adjoint_atol, adjoint_controller,
            adjoint_max_num_steps: the backward solve's settings (``None``: the
            forward ones); the budget applies to each backward segment.
        adjoint_norm: ``"seminorm"`` (error control ignores the parameter channels,
            Kidger et al. 2021) or ``"full"``.
        batch_axis: ``None`` (joint: one step size and error norm for the whole state,
            torchdiffeq's semantics) or ``0``: per-sample solving, every entry of the
            leading axis of every state leaf is its own problem with its own steps,
            error norm, status and counters (``tfode.per_sample``); ``t`` may then be
            ``[B, N]``, and ``func`` receives ``t`` of shape ``[B]``. With ``adjoint=True``
            every sample's backward solve takes its own steps too, and the parameter
            gradient is accumulated over the batch in O(parameters) memory
            (``tfode._adjoint_per_sample``; needs ``adjoint_norm="seminorm"``).

    Raises:
        ValueError, TypeError: a bad field, named in the message.

    Example:
        >>> config = tfode.SolverConfig(method="tsit5", rtol=1e-5, atol=1e-5, adjoint=True)
        >>> tfode.solve(f, y0, t, solver=config)
        >>> layer(x, solver=config.replace(rtol=1e-2, atol=1e-2))   # per call
    """

    method: Any = "dopri5"
    rtol: Any = 1e-6
    atol: Any = 1e-8
    controller: StepSizeController | None = None
    max_num_steps: int | None = None
    adjoint: bool = False
    adjoint_method: Any = None
    adjoint_rtol: Any = None
    adjoint_atol: Any = None
    adjoint_controller: StepSizeController | None = None
    adjoint_max_num_steps: int | None = None
    adjoint_norm: str = "seminorm"
    batch_axis: int | None = None

    def __post_init__(self):
        tableau = get_tableau(self.method)
        if isinstance(self.method, str):
            object.__setattr__(self, "method", tableau.name)
        _check_tolerance("rtol", self.rtol)
        _check_tolerance("atol", self.atol)
        _check_tolerance("adjoint_rtol", self.adjoint_rtol, allow_none=True)
        _check_tolerance("adjoint_atol", self.adjoint_atol, allow_none=True)
        for name in ("controller", "adjoint_controller"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, StepSizeController):
                raise TypeError(f"{name} must be a tfode step-size controller or None, got {value!r}.")
        _ = self.forward_controller  # checks the controller fits the method
        if self.adjoint_method is not None:
            backward = get_tableau(self.adjoint_method)
            if isinstance(self.adjoint_method, str):
                object.__setattr__(self, "adjoint_method", backward.name)
        _ = self.backward_controller
        for name in ("max_num_steps", "adjoint_max_num_steps"):
            steps = getattr(self, name)
            if steps is not None and (isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1):
                raise ValueError(f"{name} must be a positive int or None, got {steps!r}.")
        if not isinstance(self.adjoint, (bool, np.bool_)):
            raise TypeError(f"adjoint must be True or False, got {self.adjoint!r}.")
        if self.batch_axis not in (None, 0) or isinstance(self.batch_axis, bool):
            raise ValueError(f"batch_axis must be None (joint) or 0 (per-sample), got {self.batch_axis!r}.")
        if self.adjoint_norm not in ("seminorm", "full"):
            raise ValueError(f"adjoint_norm must be 'seminorm' or 'full', got {self.adjoint_norm!r}.")
        if self.batch_axis is not None and self.adjoint and self.adjoint_norm == "full":
            raise ValueError(
                "adjoint_norm='full' cannot be per sample (batch_axis=0): the per-sample adjoint sums the "
                "parameter gradient over the batch and keeps it out of error control; use adjoint_norm='seminorm'."
            )

    # ------------------------------------------------------------ derived
    @property
    def tableau(self) -> ButcherTableau:
        return get_tableau(self.method)

    @property
    def backward_tableau(self) -> ButcherTableau:
        return self.tableau if self.adjoint_method is None else get_tableau(self.adjoint_method)

    @property
    def forward_controller(self) -> StepSizeController:
        """The controller the forward solve uses (the default for the method when unset)."""
        return _resolve_controller(self.controller, self.tableau, "controller")

    @property
    def backward_controller(self) -> StepSizeController:
        """The controller of each backward segment of the adjoint (between two output times).

        ``adjoint_controller``, else the forward controller when the method is the same,
        else the default for ``adjoint_method``. ``StepToOutputTimes`` takes one step per segment.
        """
        controller = self.adjoint_controller
        if controller is None and self.adjoint_method is None:
            controller = self.controller
        return _resolve_controller(controller, self.backward_tableau, "adjoint_controller")

    def step_budget(self, t):
        """``max_num_steps``, or the controller's default budget for the times ``t``."""
        if self.max_num_steps is not None:
            return int(self.max_num_steps)
        return self.forward_controller.step_budget(t, DEFAULT_MAX_NUM_STEPS)

    # ------------------------------------------------------------ editing
    def replace(self, **changes) -> SolverConfig:
        """A copy with the given fields changed (validated again)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            names = [f.name for f in dataclasses.fields(self)]
            raise TypeError(f"SolverConfig has no fields {unknown}; fields: {names}.")
        return dataclasses.replace(self, **changes)

    def with_options(self, options) -> SolverConfig:
        """Apply a torchdiffeq-style ``options`` dict (keys ``OPTION_NAMES``).

        ``step_size`` selects ``ConstantStepSize``; the PI keys (``first_step``,
        ``min_step``, ``max_step``, ``safety``, ``min_factor``, ``max_factor``,
        ``beta1``, ``beta2``) edit the ``PIController``; ``max_num_steps`` the budget.
        """
        if options is None:
            return self
        if not isinstance(options, dict):
            raise TypeError(f"options must be a dict, got {type(options).__name__}.")
        options = {k: v for k, v in options.items() if v is not None}
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            raise ValueError(f"Unknown options {unknown}; valid options are: {', '.join(OPTION_NAMES)}.")
        for key in ("first_step", "max_step", "step_size"):
            if key in options:
                _check_option(key, options[key], allow_inf=key == "max_step")
        if "min_step" in options:
            _check_option("min_step", options["min_step"], allow_zero=True)
        steps = options.get("max_num_steps", 1)
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
            raise ValueError(f"options['max_num_steps'] must be a positive int, got {steps!r}.")
        changes = {}
        if "max_num_steps" in options:
            changes["max_num_steps"] = options["max_num_steps"]
        pi = {k: options[k] for k in _PI_OPTIONS if k in options}
        tableau = self.tableau
        if "step_size" in options:
            if tableau.adaptive:
                raise ValueError(
                    f"options['step_size'] applies to fixed-step methods only; method {tableau.name!r} is adaptive "
                    "(use 'first_step' or 'max_step', or controller=tfode.ConstantStepSize(h))."
                )
            changes["controller"] = ConstantStepSize(options["step_size"])
        elif pi:
            if not tableau.adaptive:
                raise ValueError(f"options {sorted(pi)} apply to adaptive methods; {tableau.name!r} is fixed-step.")
            base = self.controller if isinstance(self.controller, PIController) else PIController()
            changes["controller"] = dataclasses.replace(base, **pi)
        return self.replace(**changes)

    # ------------------------------------------------------------ serialisation
    def get_config(self) -> dict:
        """A JSON-serialisable dict; ``SolverConfig.from_config`` inverts it.

        Raises:
            ValueError: a field holds a tensor or a custom ``ButcherTableau``.
        """
        config = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, StepSizeController):
                value = {"class_name": type(value).__name__, "config": value.get_config()}
            elif isinstance(value, ButcherTableau):
                raise ValueError(f"{field.name} is a custom ButcherTableau, which cannot be serialised by name.")
            elif tf.is_tensor(value) or isinstance(value, (np.ndarray, list, tuple, dict)):
                raise ValueError(f"SolverConfig.{field.name} holds a tensor or structure and cannot be serialised.")
            elif isinstance(value, np.bool_):
                value = bool(value)
            config[field.name] = value
        return config

    @classmethod
    def from_config(cls, config) -> SolverConfig:
        config = dict(config)
        for name in ("controller", "adjoint_controller"):
            if config.get(name) is not None:
                config[name] = controller_from_config(config[name])
        return cls(**config)


def _check_option(key, value, allow_zero=False, allow_inf=False):
    if tf.is_tensor(value):
        if value.shape.rank not in (0, None):
            raise ValueError(f"options[{key!r}] must be a scalar, got shape {value.shape}.")
        static = tf.get_static_value(value)
        if static is None:
            return
        value = static.item()
    try:
        _static_float(f"options[{key!r}]", value, allow_zero=allow_zero, allow_inf=allow_inf)
    except TypeError as err:
        raise ValueError(str(err)) from err


def _resolve_controller(controller, tableau, name):
    if controller is None:
        return _default_controller(tableau.adaptive)
    if controller.uses_error_estimate and tableau.b_error is None:
        raise ValueError(
            f"{name}={type(controller).__name__} needs an adaptive method with an error estimate; "
            f"{tableau.name!r} has none: use tfode.ConstantStepSize(h) or tfode.StepToOutputTimes()."
        )
    return controller


@functools.lru_cache(maxsize=2)
def _default_controller(adaptive):
    # Controllers are frozen values: one default instance each (a solve asks for it several times).
    return PIController() if adaptive else StepToOutputTimes()


def as_config(solver, argument="solver") -> SolverConfig:
    """``solver`` as a ``SolverConfig`` (``None`` -> the defaults); a clear error otherwise."""
    if solver is None:
        return _DEFAULT_CONFIG
    if isinstance(solver, dict):
        return SolverConfig.from_config(solver)
    if not isinstance(solver, SolverConfig):
        raise TypeError(f"{argument} must be a tfode.SolverConfig, got {type(solver).__name__}.")
    return solver


_DEFAULT_CONFIG = SolverConfig()  # a frozen value, shared

DEFAULTS = {
    "solve": _DEFAULT_CONFIG,
    "ODELayer": SolverConfig(rtol=1e-3, atol=1e-3, adjoint=True),
    "ContinuousFlowBijector": SolverConfig(rtol=1e-5, atol=1e-5, adjoint=True),
    "LatentODE": SolverConfig(rtol=1e-3, atol=1e-4, adjoint=True),
    "encoder": SolverConfig(rtol=1e-3, atol=1e-4, max_num_steps=256),
}
