"""A Keras metric that reports the current value of a variable (e.g. an NFE count)."""

from __future__ import annotations

import keras

__all__ = ["VariableValue"]


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
