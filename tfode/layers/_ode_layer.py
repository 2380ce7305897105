"""``ODELayer``: an ODE-Net block for Keras."""

from __future__ import annotations

import math
import numbers

import keras
import numpy as np
import tensorflow as tf

from tfode._keras_utils import from_config_with_nested, walk_layers
from tfode.config import DEFAULTS, SolverConfig, as_config
from tfode.layers._metrics import VariableValue, replica_counter
from tfode.solvers import solve, solver_config
from tfode.stats import SolveStats, batch_fn_evals

__all__ = ["ODELayer", "configure_solver"]


def _float_tolerance(name, value):
    if tf.is_tensor(value) or not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"ODELayer's {name} must be a Python number (it is a knob variable), got {value!r}.")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
    return value


class _LastSolve:
    """Holds the last call's ``SolverStats`` outside Keras' attribute tracking."""

    __slots__ = ("stats",)

    def __init__(self):
        self.stats = None


@keras.saving.register_keras_serializable(package="tfode")
class ODELayer(keras.layers.Layer):
    """Integrates its input as the initial state of ``dy/dt = vector_field(t, y)``.

    The output is ``y(t1)`` (``[batch, ...]``, the input's shape), or with
    ``times`` and ``return_sequences=True`` the states at every time,
    ``[batch, len(times), ...]``. The layer owns the vector field (a Keras layer
    with ``call(t, y)``), builds it from the input shape and tracks its weights.

    The solver is a ``tfode.SolverConfig`` (``layer.solver``; defaults
    ``rtol = atol = 1e-3`` with the adjoint, see ``tfode.config``), saved in
    ``get_config``. Two ways to change tolerances after training:

    * the knob: ``layer.rtol = 1e-2`` assigns a non-trainable variable, so the
      next ``predict`` uses it without retracing;
    * per call: ``layer(x, solver=layer.solver.replace(rtol=1e-2, atol=1e-2))``
      (tolerances may be tensors, e.g. a served request's inputs).

    A new method or controller changes the graph: use ``configure_solver``.

    The cost of the last solve is kept in the non-trainable weights
    ``num_fn_evals_forward`` and ``num_fn_evals_backward`` (the adjoint's backward
    solve in training; 0 after an inference call) and reported as the metrics
    ``<layer name>_nfe_forward``/``<layer name>_nfe_backward`` in ``fit`` and
    ``evaluate`` logs. Inference calls (``training=False``: predict, export)
    solve without the adjoint wrapper.

    Args:
        vector_field: a Keras layer computing ``dy/dt`` from ``(t, y)`` with ``y``'s shape.
        t0, t1: integration interval (ignored when ``times`` is given).
        solver: a ``tfode.SolverConfig`` (default ``tfode.config.DEFAULTS["ODELayer"]``).
            ``SolverConfig(batch_axis=0)`` solves every row of the batch on its own (own
            steps, status and counters ``[B]``; with or without the adjoint), so a row's
            output does not depend on its batch-mates; the default solves the batch jointly.
        times: optional strictly monotone output times, ``len >= 2``.
        return_sequences: with ``times``, return every time instead of the last.
        method, rtol, atol, adjoint, options, adjoint_method, adjoint_rtol,
            adjoint_atol, adjoint_norm: conveniences that replace fields of ``solver``
            (as in ``tfode.solve``).

    Input shape: ``[batch, ...]``. Output shape: the same, or ``[batch, len(times), ...]``.

    Example:
        >>> model = keras.Sequential([
        ...     keras.Input((64,)),
        ...     tfode.ODELayer(tfode.layers.TimeMLP(hidden=(64, 64)), t1=1.0),
        ...     keras.layers.Dense(10),
        ... ])
    """

    def __init__(
        self,
        vector_field,
        t0=0.0,
        t1=1.0,
        *,
        solver=None,
        times=None,
        return_sequences=False,
        method=None,
        rtol=None,
        atol=None,
        adjoint=None,
        options=None,
        adjoint_method=None,
        adjoint_rtol=None,
        adjoint_atol=None,
        adjoint_norm=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(vector_field, keras.layers.Layer):
            raise TypeError(
                f"vector_field must be a keras.layers.Layer with call(t, y), got {type(vector_field).__name__}."
            )
        config = solver_config(
            DEFAULTS["ODELayer"] if solver is None else as_config(solver), method=method, rtol=rtol, atol=atol,
            adjoint=adjoint, options=options, adjoint_method=adjoint_method, adjoint_rtol=adjoint_rtol,
            adjoint_atol=adjoint_atol, adjoint_norm=adjoint_norm,
        )  # fmt: skip
        config.get_config()  # a layer's solver must be serialisable (Python numbers, a named method)
        _float_tolerance("rtol", config.rtol)
        _float_tolerance("atol", config.atol)
        if return_sequences and times is None:
            raise ValueError("return_sequences=True needs times=[...] (the output times).")
        if times is None:
            t0, t1 = float(t0), float(t1)
            if not (math.isfinite(t0) and math.isfinite(t1)) or t0 == t1:
                raise ValueError(f"t0 and t1 must be finite and differ, got t0={t0!r}, t1={t1!r}.")
            times = (t0, t1)
        else:
            times = tuple(float(x) for x in np.asarray(times, dtype=np.float64).ravel())
            diffs = np.diff(times)
            if len(times) < 2 or not (np.all(diffs > 0) or np.all(diffs < 0)) or not np.all(np.isfinite(times)):
                raise ValueError(f"times must hold >= 2 finite, strictly monotone values, got {times!r}.")
        self.vector_field = vector_field
        self.times = times
        self.return_sequences = bool(return_sequences)
        self._solver = config
        self._last_solve = _LastSolve()

    # ----------------------------------------------------------------- knobs
    @property
    def solver(self) -> SolverConfig:
        """The layer's ``SolverConfig``, with the current knob tolerances."""
        return self._solver.replace(rtol=self.rtol, atol=self.atol)

    @solver.setter
    def solver(self, config):
        config = as_config(config)
        config.get_config()
        self._solver = config.replace(rtol=_float_tolerance("rtol", config.rtol),
                                      atol=_float_tolerance("atol", config.atol))  # fmt: skip
        if self.built:
            self._rtol.assign(self._solver.rtol)
            self._atol.assign(self._solver.atol)

    @property
    def method(self):
        return self._solver.method

    @property
    def adjoint(self):
        return self._solver.adjoint

    @property
    def rtol(self):
        return self._solver.rtol

    @rtol.setter
    def rtol(self, value):
        self._solver = self._solver.replace(rtol=_float_tolerance("rtol", value))
        if self.built:
            self._rtol.assign(self._solver.rtol)

    @property
    def atol(self):
        return self._solver.atol

    @atol.setter
    def atol(self, value):
        self._solver = self._solver.replace(atol=_float_tolerance("atol", value))
        if self.built:
            self._atol.assign(self._solver.atol)

    # ----------------------------------------------------------------- Keras
    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) < 2:
            raise ValueError(f"ODELayer needs input of shape [batch, ...], got {input_shape}.")
        t_spec = keras.KerasTensor((), dtype=self.compute_dtype)
        y_spec = keras.KerasTensor(input_shape, dtype=self.compute_dtype)
        try:
            out = self.vector_field(t_spec, y_spec)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"vector_field {self.vector_field.name!r} must be callable as vector_field(t, y) with t a scalar "
                f"and y of shape {input_shape}; calling it failed: {err}"
            ) from err
        out_shape = tuple(getattr(out, "shape", ()))
        if len(out_shape) != len(input_shape) or any(
            a is not None and b is not None and a != b for a, b in zip(out_shape[1:], input_shape[1:])
        ):
            raise ValueError(f"vector_field must return dy/dt with the input's shape {input_shape}, got {out_shape}.")
        self._rtol = self.add_weight(shape=(), initializer=keras.initializers.Constant(self._solver.rtol),
                                     trainable=False, name="rtol", dtype="float32")  # fmt: skip
        self._atol = self.add_weight(shape=(), initializer=keras.initializers.Constant(self._solver.atol),
                                     trainable=False, name="atol", dtype="float32")  # fmt: skip
        # Cost of the last forward/backward solve; the metrics below report them, named per
        # layer so that two ODELayers in one model both show. Written per replica under
        # tf.distribute, read as the mean over replicas.
        self.num_fn_evals_forward = replica_counter("nfe_forward")
        self.num_fn_evals_backward = replica_counter("nfe_backward")
        self.nfe_forward = VariableValue(self.num_fn_evals_forward, name=f"{self.name}_nfe_forward")
        self.nfe_backward = VariableValue(self.num_fn_evals_backward, name=f"{self.name}_nfe_backward")
        self._backward_stats = SolveStats(f"{self.name}_backward_stats", num_fn_evals=self.num_fn_evals_backward,
                                          num_steps=False, status=False)  # fmt: skip

    def call(self, inputs, training=None, solver=None):
        """Solve from ``inputs``; ``solver`` (a ``SolverConfig``) replaces the layer's for this call.

        After the call, ``layer.last_solve_stats`` holds this call's ``SolverStats``
        (tensors of the graph being traced, or eager values), which
        ``tfode.serving`` returns per request.
        """

        def field(t, y):
            return self.vector_field(t, y)

        if solver is None:
            config = self._solver.replace(rtol=tf.convert_to_tensor(self._rtol), atol=tf.convert_to_tensor(self._atol))
        else:
            config = as_config(solver)
        # Inference graphs (predict, export) need no custom gradient.
        if training is False and config.adjoint:
            config = config.replace(adjoint=False)
        times = tf.constant(self.times, dtype=tf.float64 if inputs.dtype == tf.float64 else tf.float32)
        solution = solve(field, inputs, times, config,
                         backward_stats=self._backward_stats if config.adjoint else None)  # fmt: skip
        self._record_forward(solution.stats, backward=config.adjoint)
        self._last_solve.stats = solution.stats
        ys = solution.ys
        if self.return_sequences:
            rank = len(ys.shape)
            return tf.transpose(ys, [1, 0, *range(2, rank)])
        return ys[-1]

    @property
    def last_solve_stats(self):
        """The ``SolverStats`` of the last call (graph tensors while tracing), or ``None``."""
        return self._last_solve.stats

    def _record_forward(self, stats, backward):
        """Record a forward solve's cost; without an adjoint the backward count is 0."""
        self.num_fn_evals_forward.assign(tf.cast(batch_fn_evals(stats), tf.float32))
        if not backward:
            self.num_fn_evals_backward.assign(0.0)

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if self.return_sequences:
            return (input_shape[0], len(self.times), *input_shape[1:])
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            vector_field=keras.saving.serialize_keras_object(self.vector_field),
            solver=self.solver.get_config(),
            times=list(self.times),
            return_sequences=self.return_sequences,
        )
        return config

    @classmethod
    def from_config(cls, config):
        return from_config_with_nested(cls, config, "vector_field")


def configure_solver(model, solver=None, *, method=None, rtol=None, atol=None):
    """Change the solver of every ``ODELayer`` in a (trained) model.

    Tolerances are variables, so changing only them needs no retrace. A new
    method or controller changes the graph: the model's compiled predict, train
    and test functions are rebuilt (``make_*_function(force=True)``) so the next
    call retraces with it.

    Args:
        model: a Keras model or layer containing ``ODELayer``s.
        solver: optional new ``SolverConfig`` for every layer.
        method, rtol, atol: optional replacements of single fields.

    Returns:
        The list of ``ODELayer``s changed.
    """
    layers = [layer for layer in walk_layers(model) if isinstance(layer, ODELayer)]
    if not layers:
        raise ValueError("model contains no ODELayer.")
    retrace = False
    for layer in layers:
        old = layer.solver
        new = solver_config(old if solver is None else solver, method=method, rtol=rtol, atol=atol)
        layer.solver = new
        retrace = retrace or old.replace(rtol=new.rtol, atol=new.atol) != new
    if retrace and isinstance(model, keras.Model):
        model.make_predict_function(force=True)
        if model.compiled:
            model.make_train_function(force=True)
            model.make_test_function(force=True)
    return layers
