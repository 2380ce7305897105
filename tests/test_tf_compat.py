"""The private TensorFlow APIs in ``tfode/_tf_compat.py`` still behave as tfode needs."""

import tensorflow as tf

from tfode._tf_compat import in_xla_context, stop_recording


def test_in_xla_context_tells_jit_compile_apart():
    seen = {}

    def probe(key):
        seen[key] = in_xla_context()
        return tf.constant(0.0)

    tf.function(lambda: probe("xla"), jit_compile=True)()
    tf.function(lambda: probe("graph"), jit_compile=False)()
    probe("eager")
    assert seen == {"xla": True, "graph": False, "eager": False}


def test_stop_recording_hides_ops_from_outer_tapes_but_not_from_traced_inner_tapes():
    x = tf.constant(3.0)

    @tf.function
    def inner_gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = x**2
        return y, tape.gradient(y, x)

    concrete = inner_gradient.get_concrete_function(tf.TensorSpec([], tf.float32))
    with tf.GradientTape() as outer:
        outer.watch(x)
        with stop_recording():
            y, dy = concrete(x)
    assert outer.gradient(y, x) is None
    assert float(dy) == 6.0
