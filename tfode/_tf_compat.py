"""The private TensorFlow APIs tfode relies on, in one place (internal).

Each has no public equivalent in TensorFlow 2.18–2.22; ``tests/test_tf_compat.py``
fails loudly if a TensorFlow release moves or changes one of them.
"""

from __future__ import annotations

import tensorflow as tf

# Stops every gradient tape on the thread. The eager adjoint runs its forward loop
# (an already traced graph function) under it, so that outer tapes do not record
# the call and keep its intermediates alive: the adjoint's memory must not grow
# with the number of steps. Tapes that the vector field opens itself live inside
# that graph and are unaffected. There is no public API to pause only the outer tapes.
from tensorflow.python.eager.record import stop_recording

# XLA needs static shapes, so the loop picks its output-writing variant at trace
# time; TensorFlow has no public "am I inside jit_compile=True" query.
from tensorflow.python.ops import control_flow_util

__all__ = ["in_xla_context", "stop_recording"]


def in_xla_context():
    """Whether ops built now are compiled by XLA (``tf.function(jit_compile=True)``).

    Read at trace time: code that needs static shapes (XLA) picks its variant here.
    """
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())
