"""Whether the graph being built is compiled by XLA (internal)."""

from __future__ import annotations

import tensorflow as tf
from tensorflow.python.ops import control_flow_util

__all__ = ["in_xla_context"]


def in_xla_context():
    """Whether ops built now are compiled by XLA (``tf.function(jit_compile=True)``).

    Read at trace time: code that needs static shapes (XLA) picks its variant here.
    """
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())
