"""Small Keras helpers shared by tfode's layers and models."""

from __future__ import annotations

import keras

__all__ = ["from_config_with_nested"]


def from_config_with_nested(cls, config, *keys):
    """``cls(**config)`` after deserialising the nested Keras objects under ``keys``."""
    config = dict(config)
    for key in keys:
        config[key] = keras.saving.deserialize_keras_object(config[key])
    return cls(**config)
