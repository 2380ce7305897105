"""Keras layers: ``ODELayer`` and vector-field building blocks."""

from tfode.layers._metrics import VariableValue
from tfode.layers._ode_layer import ODELayer, configure_solver
from tfode.layers._vector_fields import TimeConv2D, TimeMLP

__all__ = ["ODELayer", "TimeConv2D", "TimeMLP", "VariableValue", "configure_solver"]
