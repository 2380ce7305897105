"""Step-size controllers: objects with one contract that the integration loop asks.

The loop never branches on the kind of method. Per attempted step it asks the
controller where to step (``propose``), takes the Runge–Kutta step, and asks
whether to accept it and what to try next (``adapt``). Three controllers:

* ``PIController``: adaptive steps from the embedded error estimate (the default
  for adaptive tableaus).
* ``ConstantStepSize(h)``: steps of ``h`` (the last one shortened to land on the
  final time), any tableau.
* ``StepToOutputTimes()``: one step between consecutive output times (the default
  for fixed-step tableaus).

Step sizes are never differentiated: gradients hold the step sequence fixed
(callers wrap what the controller computes in ``tf.stop_gradient``).

References:
    Hairer, Nørsett & Wanner (1993), "Solving Ordinary Differential Equations I",
    §II.4 (starting step size) and the PI step control of DOPRI5 (dopri5.f).
    Gustafsson (1991), "Control theoretic techniques for stepsize selection in
    explicit Runge-Kutta methods".
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any, ClassVar

import numpy as np
import tensorflow as tf

from tfode.norms import rms_norm
from tfode.runge_kutta import along_batch
from tfode.solution import Status

__all__ = [
    "ConstantStepSize",
    "PIController",
    "StepSizeController",
    "StepToOutputTimes",
    "controller_from_config",
    "select_initial_step",
]


def _const(value, dtype):
    """``value`` as a tensor of ``dtype``: keeps every constant in the state's or time's dtype
    (a bare Python float would promote float32 to float64 under NumPy behaviour)."""
    return tf.constant(value, dtype)


def _static_float(name, value, *, allow_zero=False, allow_inf=False):
    """A Python number checked to be positive (or zero/inf when allowed), or a tensor passed through."""
    if tf.is_tensor(value):  # checked in-graph by the solve
        return value
    if isinstance(value, (np.ndarray, np.generic)) and np.ndim(value) == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}.")
    value = float(value)
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero) or (math.isinf(value) and not allow_inf):
        rule = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be {rule}{'' if allow_inf else ' and finite'}, got {value!r}.")
    return value


class StepSizeController:
    """The contract between the integration loop and a step-size controller.

    A controller is an immutable value (a frozen dataclass). Its per-solve state
    is a scalar ``memory`` tensor (in the error norm's dtype) that the loop carries.

    Attributes:
        uses_error_estimate: whether ``adapt`` needs the step's error ratio (the loop
            computes it only then, and the tableau must have an embedded method).
        landing_slack: a proposed step within ``(1 + landing_slack)`` of the distance
            to its target is stretched to land on it, rather than leave a sliver.
    """

    uses_error_estimate: ClassVar[bool] = False
    landing_slack: ClassVar[float] = 1e-3

    def check(self, tableau):
        """Raise ``ValueError`` when this controller cannot drive ``tableau``."""

    def step_budget(self, t, default):
        """The budget of attempted steps when the user set none (Python int).

        Args:
            t: ``[T]`` output times (a tensor; static values may be read).
            default: the general default.
        """
        return default

    def initial(self, fn, t0, y0, f0, t, direction, tableau, rtol, atol, error_mask, per_sample=False):
        """The first step and the initial memory.

        Args:
            fn: ``fn(t, leaves) -> leaves``; t0: start time; y0, f0: leaves at ``t0``.
            t: ``[T]`` output times; direction: +1 or -1 (time dtype).
            tableau: the ``ButcherTableau``; rtol, atol: per-leaf tolerances (norm dtype).
            error_mask: optional list of bools, the leaves that count in the error norm.
            per_sample: ``t0``, ``direction`` are ``[B]``, ``t`` is ``[B, T]``, and each
                sample (the leaves' leading axis) gets its own first step.

        Returns:
            ``(step, memory, num_fn_evals)``: the first step magnitude (time dtype),
            the memory tensor (norm dtype ``rtol[0].dtype``), and the Python int
            number of extra evaluations of ``fn`` spent.
        """
        raise NotImplementedError

    def propose(self, t_now, step, next_output_time, t_end):
        """Where to step next.

        Returns:
            ``(step, target)``: the step magnitude to try and the time it aims at
            (the loop lands exactly on ``target`` when the step reaches it).
        """
        return step, t_end

    def adapt(self, t_now, step, ratio, memory, finite, direction, error_order):
        """Accept or reject the attempted step and propose the next one.

        Args:
            t_now: time at the start of the step; step: its magnitude (time dtype).
            ratio: error ratio of the step (norm dtype, ``<= 1`` acceptable; may be
                inf/NaN) or ``None`` when ``uses_error_estimate`` is False.
            memory: the memory tensor; finite: scalar bool, the new state is finite.
            direction: +1 or -1; error_order: Python int ``q`` (error ~ ``h**q``).

        Returns:
            ``(accept, next_step, memory, failure)``: scalar bool; the next step
            magnitude; the new memory; an int32 ``Status`` (``RUNNING`` unless the
            solve cannot go on).
        """
        raise NotImplementedError

    def get_config(self):
        """A JSON-serialisable dict of the constructor arguments."""
        config = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if tf.is_tensor(value):
                raise ValueError(
                    f"{type(self).__name__}.{field.name} holds a tensor and cannot be serialised; "
                    "serialise a controller built from Python numbers."
                )
            config[field.name] = value
        return config


@dataclasses.dataclass(frozen=True)
class PIController(StepSizeController):
    """Proportional–integral step-size control from the embedded error estimate.

    After a step with error ratio ``r_n`` (previous accepted ratio ``r_{n-1}``)
    the step is multiplied by

        factor = safety * r_n**(-beta1) * r_{n-1}**beta2,

    clipped to ``[min_factor, max_factor]``. After a rejected step the factor
    is capped at 1 and the proportional term is dropped (a rejection must
    shrink the step). With ``beta2 = 0`` this is the classic I controller.

    Args:
        safety: 0.9: aim 10% below the largest step the estimate allows, so
            that the next step is rarely rejected (Hairer's choice).
        min_factor: 0.2: never shrink by more than 5x in one go (dopri5.f FAC1).
        max_factor: 10.0: never grow by more than 10x (dopri5.f FAC2).
        beta1: weight of the current error; ``None`` derives ``1/q - 0.75 * beta2``
            from the error order ``q`` (dopri5.f's EXPO1; ``1/q`` for beta2 = 0).
        beta2: weight of the previous error, default 0 (the classic I
            controller, as torchdiffeq and diffrax default to: on the non-stiff
            problems neural ODEs pose it takes ~10% fewer evaluations than PI at
            the same error, measured on benchmark W1). Set ``0.04`` for dopri5.f's
            PI control (``0.2/q`` in general), which damps the oscillating step
            sequences an I controller shows on mildly stiff problems.
        first_step: the first step; ``None`` picks it by Hairer's algorithm
            (``select_initial_step``, one extra evaluation).
        min_step: smallest step; 0 means "down to the resolution of t". A rejected
            step at ``min_step`` ends the solve with ``STEP_SIZE_UNDERFLOW``.
        max_step: largest step (default unbounded).

    Example:
        >>> config = tfode.SolverConfig(controller=tfode.PIController(beta2=0.04, max_step=0.1))
    """

    safety: float = 0.9
    min_factor: float = 0.2
    max_factor: float = 10.0
    beta1: float | None = None
    beta2: float | None = None
    first_step: Any = None
    min_step: Any = 0.0
    max_step: Any = math.inf

    uses_error_estimate: ClassVar[bool] = True
    # Stretch a step by up to 1% rather than leave a sliver before the end
    # (Hairer's dopri5.f uses 1.01 for the same purpose).
    landing_slack: ClassVar[float] = 0.01

    def __post_init__(self):
        for name in ("safety", "min_factor", "max_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}.")
        if not self.min_factor <= 1 <= self.max_factor:
            raise ValueError(f"need min_factor <= 1 <= max_factor, got {self.min_factor!r}, {self.max_factor!r}.")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
                raise TypeError(f"{name} must be a number or None, got {value!r}.")
        if self.first_step is not None:
            _static_float("first_step", self.first_step)
        _static_float("min_step", self.min_step, allow_zero=True)
        _static_float("max_step", self.max_step, allow_inf=True)

    def check(self, tableau):
        if tableau.b_error is None:
            raise ValueError(
                f"PIController needs an adaptive method with an error estimate; {tableau.name!r} has none: "
                "use tfode.ConstantStepSize(h) or tfode.StepToOutputTimes()."
            )

    def exponents(self, error_order: int) -> tuple[float, float]:
        """``(beta1, beta2)`` for an error estimate of order ``error_order``."""
        beta2 = 0.0 if self.beta2 is None else float(self.beta2)
        beta1 = 1.0 / error_order - 0.75 * beta2 if self.beta1 is None else float(self.beta1)
        return beta1, beta2

    def _bounds(self, dtype):
        return tf.cast(self.min_step, dtype), tf.cast(self.max_step, dtype)

    def initial(self, fn, t0, y0, f0, t, direction, tableau, rtol, atol, error_mask, per_sample=False):
        memory = tf.ones([], rtol[0].dtype)
        min_step, max_step = self._bounds(t0.dtype)
        if self.first_step is None:
            step = select_initial_step(fn, t0, y0, f0, direction, tableau.error_order, rtol, atol, error_mask,
                                       per_sample)  # fmt: skip
            extra = 1
        else:
            step, extra = tf.cast(self.first_step, t0.dtype), 0
        return tf.clip_by_value(tf.stop_gradient(step), min_step, max_step), memory, extra

    def propose(self, t_now, step, next_output_time, t_end):
        return tf.minimum(step, tf.cast(self.max_step, step.dtype)), t_end

    def adapt(self, t_now, step, ratio, memory, finite, direction, error_order):
        beta1, beta2 = self.exponents(error_order)
        dtype = ratio.dtype
        accept = ratio <= _const(1.0, dtype)
        ratio_finite = tf.math.is_finite(ratio)
        # A zero error ratio would make the factor infinite: floor it (the
        # max_factor clip then limits growth). Non-finite ratios shrink the step.
        safe_ratio = tf.where(ratio_finite, tf.maximum(ratio, _const(1e-10, dtype)), tf.ones([], dtype))
        safety = _const(self.safety, dtype)
        # Terms that are static no-ops are not built (bit-identical results, fewer ops
        # per step in graph mode): memory**0 == 1, and with beta1 == 1/q the rejected
        # step's proportional term is the accepted one's.
        proportional = safety * safe_ratio ** _const(-beta1, dtype)
        factor = proportional if beta2 == 0.0 else proportional * memory ** _const(beta2, dtype)
        if beta1 != 1.0 / error_order:
            proportional = safety * safe_ratio ** _const(-1.0 / error_order, dtype)
        factor_rejected = tf.minimum(proportional, _const(1.0, dtype))
        factor = tf.where(accept, factor, factor_rejected)
        factor = tf.where(ratio_finite, factor, _const(self.min_factor, dtype))
        factor = tf.clip_by_value(factor, _const(self.min_factor, dtype), _const(self.max_factor, dtype))
        if beta2 != 0.0:
            # Remember at least 1e-4 as dopri5.f does, so one tiny error does not
            # make the previous-error term dominate the next proposal.
            memory = tf.where(accept, tf.maximum(safe_ratio, _const(1e-4, dtype)), memory)
        min_step, max_step = self._bounds(step.dtype)
        next_step = tf.clip_by_value(step * tf.cast(factor, step.dtype), min_step, max_step)
        stuck = tf.logical_not(accept) & ((step <= min_step) | tf.equal(t_now + direction * next_step, t_now))
        failure = tf.where(ratio_finite, int(Status.STEP_SIZE_UNDERFLOW), int(Status.NON_FINITE))
        failure = tf.where(stuck, failure, int(Status.RUNNING))
        return accept, next_step, memory, failure


@dataclasses.dataclass(frozen=True)
class ConstantStepSize(StepSizeController):
    """Steps of a fixed size ``step_size``; the last one is shortened to land on the final time.

    Output times in between are filled by dense output. Works with any tableau
    (an adaptive tableau's error estimate is then ignored). A step whose new state
    is not finite ends the solve with ``NON_FINITE``.

    Args:
        step_size: the step magnitude (positive; the sign follows ``t``).

    Example:
        >>> tfode.solve(f, y0, t, method="rk4", solver=tfode.SolverConfig(controller=tfode.ConstantStepSize(0.01)))
    """

    step_size: Any = None

    def __post_init__(self):
        if self.step_size is None:
            raise ValueError("ConstantStepSize needs step_size, e.g. ConstantStepSize(0.01).")
        _static_float("step_size", self.step_size)

    def step_budget(self, t, default):
        """The exact step count when ``t`` and ``step_size`` are static.

        It bounds the loop, and under XLA it sizes the buffers that backpropagation
        through the per-sample loop (``adjoint=False``) preallocates, and the number
        of checkpoints of the joint loop's, so a tight bound saves memory (10 000
        default steps of a [8, 256] state cost ~300 MiB in the per-sample loop).
        """
        times = _static_values(t)
        if times is None or tf.is_tensor(self.step_size):
            return default
        # The widest span (per-sample times are [B, N]); +2: round-off in the step count and
        # the stretched last step.
        span = float(np.max(np.abs(np.asarray(times)[..., -1] - np.asarray(times)[..., 0])))
        return int(math.ceil(span / float(self.step_size))) + 2

    def initial(self, fn, t0, y0, f0, t, direction, tableau, rtol, atol, error_mask, per_sample=False):
        return tf.cast(self.step_size, t0.dtype), tf.zeros([], rtol[0].dtype), 0

    def propose(self, t_now, step, next_output_time, t_end):
        return tf.cast(self.step_size, step.dtype), t_end

    def adapt(self, t_now, step, ratio, memory, finite, direction, error_order):
        failure = tf.where(finite, int(Status.RUNNING), int(Status.NON_FINITE))
        return finite, tf.cast(self.step_size, step.dtype), memory, failure


@dataclasses.dataclass(frozen=True)
class StepToOutputTimes(StepSizeController):
    """One step from each output time to the next (the grid of ``t``), any tableau.

    The default for fixed-step methods (euler, midpoint, rk4) without a step
    size: refine the output grid to refine the solution. A step whose new state
    is not finite ends the solve with ``NON_FINITE``.
    """

    def step_budget(self, t, default):
        length = t.shape[-1]
        return default if length is None else max(length - 1, 1)

    def initial(self, fn, t0, y0, f0, t, direction, tableau, rtol, atol, error_mask, per_sample=False):
        num_times = tf.shape(t)[-1]
        return tf.abs(tf.gather(t, tf.minimum(1, num_times - 1), axis=-1) - t0), tf.zeros([], rtol[0].dtype), 0

    def propose(self, t_now, step, next_output_time, t_end):
        return tf.abs(next_output_time - t_now), next_output_time

    def adapt(self, t_now, step, ratio, memory, finite, direction, error_order):
        failure = tf.where(finite, int(Status.RUNNING), int(Status.NON_FINITE))
        return finite, step, memory, failure


_CONTROLLERS = {cls.__name__: cls for cls in (PIController, ConstantStepSize, StepToOutputTimes)}


def controller_from_config(config):
    """Rebuild a controller from ``{"class_name": ..., "config": {...}}`` (``SolverConfig.get_config``)."""
    if not isinstance(config, dict) or config.get("class_name") not in _CONTROLLERS:
        raise ValueError(f"controller config must name one of {sorted(_CONTROLLERS)}, got {config!r}.")
    return _CONTROLLERS[config["class_name"]](**config.get("config", {}))


def _static_values(t):
    try:
        return tf.get_static_value(t)
    except (TypeError, ValueError):
        return None


def select_initial_step(fn, t0, y0, f0, direction, error_order, rtol, atol, mask=None, per_sample=False):
    """Hairer's starting step (HNW I, §II.4), one extra evaluation of ``fn``.

    With ``sc = atol + rtol*|y0|``: ``d0 = ||y0/sc||``, ``d1 = ||f0/sc||``,
    ``h0 = 0.01 d0/d1`` (``1e-6`` if either is tiny); an explicit Euler step of
    ``h0`` gives ``d2 = ||(f(t0+h0, y0+h0 f0) - f0)/sc|| / h0``; then
    ``h1 = (0.01 / max(d1, d2))**(1/q)`` and the result is ``min(100 h0, h1)``.

    Args:
        fn: ``fn(t, y_leaves) -> dy_leaves`` with ``t`` in time dtype.
        t0: scalar start time (time dtype).
        y0, f0: lists of leaves (state dtype); ``f0 = fn(t0, y0)``.
        direction: +1 or -1 (time dtype).
        error_order: Python int ``q``.
        rtol, atol: lists of tolerance tensors (norm dtype) per leaf.
        mask: optional list of bools, the leaves that count (the seminorm).
        per_sample: ``t0``, ``direction`` are ``[B]`` and each sample (the leaves'
            leading axis) gets its own step from its own norms.

    Returns:
        Scalar step magnitude (``[B]`` per sample; time dtype), strictly positive.
    """
    ndtype = rtol[0].dtype
    norm = functools.partial(rms_norm, mask=mask, per_sample=per_sample)
    tdtype = t0.dtype
    scale = [a + r * tf.abs(tf.cast(y, ndtype)) for y, r, a in zip(y0, rtol, atol)]
    d0 = norm([tf.cast(y, ndtype) / s for y, s in zip(y0, scale)])
    d1 = norm([tf.cast(f, ndtype) / s for f, s in zip(f0, scale)])
    tiny = _const(1e-5, ndtype)
    h0 = tf.where((d0 < tiny) | (d1 < tiny), _const(1e-6, ndtype), _const(0.01, ndtype) * d0 / tf.maximum(d1, tiny))
    h0 = tf.cast(h0, tdtype)
    y_euler = [y + along_batch(tf.cast(direction * h0, y.dtype), y) * f for y, f in zip(y0, f0)]
    f_euler = fn(t0 + direction * h0, y_euler)
    d2 = norm([tf.cast(fe - f, ndtype) / s for fe, f, s in zip(f_euler, f0, scale)])
    d2 = d2 / tf.cast(h0, ndtype)
    d_max = tf.maximum(d1, d2)
    floor = _const(1e-15, ndtype)
    h1 = tf.where(
        d_max <= floor,
        tf.maximum(_const(1e-6, ndtype), tf.cast(h0, ndtype) * _const(1e-3, ndtype)),
        (_const(0.01, ndtype) / tf.maximum(d_max, floor)) ** _const(1.0 / error_order, ndtype),
    )
    step = tf.minimum(_const(100.0, tdtype) * h0, tf.cast(h1, tdtype))
    finite = tf.math.is_finite(step) & (step > _const(0.0, tdtype))
    return tf.where(finite, step, _const(1e-6, tdtype))
