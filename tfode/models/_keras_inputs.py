"""Keras' ``fit``/``evaluate``/``predict`` for the irregular-series models' dict inputs.

Keras splits every input of a dict along its first axis into batches, so a
shared ``times`` ``[T]`` or ``query_times`` ``[Q]`` (which a direct ``model(...)``
call accepts) cannot pass its data adapter. The rule, for ``fit``, ``evaluate``
and ``predict`` (and ``fit``'s ``validation_data``): when ``values`` is
``[B, T, D]``, a 1-D ``times`` is broadcast to ``[B, T]`` and a 1-D
``query_times`` to ``[B, Q]``: every series gets the shared times. Per-series
times give the same answer (the batch's times are merged into one grid, see
``solve_at_series_times``). A ``tf.data.Dataset`` or generator is passed on
untouched: its batches reach ``call`` as they are.
"""

from __future__ import annotations

import inspect

import keras
import numpy as np
import tensorflow as tf

__all__ = ["IrregularSeriesTrainer", "broadcast_shared_times"]

_SHARED = ("times", "query_times")


def broadcast_shared_times(inputs):
    """``inputs`` with 1-D ``times``/``query_times`` broadcast to ``[B, ...]`` (``B`` from ``values``).

    Args:
        inputs: a model's input dict (numpy arrays, tensors or lists); anything
            else (a dataset, a generator, a dict without ``values`` ``[B, T, D]``)
            is returned unchanged.

    Returns:
        A new dict, or ``inputs`` itself when nothing is shared.
    """
    if not isinstance(inputs, dict) or inputs.get("values") is None:
        return inputs
    values = inputs["values"]
    shape = tuple(values.shape) if hasattr(values, "shape") else np.shape(values)
    if len(shape) != 3 or shape[0] is None:
        return inputs
    broadcast = dict(inputs)
    for key in _SHARED:
        value = inputs.get(key)
        if value is None:
            continue
        if tf.is_tensor(value):
            if value.shape.rank == 1:
                broadcast[key] = tf.broadcast_to(value[None], [shape[0], tf.shape(value)[0]])
        elif np.ndim(value) == 1:
            value = np.asarray(value)
            broadcast[key] = np.broadcast_to(value[None], (shape[0], value.shape[0]))
    return broadcast


def _broadcast_validation(data):
    if isinstance(data, tuple) and data:
        return (broadcast_shared_times(data[0]), *data[1:])
    return broadcast_shared_times(data)


def _bind(method, self, args, kwargs):
    bound = inspect.signature(method).bind(self, *args, **kwargs)
    return bound.arguments


class IrregularSeriesTrainer:
    """Mixin of the irregular-series Keras models: shared times in ``fit``/``evaluate``/``predict``.

    Shared ``times`` ``[T]`` and ``query_times`` ``[Q]`` are broadcast to every
    series of ``values`` ``[B, T, D]`` before Keras splits the batch (see the
    module docstring). ``evaluate`` and validation report the training objective as
    ``loss`` (``call`` runs in training mode there). A loss given to ``compile`` is ADDED
    to the model's own objective as ``loss(y, prediction)``; it needs targets ``y``,
    and ``fit``/``evaluate`` without them raise a ``ValueError`` naming ``loss``.
    """

    def fit(self, *args, **kwargs):
        arguments = _bind(keras.Model.fit, self, args, kwargs)
        arguments.pop("self")
        extra = arguments.pop("kwargs", {})
        arguments["x"] = broadcast_shared_times(arguments.get("x"))
        if isinstance(arguments["x"], dict):
            self._check_targets(arguments.get("y"))
        if arguments.get("validation_data") is not None:
            arguments["validation_data"] = _broadcast_validation(arguments["validation_data"])
        return super().fit(**arguments, **extra)

    def evaluate(self, *args, **kwargs):
        arguments = _bind(keras.Model.evaluate, self, args, kwargs)
        arguments.pop("self")
        extra = arguments.pop("kwargs", {})
        arguments["x"] = broadcast_shared_times(arguments.get("x"))
        if isinstance(arguments["x"], dict):
            self._check_targets(arguments.get("y"))
        return super().evaluate(**arguments, **extra)

    def predict(self, *args, **kwargs):
        arguments = _bind(keras.Model.predict, self, args, kwargs)
        arguments.pop("self")
        arguments["x"] = broadcast_shared_times(arguments.get("x"))
        return super().predict(**arguments)

    def test_step(self, data):
        """Keras' test step with the training objective as its loss (``evaluate``, validation).

        ``call`` adds the model's objective only in training mode, so the step runs
        it in training mode (a posterior sample for a latent ODE; no weight update).
        """
        self._objective_in_test_step = True
        try:
            return super().test_step(data)
        finally:
            self._objective_in_test_step = False

    def __call__(self, *args, **kwargs):
        if getattr(self, "_objective_in_test_step", False):
            kwargs["training"] = True
        return super().__call__(*args, **kwargs)

    def _check_targets(self, y):
        """Raises the ``ValueError`` naming ``loss`` when a compiled loss has no targets ``y``."""
        if y is None and getattr(self, "loss", None) is not None:
            raise ValueError(
                f"loss={self.loss!r} was given to compile(), but fit/evaluate got no targets y. "
                f"{type(self).__name__} trains on its own objective without a loss= (compile(optimizer)); "
                "a compiled loss is added to it as loss(y, prediction) and needs y (e.g. fit(x, y))."
            )

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        self._check_targets(y)  # a dataset without targets (dicts are checked before Keras starts)
        return super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
