"""Recognition networks for irregularly sampled series: q(z0 | observations).

Both encoders read the series backwards in time (last observation first), as
in Chen et al. (2018), and map the final hidden state to the mean and
log-variance of ``z0``. ``z0`` is the latent state at ``t = 0``, so the last
step each encoder reads is a virtual, unobserved step at ``t = 0``: its gap
(first observation time) tells the encoder how far the series starts from the
origin (the ODE-RNN evolves its state back over it without a GRU update).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfode.config import DEFAULTS, as_config
from tfode.layers._vector_fields import TimeMLP
from tfode.models._irregular import next_observed_gaps
from tfode.models._recurrence import evolve_over_gaps, run_cell
from tfode.solvers import solver_config

__all__ = ["ODERNNEncoder", "RNNEncoder"]


def _encoder_inputs(times, values, mask):
    """Per-step features ``[values*mask, mask, gap]`` and the step mask.

    A virtual step at ``t = 0`` (nothing observed) is prepended so that the
    time from the origin to the first observation reaches the encoder.

    Args:
        times: ``[T]`` or ``[B, T]``; values, mask: ``[B, T, D]``.

    Returns:
        ``(features [B, T+1, 2D+1], steps [B, T+1] bool)``; ``gap`` is the time
        to the next observed point of the series (0 for the last); ``steps``
        marks the steps the recurrence reads (observed ones and the origin).
    """
    mask = tf.cast(mask, values.dtype)
    values = tf.where(mask > 0, values, tf.zeros_like(values))  # masked NaNs never reach the network
    times = tf.cast(times, values.dtype)
    if times.shape.rank == 1:
        times = tf.broadcast_to(times[None], tf.shape(values)[:2])
    batch = tf.shape(values)[0]
    times = tf.concat([tf.zeros([batch, 1], values.dtype), times], axis=1)
    values = tf.pad(values, [[0, 0], [1, 0], [0, 0]])
    mask = tf.pad(mask, [[0, 0], [1, 0], [0, 0]])
    steps = tf.concat([tf.ones([batch, 1], tf.bool), tf.reduce_any(mask[:, 1:] > 0, axis=-1)], axis=1)
    gaps = next_observed_gaps(times, steps)
    return tf.concat([values * mask, mask, gaps[..., None]], axis=-1), steps


def _feature_width(values_shape):
    dim = values_shape[-1]
    if dim is None:
        raise ValueError(f"values need a known feature size, got shape {values_shape}.")
    return 2 * int(dim) + 1


class _GaussianHead(keras.layers.Layer):
    """Hidden state -> (mean, log-variance) of ``z0``."""

    def __init__(self, latent_dim, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = latent_dim
        self.dense = keras.layers.Dense(2 * latent_dim)

    def build(self, input_shape):
        self.dense.build(input_shape)

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

    def build(self, times_shape, values_shape, mask_shape=None):
        self.rnn.build((None, None, _feature_width(values_shape)))
        self.head.build((None, self.units))

    def call(self, times, values, mask, solver=None):
        """``solver`` is accepted for a uniform encoder interface and unused (no ODE)."""
        features, steps = _encoder_inputs(times, values, mask)
        return self.head(self.rnn(features, mask=steps))

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim, "units": self.units}


class _ODEGRUCell(keras.layers.Layer):
    """ODE-RNN cell read backwards: evolve the hidden state by ``dh/dt = f(h)`` back over the gap, then a GRU update.

    Inputs per step: ``[values*mask, mask, gap]`` (``[B, 2D+1]``). Rows whose
    mask is all zero (the virtual origin step) keep the evolved state: no GRU
    update.
    """

    def __init__(self, units, field_hidden, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.output_size = units
        self.field = TimeMLP(field_hidden, time_embedding="none")
        self.gru = keras.layers.GRUCell(units)

    def build(self, input_shape):
        self.field.build((), (None, self.units))
        self.gru.build((None, input_shape[-1] - 1))

    def call(self, inputs, states, solver):
        (h,) = states
        gap = inputs[:, -1:]
        observation = inputs[:, :-1]
        dim = (inputs.shape[-1] - 1) // 2
        observed = tf.reduce_any(observation[:, dim:] > 0, axis=-1, keepdims=True)
        # Read backwards: h moves from the later observation back by `gap`.
        h = evolve_over_gaps(self.field, h, -gap, solver)
        updated, _ = self.gru(observation, [h])
        h = tf.where(observed, updated, h)
        return h, [h]


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
        solver: a ``tfode.SolverConfig`` for the solves between observations
            (default ``tfode.config.DEFAULTS["encoder"]``; fixed-step methods take 4
            equal steps per gap unless the config has a controller; never the adjoint).
        method, rtol, atol: conveniences replacing fields of ``solver``.

    Call:
        ``encoder(times, values, mask, solver=None)`` → ``(mean, log_var)``, each
        ``[B, latent_dim]``; ``solver`` replaces the encoder's config for this call.
    """

    def __init__(self, latent_dim, units=25, field_hidden=(25,), *, solver=None, method=None, rtol=None, atol=None,
                 **kwargs):  # fmt: skip
        super().__init__(**kwargs)
        self.latent_dim, self.units = int(latent_dim), int(units)
        self.field_hidden = tuple(field_hidden)
        base = DEFAULTS["encoder"] if solver is None else as_config(solver)
        self.solver = solver_config(base, method=method, rtol=rtol, atol=atol)
        self.cell = _ODEGRUCell(self.units, self.field_hidden)
        self.head = _GaussianHead(self.latent_dim)

    def build(self, times_shape, values_shape, mask_shape=None):
        self.cell.build((None, _feature_width(values_shape)))
        self.head.build((None, self.units))

    def call(self, times, values, mask, solver=None):
        features, steps = _encoder_inputs(times, values, mask)
        h0 = tf.zeros(tf.stack([tf.shape(features)[0], self.units]), features.dtype)
        config = self.solver if solver is None else as_config(solver)
        _, (h,) = run_cell(self.cell, features, [h0], mask=steps, reverse=True, solver=config)
        return self.head(h)

    def get_config(self):
        return {
            **super().get_config(),
            "latent_dim": self.latent_dim,
            "units": self.units,
            "field_hidden": list(self.field_hidden),
            "solver": self.solver.get_config(),
        }
