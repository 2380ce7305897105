"""Recognition networks for irregularly sampled series: q(z0 | observations).

Both encoders read the series backwards in time (last observation first), as
in Chen et al. (2018), so the final hidden state summarises the whole series
at its first time, and map it to the mean and log-variance of ``z0``.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfode.layers._vector_fields import TimeMLP
from tfode.models._irregular import next_observed_gaps
from tfode.solvers import solve

__all__ = ["ODERNNEncoder", "RNNEncoder"]


def _encoder_inputs(times, values, mask):
    """Per-step features ``[values*mask, mask, gap]`` and the step mask.

    Args:
        times: ``[T]`` or ``[B, T]``; values, mask: ``[B, T, D]``.

    Returns:
        ``(features [B, T, 2D+1], step_observed [B, T] bool)``; ``gap`` is the
        time to the next observed point of the series (0 for the last).
    """
    values = tf.where(mask > 0, values, tf.zeros_like(values))  # masked NaNs never reach the network
    times = tf.cast(times, values.dtype)
    if times.shape.rank == 1:
        times = tf.broadcast_to(times[None], tf.shape(values)[:2])
    step_observed = tf.reduce_any(mask > 0, axis=-1)
    gaps = next_observed_gaps(times, step_observed)
    return tf.concat([values * mask, mask, gaps[..., None]], axis=-1), step_observed


class _GaussianHead(keras.layers.Layer):
    """Hidden state -> (mean, log-variance) of ``z0``."""

    def __init__(self, latent_dim, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = latent_dim
        self.dense = keras.layers.Dense(2 * latent_dim)

    def call(self, h):
        out = self.dense(h)
        return out[:, : self.latent_dim], out[:, self.latent_dim :]


@keras.saving.register_keras_serializable(package="tfode")
class RNNEncoder(keras.layers.Layer):
    """A Keras GRU run backwards over observations and time gaps (Chen et al. 2018).

    Args:
        latent_dim: size of ``z0``.
        units: GRU width (paper: 25).

    Call:
        ``encoder(times, values, mask)`` with the batch format of
        ``tfode.models`` → ``(mean, log_var)``, each ``[B, latent_dim]``.
    """

    def __init__(self, latent_dim, units=25, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim, self.units = int(latent_dim), int(units)
        self.rnn = keras.layers.RNN(keras.layers.GRUCell(self.units), go_backwards=True)
        self.head = _GaussianHead(self.latent_dim)

    def call(self, times, values, mask):
        features, step_observed = _encoder_inputs(times, values, mask)
        return self.head(self.rnn(features, mask=step_observed))

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim, "units": self.units}


class _ODEGRUCell(keras.layers.Layer):
    """ODE-RNN cell: evolve the hidden state by ``dh/dt = f(h)`` over the gap, then a GRU update."""

    def __init__(self, units, field_hidden, method, rtol, atol, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.state_size = units
        self.output_size = units
        self.field = TimeMLP(field_hidden, time_embedding="none")
        self.gru = keras.layers.GRUCell(units)
        self.solver = dict(method=method, rtol=rtol, atol=atol)

    def build(self, input_shape):
        self.field.build((), (None, self.units))
        self.gru.build((None, input_shape[-1] - 1))

    def call(self, inputs, states):
        h = states[0] if isinstance(states, (list, tuple)) else states
        gap = inputs[:, -1:]
        observation = inputs[:, :-1]

        # Read backwards: h moves from the later observation back by `gap`;
        # with s in [0, 1], dh/ds = -gap * f(h) covers every series' own gap.
        def dynamics(s, h):
            return -gap * self.field(s, h)

        unit = tf.constant([0.0, 1.0], dtype=tf.float64 if h.dtype == tf.float64 else tf.float32)
        h = solve(dynamics, h, unit, options={"max_num_steps": 256}, **self.solver).ys[-1]
        out, new_states = self.gru(observation, [h])
        return out, new_states


@keras.saving.register_keras_serializable(package="tfode")
class ODERNNEncoder(keras.layers.Layer):
    """ODE-RNN (Rubanova, Chen & Duvenaud 2019) run backwards in time.

    Between observations the hidden state follows ``dh/dt = f(h)`` (an MLP,
    solved with tfode); at each observation a Keras ``GRUCell`` updates it with
    ``[values * mask, mask]``. Steps with nothing observed are skipped (their
    time is carried by the next observed gap).

    Args:
        latent_dim: size of ``z0``.
        units: hidden width.
        field_hidden: hidden widths of ``f``.
        method, rtol, atol: solver between observations.
    """

    def __init__(self, latent_dim, units=25, field_hidden=(25,), method="dopri5", rtol=1e-3, atol=1e-4, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim, self.units = int(latent_dim), int(units)
        self.field_hidden = tuple(field_hidden)
        self.method, self.rtol, self.atol = method, float(rtol), float(atol)
        cell = _ODEGRUCell(self.units, self.field_hidden, method, self.rtol, self.atol)
        self.rnn = keras.layers.RNN(cell, go_backwards=True)
        self.head = _GaussianHead(self.latent_dim)

    def call(self, times, values, mask):
        features, step_observed = _encoder_inputs(times, values, mask)
        return self.head(self.rnn(features, mask=step_observed))

    def get_config(self):
        return {
            **super().get_config(),
            "latent_dim": self.latent_dim,
            "units": self.units,
            "field_hidden": list(self.field_hidden),
            "method": self.method,
            "rtol": self.rtol,
            "atol": self.atol,
        }
