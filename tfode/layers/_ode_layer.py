"""``ODELayer``: an ODE-Net block for Keras."""

from __future__ import annotations

import math
import numbers

import keras
import numpy as np
import tensorflow as tf

from tfode._keras_utils import from_config_with_nested
from tfode._overrides import current_tolerances, record_fn_evals
from tfode.layers._metrics import VariableValue, replica_counter
from tfode.solvers import solve
from tfode.tableaus import get_tableau

__all__ = ["ODELayer", "configure_solver"]


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
    return float(value)


@keras.saving.register_keras_serializable(package="tfode")
class ODELayer(keras.layers.Layer):
    """Integrates its input as the initial state of ``dy/dt = vector_field(t, y)``.

    The output is ``y(t1)`` (``[batch, ...]``, the input's shape), or with
    ``times`` and ``return_sequences=True`` the states at every time,
    ``[batch, len(times), ...]``. The layer owns the vector field (a Keras layer
    with ``call(t, y)``), builds it from the input shape and tracks its weights.

    Tolerances live in non-trainable variables: change them on a trained model
    (``layer.rtol = 1e-2``) and the next ``predict`` uses them without
    retracing. Changing the method needs a retrace: use ``configure_solver``.

    The cost of the last solve is kept in the non-trainable weights
    ``num_fn_evals_forward`` and ``num_fn_evals_backward`` (adjoint training
    only) and reported as metrics ``nfe_forward``/``nfe_backward``, visible in
    the ``fit`` progress bar, ``History`` and TensorBoard. Inference calls
    (``training=False``: predict, export) solve without the adjoint wrapper.

    Args:
        vector_field: a Keras layer computing ``dy/dt`` from ``(t, y)`` with ``y``'s shape.
        t0, t1: integration interval (ignored when ``times`` is given).
        method: solver name (``tfode.method_names()``).
        rtol, atol: tolerances (defaults ``1e-3``: ODE-Nets train well at loose
            tolerances; tighten at test time if needed).
        adjoint: gradients by the adjoint method (memory independent of the
            number of steps) instead of backpropagation through the solver.
        times: optional strictly monotone output times, ``len >= 2``.
        return_sequences: with ``times``, return every time instead of the last.
        options: solver options (see ``tfode.solve``), e.g. ``{"step_size": 0.25}``
            for fixed-step methods.
        adjoint_method, adjoint_rtol, adjoint_atol, adjoint_norm: backward-solve settings.

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
        method="dopri5",
        rtol=1e-3,
        atol=1e-3,
        adjoint=True,
        times=None,
        return_sequences=False,
        options=None,
        adjoint_method=None,
        adjoint_rtol=None,
        adjoint_atol=None,
        adjoint_norm="seminorm",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(vector_field, keras.layers.Layer):
            raise TypeError(
                f"vector_field must be a keras.layers.Layer with call(t, y), got {type(vector_field).__name__}."
            )
        self._method = get_tableau(method).name
        if adjoint_method is not None:
            adjoint_method = get_tableau(adjoint_method).name
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
        if adjoint_norm not in ("seminorm", "full"):
            raise ValueError(f"adjoint_norm must be 'seminorm' or 'full', got {adjoint_norm!r}.")
        self.vector_field = vector_field
        self.times = times
        self.return_sequences = bool(return_sequences)
        self.adjoint = bool(adjoint)
        self.options = dict(options or {})
        self.adjoint_method = adjoint_method
        self.adjoint_rtol = None if adjoint_rtol is None else _positive("adjoint_rtol", adjoint_rtol)
        self.adjoint_atol = None if adjoint_atol is None else _positive("adjoint_atol", adjoint_atol)
        self.adjoint_norm = adjoint_norm
        self._initial_rtol = _positive("rtol", rtol)
        self._initial_atol = _positive("atol", atol)

    # ----------------------------------------------------------------- knobs
    @property
    def method(self):
        return self._method

    @property
    def rtol(self):
        return float(self._rtol.numpy()) if self.built else self._initial_rtol

    @rtol.setter
    def rtol(self, value):
        self._initial_rtol = _positive("rtol", value)
        if self.built:
            self._rtol.assign(self._initial_rtol)

    @property
    def atol(self):
        return float(self._atol.numpy()) if self.built else self._initial_atol

    @atol.setter
    def atol(self, value):
        self._initial_atol = _positive("atol", value)
        if self.built:
            self._atol.assign(self._initial_atol)

    # ----------------------------------------------------------------- Keras
    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) < 2:
            raise ValueError(f"ODELayer needs input of shape [batch, ...], got {input_shape}.")
        t_spec = keras.KerasTensor((), dtype=self.compute_dtype)
        y_spec = keras.KerasTensor(input_shape, dtype=self.compute_dtype)
        try:
            out = self.vector_field(t_spec, y_spec)
        except Exception as err:
            raise ValueError(
                f"vector_field {self.vector_field.name!r} must be callable as vector_field(t, y) with t a scalar "
                f"and y of shape {input_shape}; calling it failed: {err}"
            ) from err
        out_shape = tuple(getattr(out, "shape", ()))
        if len(out_shape) != len(input_shape) or any(
            a is not None and b is not None and a != b for a, b in zip(out_shape[1:], input_shape[1:])
        ):
            raise ValueError(f"vector_field must return dy/dt with the input's shape {input_shape}, got {out_shape}.")
        self._rtol = self.add_weight(shape=(), initializer=keras.initializers.Constant(self._initial_rtol),
                                     trainable=False, name="rtol", dtype="float32")  # fmt: skip
        self._atol = self.add_weight(shape=(), initializer=keras.initializers.Constant(self._initial_atol),
                                     trainable=False, name="atol", dtype="float32")  # fmt: skip
        # Cost of the last forward/backward solve; the metrics below report them.
        # Written per replica under tf.distribute, read as the mean over replicas.
        self.num_fn_evals_forward = replica_counter("nfe_forward")
        self.num_fn_evals_backward = replica_counter("nfe_backward")
        self.nfe_forward = VariableValue(self.num_fn_evals_forward, name="nfe_forward")
        self.nfe_backward = VariableValue(self.num_fn_evals_backward, name="nfe_backward")

    def call(self, inputs, training=None):
        def field(t, y):
            return self.vector_field(t, y)

        override = current_tolerances()
        if override is not None:
            rtol, atol = (tf.cast(x, tf.float32) for x in override)
        else:
            rtol, atol = tf.convert_to_tensor(self._rtol), tf.convert_to_tensor(self._atol)
        # Inference graphs (predict, export) need no custom gradient.
        use_adjoint = self.adjoint and training is not False
        times = tf.constant(self.times, dtype=tf.float64 if inputs.dtype == tf.float64 else tf.float32)
        solution = solve(
            field,
            inputs,
            times,
            method=self._method,
            rtol=rtol,
            atol=atol,
            options=self.options or None,
            adjoint=use_adjoint,
            adjoint_method=self.adjoint_method,
            adjoint_rtol=self.adjoint_rtol,
            adjoint_atol=self.adjoint_atol,
            adjoint_norm=self.adjoint_norm,
            backward_stats=_BackwardRecorder(self.num_fn_evals_backward) if use_adjoint else None,
        )
        self.num_fn_evals_forward.assign(tf.cast(solution.stats.num_fn_evals, tf.float32))
        record_fn_evals(solution.stats.num_fn_evals)
        ys = solution.ys
        if self.return_sequences:
            rank = len(ys.shape)
            return tf.transpose(ys, [1, 0, *range(2, rank)])
        return ys[-1]

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if self.return_sequences:
            return (input_shape[0], len(self.times), *input_shape[1:])
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            vector_field=keras.saving.serialize_keras_object(self.vector_field),
            method=self._method,
            rtol=self.rtol,
            atol=self.atol,
            adjoint=self.adjoint,
            times=list(self.times),
            return_sequences=self.return_sequences,
            options=self.options,
            adjoint_method=self.adjoint_method,
            adjoint_rtol=self.adjoint_rtol,
            adjoint_atol=self.adjoint_atol,
            adjoint_norm=self.adjoint_norm,
        )
        return config

    @classmethod
    def from_config(cls, config):
        return from_config_with_nested(cls, config, "vector_field")


class _BackwardRecorder:
    """Where the adjoint's backward pass writes its evaluation count."""

    def __init__(self, variable):
        self.num_fn_evals = variable


def configure_solver(model, *, method=None, rtol=None, atol=None):
    """Change the solver of every ``ODELayer`` in a (trained) model.

    Tolerances are variables, so changing only them needs no retrace. A new
    ``method`` changes the graph: the model's compiled predict/train/test
    functions are dropped so the next call retraces with it.

    Args:
        model: a Keras model or layer containing ``ODELayer``s.
        method: optional new method name.
        rtol, atol: optional new tolerances.

    Returns:
        The list of ``ODELayer``s changed.
    """
    layers = [layer for layer in model._flatten_layers(include_self=True) if isinstance(layer, ODELayer)]
    if not layers:
        raise ValueError("model contains no ODELayer.")
    for layer in layers:
        if rtol is not None:
            layer.rtol = rtol
        if atol is not None:
            layer.atol = atol
        if method is not None:
            layer._method = get_tableau(method).name
    if method is not None:
        for attr in ("predict_function", "train_function", "test_function"):
            if hasattr(model, attr):
                setattr(model, attr, None)
    return layers
