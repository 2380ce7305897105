"""Small Keras helpers shared by tfode's layers and models."""

from __future__ import annotations

import keras

__all__ = ["from_config_with_nested", "walk_layers"]


def from_config_with_nested(cls, config, *keys):
    """``cls(**config)`` after deserialising the nested Keras objects under ``keys``."""
    config = dict(config)
    for key in keys:
        config[key] = keras.saving.deserialize_keras_object(config[key])
    return cls(**config)


def walk_layers(root):
    """``root`` and every Keras layer reachable through its attributes, depth first, each once.

    Uses only public Python introspection (``vars``), following lists, tuples and
    dicts of layers, so layers nested in custom layers are found too.
    """
    seen, order, stack = set(), [], [root]
    while stack:
        item = stack.pop()
        if isinstance(item, keras.layers.Layer):
            if id(item) in seen:
                continue
            seen.add(id(item))
            order.append(item)
            children = list(vars(item).values())
            if isinstance(item, keras.Model):
                children.extend(item.layers)
            stack.extend(reversed(children))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed(item))
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
    return order
