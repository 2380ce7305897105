"""Keras 3 weights made visible to ``tf.Module`` variable collection.

``tf.Module.variables``/``trainable_variables`` (and so TFP's bijectors and
distributions) collect the ``tf.Variable``s found in an object's attributes. A
Keras 3 layer is no ``tf.Module`` and its weights are ``keras.Variable``s, whose
TensorFlow storage is ``keras_variable.value`` (a ``tf.Variable``): a bijector
holding a Keras vector field would otherwise report no variables at all.
"""

from __future__ import annotations

import keras
import tensorflow as tf

__all__ = ["KerasVariables"]


class KerasVariables:
    """A ``tf.nest`` structure whose leaves are a Keras object's current ``tf.Variable``s.

    Held as an attribute of a ``tf.Module``, it puts the ``.value`` of every weight
    of ``obj`` into the module's ``variables`` (and, by each ``tf.Variable``'s own
    ``trainable`` flag, ``trainable_variables``). The weights are read when the
    module's variables are collected, so weights created by a later ``build`` (a
    Keras layer builds at its first call) appear too. Any other ``obj`` (a plain
    function; a ``tf.Module``, which TF collects by itself) contributes nothing.

    A ``tf.Variable``'s ``trainable`` is fixed at creation: weights of a layer frozen
    afterwards by ``layer.trainable = False`` still count as trainable here; train
    on ``layer.trainable_weights`` then.

    Args:
        obj: the object whose weights to expose, e.g. a ``keras.layers.Layer``.
    """

    def __init__(self, obj):
        self._obj = obj

    def _leaves(self):
        if not isinstance(self._obj, keras.layers.Layer):
            return ()
        leaves = (getattr(weight, "value", None) for weight in self._obj.weights)
        return tuple(leaf for leaf in leaves if isinstance(leaf, tf.Variable))

    def __tf_flatten__(self):
        return None, self._leaves()

    @classmethod
    def __tf_unflatten__(cls, metadata, leaves):
        return tuple(leaves)
