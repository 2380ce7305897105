"""A Keras metric that reports the current value of a variable (e.g. an NFE count)."""

from __future__ import annotations

import keras

__all__ = ["VariableValue", "replica_counter"]


class VariableValue(keras.metrics.Metric):
    """Reports the current value of a scalar variable owned by a layer.

    ``ODELayer`` writes the cost of its last solve into non-trainable weights
    (reachable from the model, so SavedModel export works); these metrics
    surface them as ``nfe_forward``/``nfe_backward`` in the ``fit`` progress
    bar, ``History`` and TensorBoard: the last solve's cost, not an epoch mean.

    Args:
        variable: a scalar Keras/TF variable.
        name: the metric's name in logs.
    """

    def __init__(self, variable, name):
        super().__init__(name=name)
        self._source = variable

    def update_state(self, *args, **kwargs):
        """No-op: the owning layer assigns the variable."""

    def result(self):
        return keras.ops.convert_to_tensor(self._source)

    def reset_state(self):
        """No-op: the last solve's cost stays meaningful across epochs."""


def replica_counter(name):
    """A scalar float32 counter (e.g. the NFE of the last solve) that replicas write independently.

    Synchronized on read with ``aggregation="mean"``, like Keras' own metric
    variables: under ``tf.distribute`` each replica assigns its own copy and a
    read outside replica context (logs, metrics) gives the mean over replicas.
    An on-write variable would not do: its assignment in replica context is a
    ``merge_call`` that lets another replica's call run in between, and Keras
    keeps ``add_loss`` terms in one list per layer, so the replicas' losses mix.
    Create it inside the owning layer's ``__init__``/``build`` so it is tracked.
    """
    return keras.Variable(0.0, shape=(), dtype="float32", trainable=False, name=name, aggregation="mean",
                          synchronization="on_read")  # fmt: skip
