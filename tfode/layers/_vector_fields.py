"""Vector-field layers: Keras layers computing ``dy/dt = f(t, y)``.

Every vector field here follows one convention: ``call(t, y)`` with ``y``
``[batch, ...]`` and ``t`` a scalar tensor or one time per sample (aligned with
``y``'s leading axes, e.g. ``[batch]``), returning a tensor shaped like ``y``,
and ``build(t_shape, y_shape)``.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

__all__ = ["TimeConv2D", "TimeMLP"]


def _rank(x):
    """Rank of a tensor or KerasTensor (``None`` if unknown)."""
    shape = x.shape
    return shape.rank if hasattr(shape, "rank") else len(shape)


def _time_column(t, like):
    """``t`` broadcast to ``like``'s shape ``[..., C]`` with a last axis of size 1: ``[..., 1]``.

    ``t`` is a scalar, or one time per sample: a tensor aligned with ``like``'s
    LEADING axes and broadcastable there, e.g. ``[B]`` for ``like`` ``[B, ..., C]``
    (one time per row along the first axis), ``[B, N]`` for ``[B, N, C]``.

    Raises:
        ValueError: ``t`` has an unknown rank, more axes than ``like``'s batch shape,
            or a shape that does not broadcast against it.
    """
    t = ops.cast(t, like.dtype)
    ones = ops.ones_like(like[..., :1])  # works for an unknown rank of `like`
    t_rank, rank = _rank(t), _rank(like)
    if t_rank == 0:
        return ones * t
    if t_rank is None or rank is None or t_rank > rank - 1:
        raise ValueError(
            f"t must be a scalar or one time per sample, a tensor aligned with the leading axes of y's batch shape "
            f"(e.g. [batch] for y [batch, ..., dim]); got t of shape {t.shape} for y of shape {like.shape}."
        )
    batch = like.shape[:t_rank]
    if not all(a is None or b is None or a in (1, b) for a, b in zip(t.shape, batch)):
        raise ValueError(
            f"t of shape {t.shape} does not broadcast against y's leading batch axes {batch} "
            f"(y of shape {like.shape}); pass a scalar or one time per sample."
        )
    for _ in range(rank - t_rank):
        t = ops.expand_dims(t, -1)
    return ones * t


def _check_units(name, values):
    values = tuple(values)
    if not values or any((not isinstance(h, int)) or h < 1 for h in values):
        raise ValueError(f"{name} must be a non-empty tuple of positive ints, got {values!r}.")
    return values


@keras.saving.register_keras_serializable(package="tfode")
class TimeMLP(keras.layers.Layer):
    """A time-conditioned MLP vector field acting on the last axis.

    ``time_embedding="concat"``: every hidden layer sees ``[h, t]``,
    ``h' = act(W [h, t] + b)``. ``"concatsquash"`` (FFJORD):
    ``h' = act((W h + b) * sigmoid(W_g t + b_g) + W_b t)``. The output layer is
    linear and has the input's width, so ``f(t, y)`` has ``y``'s shape.

    Args:
        hidden: widths of the hidden layers, e.g. ``(64, 64)``.
        activation: Keras activation of the hidden layers (default ``"tanh"``;
            smooth activations keep the ODE non-stiff).
        time_embedding: ``"none"``, ``"concat"`` or ``"concatsquash"``.
        kernel_initializer: initializer of the weight matrices.
        zero_init_output: start with a zero output layer, so the flow starts as
            the identity (stable and cheap at initialisation).

    Input shapes: ``y`` ``[batch, ..., dim]`` (any rank >= 1, also unknown), ``t`` a scalar
    or one time per sample: a tensor aligned with ``y``'s LEADING axes and broadcastable
    against them, e.g. ``[batch]`` (one time per row along ``y``'s first axis) or
    ``[batch, ...]`` (``y``'s batch shape). Output: ``y``'s shape.

    Example:
        >>> field = tfode.layers.TimeMLP(hidden=(64, 64))
        >>> layer = tfode.ODELayer(field, t1=1.0)
    """

    def __init__(
        self,
        hidden=(64, 64),
        activation="tanh",
        time_embedding="concat",
        kernel_initializer="glorot_uniform",
        zero_init_output=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden = _check_units("hidden", hidden)
        if time_embedding not in ("none", "concat", "concatsquash"):
            raise ValueError(f"time_embedding must be 'none', 'concat' or 'concatsquash', got {time_embedding!r}.")
        self.activation = keras.activations.get(activation)
        self.time_embedding = time_embedding
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.zero_init_output = bool(zero_init_output)

    def build(self, t_shape, y_shape):
        dim = y_shape[-1]
        if dim is None:
            raise ValueError(f"TimeMLP needs a known last dimension of y, got shape {y_shape}.")
        widths = (dim, *self.hidden, dim)
        self._kernels, self._biases, self._gates, self._gate_biases, self._time_kernels = [], [], [], [], []
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            last = i == len(widths) - 2
            concat = self.time_embedding == "concat"
            init = "zeros" if (last and self.zero_init_output) else self.kernel_initializer
            self._kernels.append(
                self.add_weight(shape=(fan_in + (1 if concat else 0), fan_out), initializer=init, name=f"kernel_{i}")
            )
            self._biases.append(self.add_weight(shape=(fan_out,), initializer="zeros", name=f"bias_{i}"))
            if self.time_embedding == "concatsquash":
                self._gates.append(self.add_weight(shape=(1, fan_out), initializer=self.kernel_initializer,
                                                   name=f"gate_{i}"))  # fmt: skip
                self._gate_biases.append(self.add_weight(shape=(fan_out,), initializer="zeros", name=f"gate_bias_{i}"))
                self._time_kernels.append(self.add_weight(shape=(1, fan_out), initializer=init, name=f"time_{i}"))

    def call(self, t, y):
        if _rank(y) is None:
            # Keras' matmul needs a known rank: act on the rows [N, dim] and restore y's shape.
            flat = self.call(t, tf.reshape(y, [-1, self._kernels[-1].shape[-1]]))
            return tf.reshape(flat, tf.shape(y))
        h = y
        t_col = None if self.time_embedding == "none" else _time_column(t, y)
        num_layers = len(self._kernels)
        for i in range(num_layers):
            if self.time_embedding == "none":
                h = ops.matmul(h, self._kernels[i]) + self._biases[i]
            elif self.time_embedding == "concat":
                h = ops.matmul(ops.concatenate([h, t_col], axis=-1), self._kernels[i]) + self._biases[i]
            else:
                gate = ops.sigmoid(ops.matmul(t_col, self._gates[i]) + self._gate_biases[i])
                h = (ops.matmul(h, self._kernels[i]) + self._biases[i]) * gate + ops.matmul(
                    t_col, self._time_kernels[i]
                )
            if i < num_layers - 1:
                h = self.activation(h)
        return h

    def compute_output_shape(self, t_shape, y_shape):
        return y_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden=list(self.hidden),
            activation=keras.activations.serialize(self.activation),
            time_embedding=self.time_embedding,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            zero_init_output=self.zero_init_output,
        )
        return config


@keras.saving.register_keras_serializable(package="tfode")
class TimeConv2D(keras.layers.Layer):
    """A time-conditioned convolutional vector field for image ODE-Nets.

    Each convolution sees the time as an extra constant channel (the paper's
    "ConcatConv2d"): ``norm -> act -> conv([h, t]) -> ... -> conv([h, t])``,
    the last convolution returning the input's channel count, "same" padding.

    Args:
        filters: hidden channel counts, e.g. ``(64,)``; the output has the input's channels.
        kernel_size: convolution kernel size.
        activation: Keras activation (default ``"relu"``).
        groups: if set, GroupNormalization with this many groups before each
            activation (the paper's ODE-Net uses 32 groups); must divide the channels.

    Input shapes: ``t`` scalar or ``[batch]`` (one time per image), ``y``
    ``[batch, height, width, channels]``. Output: ``y``'s shape.
    """

    def __init__(self, filters=(64,), kernel_size=3, activation="relu", groups=None, **kwargs):
        super().__init__(**kwargs)
        self.filters = _check_units("filters", filters)
        if not isinstance(kernel_size, int) or kernel_size < 1:
            raise ValueError(f"kernel_size must be a positive int, got {kernel_size!r}.")
        self.kernel_size = kernel_size
        self.activation = keras.activations.get(activation)
        self.groups = groups

    def build(self, t_shape, y_shape):
        if len(y_shape) != 4 or y_shape[-1] is None:
            raise ValueError(f"TimeConv2D needs y of shape [batch, height, width, channels], got {y_shape}.")
        channels = y_shape[-1]
        widths = (*self.filters, channels)
        self._convs, self._norms = [], []
        in_channels = channels
        for i, out in enumerate(widths):
            conv = keras.layers.Conv2D(out, self.kernel_size, padding="same", name=f"conv_{i}")
            conv.build((None, None, None, in_channels + 1))
            self._convs.append(conv)
            if self.groups:
                norm = keras.layers.GroupNormalization(groups=self.groups, name=f"norm_{i}")
                norm.build((None, None, None, in_channels))
                self._norms.append(norm)
            in_channels = out

    def call(self, t, y):
        h = y
        for i, conv in enumerate(self._convs):
            if self._norms:
                h = self._norms[i](h)
            h = self.activation(h)
            h = conv(ops.concatenate([h, _time_column(t, h)], axis=-1))
        return h

    def compute_output_shape(self, t_shape, y_shape):
        return y_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=list(self.filters),
            kernel_size=self.kernel_size,
            activation=keras.activations.serialize(self.activation),
            groups=self.groups,
        )
        return config
