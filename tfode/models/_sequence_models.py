"""Sequence models for irregular series: ``ODERNN`` (Rubanova et al. 2019) and ``GRUBaseline``.

Both read a series forwards in time and predict the observation mean at any
query time from the observations *strictly before* it. They share one
recurrence, run by ``run_cell`` (which hands the cell a per-call ``SolverConfig``)
over a cell that carries

* ``h``: the hidden state right after the last observed step, at time ``t_last``;
* ``h_before``: the hidden state after the last observation strictly before
  ``t_last``, at time ``t_before`` (so observations repeated at one time never
  see each other's values when predicted).

Per step ``k`` (time ``t_k``, features ``[values*mask, mask]``), with
``(h_ref, t_ref) = (h_before, t_before)`` if ``t_k == t_last`` else ``(h, t_last)``:

* the prediction state is ``advance(h_ref, t_k - t_ref)``: the state at ``t_k``
  evolved from the last observation strictly before ``t_k``;
* if any feature is observed at ``k``, the state is updated by a Keras
  ``GRUCell`` and ``t_last = t_k``; otherwise nothing is carried forward.

Query times are merged into each series as all-masked steps, so a query only
reads the state and the output at a query never depends on the other queries,
on padding, or on observations at or after its own time.

Batch format: see ``tfode.models._irregular`` (``times`` ``[T]`` or ``[B, T]``,
``values`` ``[B, T, D]``, optional ``mask``; the state starts at ``h = 0``,
``t = 0``).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfode.config import DEFAULTS, as_config
from tfode.layers._vector_fields import TimeMLP
from tfode.models._irregular import unpack_inputs
from tfode.models._keras_inputs import IrregularSeriesTrainer
from tfode.models._latent_ode import masked_gaussian_log_likelihood
from tfode.models._recurrence import evolve_over_gaps, run_cell
from tfode.solvers import solver_config

__all__ = ["GRUBaseline", "ODERNN"]


# ---------------------------------------------------------------------------
# Recurrent cells
# ---------------------------------------------------------------------------


class _ForwardCell(keras.layers.Layer):
    """Bookkeeping shared by both cells (see the module docstring).

    Step input: ``[values*mask (D), mask (D), t (1)]``. State:
    ``[h [units], t_last [1], h_before [units], t_before [1]]``. Output: the
    prediction state at ``t`` ``[units]``. Subclasses define ``_advance`` and
    ``_observe``.
    """

    def __init__(self, units, obs_dim, **kwargs):
        super().__init__(**kwargs)
        self.units, self.obs_dim = units, obs_dim
        self.state_size = [units, 1, units, 1]
        self.output_size = units

    def _advance(self, h, gap, solver):
        """State ``[B, units]`` after ``gap`` ``[B, 1]`` with no observation."""
        raise NotImplementedError

    def _observe(self, h, gap, advanced, features):
        """GRU update at an observation: ``h`` at ``t_last``, ``advanced = _advance(h, gap)``."""
        raise NotImplementedError

    def call(self, inputs, states, solver=None):
        h, t_last, h_before, t_before = states
        d = self.obs_dim
        features, t = inputs[:, : 2 * d], inputs[:, 2 * d :]
        observed = tf.reduce_any(inputs[:, d : 2 * d] > 0, axis=-1, keepdims=True)
        tie = t <= t_last  # times are non-decreasing: t == t_last
        h_ref, t_ref = tf.where(tie, h_before, h), tf.where(tie, t_before, t_last)
        prediction = self._advance(h_ref, t - t_ref, solver)
        # The state at t before the update: `prediction` unless tied, when it is h itself.
        updated = self._observe(h, t - t_last, tf.where(tie, h, prediction), features)
        moves_before = observed & ~tie
        new_states = [
            tf.where(observed, updated, h),
            tf.where(observed, t, t_last),
            tf.where(moves_before, h, h_before),
            tf.where(moves_before, t_last, t_before),
        ]
        return prediction, new_states

    def get_config(self):
        return {**super().get_config(), "units": self.units, "obs_dim": self.obs_dim}


class _ODEForwardCell(_ForwardCell):
    """ODE-RNN step: ``dh/dt = f(h)`` between observations, a ``GRUCell`` reading ``[values*mask, mask]``."""

    def __init__(self, units, obs_dim, field_hidden, **kwargs):
        super().__init__(units, obs_dim, **kwargs)
        self.field = TimeMLP(field_hidden, time_embedding="none")
        self.gru = keras.layers.GRUCell(units)

    def build(self, input_shape):
        self.field.build((), (None, self.units))
        self.gru.build((None, 2 * self.obs_dim))

    def _advance(self, h, gap, solver):
        return evolve_over_gaps(self.field, h, gap, solver)

    def _observe(self, h, gap, advanced, features):
        return self.gru(features, [advanced])[0]


class _GRUForwardCell(_ForwardCell):
    """RNN-ΔT step: a ``GRUCell`` reading ``[values*mask, mask, Δt]``; a prediction reads ``[0, 0, Δt]``."""

    def __init__(self, units, obs_dim, **kwargs):
        super().__init__(units, obs_dim, **kwargs)
        self.gru = keras.layers.GRUCell(units)

    def build(self, input_shape):
        self.gru.build((None, 2 * self.obs_dim + 1))

    def _advance(self, h, gap, solver):
        empty = tf.zeros(tf.concat([tf.shape(h)[:1], [2 * self.obs_dim]], axis=0), h.dtype)
        return self.gru(tf.concat([empty, gap], axis=-1), [h])[0]

    def _observe(self, h, gap, advanced, features):
        return self.gru(tf.concat([features, gap], axis=-1), [h])[0]


# ---------------------------------------------------------------------------
# Inputs: validation and merging query times into the observation sequence
# ---------------------------------------------------------------------------


def _unpack(inputs, obs_dim):
    """``(times [B, T], values [B, T, D], mask [B, T, D], query [B, Q] or None)``, validated."""
    times, values, mask, query = unpack_inputs(inputs, obs_dim)
    if times.shape.rank == 1:
        times = tf.broadcast_to(times[None], tf.shape(values)[:2])
    if query is not None and query.shape.rank == 1:
        query = tf.broadcast_to(query[None], tf.concat([tf.shape(values)[:1], tf.shape(query)], axis=0))
    return times, values, mask, query


def _step_inputs(times, values, mask):
    """``[values*mask, mask, t]`` per step, ``[B, T, 2D+1]``; masked NaNs never reach the network."""
    values = tf.where(mask > 0, values, tf.zeros_like(values))
    return tf.concat([values * mask, mask, times[..., None]], axis=-1)


def _merge_queries(times, steps, query):
    """Insert all-masked query steps into each series, sorted by time.

    Queries are placed before the observations at the same time (a stable sort
    of ``[queries, observations]``); the cell's tie rule makes that order
    irrelevant to the outputs anyway.

    Args:
        times: ``[B, T]``; steps: ``[B, T, 2D+1]`` from ``_step_inputs``; query: ``[B, Q]``.

    Returns:
        ``(merged [B, Q+T, 2D+1], position [B, Q+T])``: ``position[:, j]`` is the
        merged row of query ``j`` (``j < Q``) or of observation ``j - Q``.
    """
    width = tf.shape(steps)[-1]
    empty = tf.zeros(tf.concat([tf.shape(query), [width - 1]], axis=0), steps.dtype)
    query_steps = tf.concat([empty, query[..., None]], axis=-1)
    order = tf.argsort(tf.concat([query, times], axis=1), axis=1, stable=True)
    merged = tf.gather(tf.concat([query_steps, steps], axis=1), order, batch_dims=1)
    return merged, tf.argsort(order, axis=1)  # the inverse permutation, per series


def _mlp_decoder(hidden, obs_dim):
    return keras.Sequential([keras.layers.Dense(h, activation="relu") for h in hidden] + [keras.layers.Dense(obs_dim)])


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


class _ForwardSequenceModel(IrregularSeriesTrainer, keras.Model):
    """Shared ``call``/loss/config of the forward sequence models (not public)."""

    def __init__(self, obs_dim, *, units, decoder_hidden, obs_std, **kwargs):
        super().__init__(**kwargs)
        _check_positive_int("obs_dim", obs_dim)
        _check_positive_int("units", units)
        decoder_hidden = tuple(decoder_hidden)
        for h in decoder_hidden:
            _check_positive_int("decoder_hidden entries", h)
        if not (isinstance(obs_std, (int, float)) and obs_std > 0):
            raise ValueError(f"obs_std must be positive, got {obs_std!r}.")
        self.obs_dim, self.units = obs_dim, units
        self.decoder_hidden, self.obs_std = decoder_hidden, float(obs_std)
        self.cell = self._make_cell()
        self.decoder = _mlp_decoder(self.decoder_hidden, obs_dim)

    def _make_cell(self):
        raise NotImplementedError

    def _run(self, steps, solver):
        """Prediction states ``[B, T, units]`` of the recurrence over ``steps``."""
        batch = tf.shape(steps)[0]
        zeros_h = tf.zeros(tf.stack([batch, self.units]), steps.dtype)
        zeros_t = tf.zeros(tf.stack([batch, 1]), steps.dtype)
        states, _ = run_cell(self.cell, steps, [zeros_h, zeros_t, zeros_h, zeros_t], solver=solver)
        return states

    def build(self, input_shape):
        values = input_shape["values"] if isinstance(input_shape, dict) else None
        if values is not None and values[-1] is not None and values[-1] != self.obs_dim:
            raise ValueError(f"values must have obs_dim = {self.obs_dim} features, got shape {tuple(values)}.")
        self.cell.build((None, 2 * self.obs_dim + 1))
        self.decoder.build((None, None, self.units))

    def call(self, inputs, training=None, solver=None):
        """See the model's docstring; ``solver`` (a ``SolverConfig``) replaces the model's for this call."""
        solver = getattr(self, "solver", None) if solver is None else as_config(solver)
        times, values, mask, query = _unpack(inputs, self.obs_dim)
        steps = _step_inputs(times, values, mask)
        if query is None:
            observed = self.decoder(self._run(steps, solver))
            predicted = observed
        else:
            merged, position = _merge_queries(times, steps, query)
            states = self._run(merged, solver)
            num_query = tf.shape(query)[1]
            predicted = self.decoder(tf.gather(states, position[:, :num_query], batch_dims=1))
            if training:
                observed = self.decoder(tf.gather(states, position[:, num_query:], batch_dims=1))
        if training:
            self.add_loss(self.one_step_loss(values, observed, mask))
        return predicted

    def one_step_loss(self, values, predicted, mask):
        """Negative log-likelihood per observed entry: ``-Σ_observed log N(x; x̂, σ²) / Σ mask``.

        Args:
            values, predicted, mask: ``[B, T, D]``; ``predicted`` is the
                one-step-ahead mean (from observations strictly before each time).

        Returns:
            Scalar loss.
        """
        log_likelihood = tf.reduce_sum(masked_gaussian_log_likelihood(values, predicted, self.obs_std, mask))
        return -log_likelihood / tf.maximum(tf.reduce_sum(tf.cast(mask > 0, predicted.dtype)), 1.0)

    def compute_output_shape(self, input_shape):
        values = input_shape["values"]
        query = input_shape.get("query_times", input_shape["times"])
        return (values[0], query[-1], self.obs_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "obs_dim": self.obs_dim,
            "units": self.units,
            "decoder_hidden": list(self.decoder_hidden),
            "obs_std": self.obs_std,
        }


@keras.saving.register_keras_serializable(package="tfode")
class ODERNN(_ForwardSequenceModel):
    """ODE-RNN (Rubanova, Chen & Duvenaud 2019) as a standalone sequence model.

    The hidden state starts at ``h(0) = 0``. Between steps it follows
    ``dh/dt = f(h)`` (an MLP, solved by tfode; ``dh/ds = Δt f(h)`` on
    ``s in [0, 1]`` so each series keeps its own gap); at a step where any
    feature is observed a Keras ``GRUCell`` updates it,
    ``h <- GRU([values*mask, mask], h)``; all-masked steps (padding, queries)
    do no update. The prediction at a query time ``t`` is ``decoder(h(t))``,
    ``h(t)`` evolved from the last observation strictly before ``t``.

    Inputs (a dict, like ``LatentODE``): ``times`` ``[T]`` or ``[B, T]``
        (``>= 0``, non-decreasing per series), ``values`` ``[B, T, D]``
        (``D = obs_dim``), optional ``mask`` ``[B, T, D]`` (0 = missing; the
        value is ignored, NaN allowed), optional ``query_times`` ``[Q]`` or
        ``[B, Q]`` (``>= 0``, any order; default ``times``). ``fit`` batches
        every entry along its first axis, so give it per-series ``[B, T]`` times.

    Returns:
        ``call`` returns the predicted observation mean ``[B, Q, D]`` at the
        query times, each from the observations strictly before it
        (interpolation between observations, extrapolation past the last).
        With ``training=True`` it adds the loss: the Gaussian negative
        log-likelihood (std ``obs_std``) of every observed entry under its
        one-step-ahead prediction, **averaged per observed entry** (sum over
        observed entries divided by their number in the batch); so
        ``model.compile(optimizer); model.fit(dict)`` needs no ``loss=``.

    Args:
        obs_dim: ``D``.
        units: hidden width.
        field_hidden: hidden widths of ``f`` (tanh MLP).
        decoder_hidden: hidden widths of the decoder MLP (relu).
        obs_std: observation noise std of the likelihood (``LatentODE``'s default).
        solver: the ``tfode.SolverConfig`` of the solves between steps (default
            ``tfode.config.DEFAULTS["encoder"]``: dopri5, rtol 1e-3, atol 1e-4, 256
            steps per gap; fixed-step methods such as ``"rk4"`` take 4 equal steps
            per gap unless the config has a controller; never the adjoint). ``call``
            takes ``solver=`` to replace it for one call.
        method, rtol, atol, max_num_steps: conveniences replacing fields of ``solver``.

    Example:
        >>> model = tfode.models.ODERNN(obs_dim=1, units=32)
        >>> model.compile(keras.optimizers.Adam(1e-2))
        >>> model.fit({"times": ts, "values": xs}, batch_size=50, epochs=...)
        >>> model({"times": ts, "values": xs, "query_times": future_ts})  # [B, Q, 1]

    References:
        Rubanova, Chen & Duvenaud, "Latent ODEs for Irregularly-Sampled Time
        Series", NeurIPS 2019 (Algorithm 1).
    """

    def __init__(
        self,
        obs_dim,
        units=32,
        *,
        field_hidden=(32,),
        decoder_hidden=(32,),
        obs_std=0.3,
        solver=None,
        method=None,
        rtol=None,
        atol=None,
        max_num_steps=None,
        **kwargs,
    ):
        self.field_hidden = tuple(field_hidden)
        base = DEFAULTS["encoder"] if solver is None else as_config(solver)
        self.solver = solver_config(base, method=method, rtol=rtol, atol=atol)
        if max_num_steps is not None:
            self.solver = self.solver.replace(max_num_steps=max_num_steps)
        super().__init__(obs_dim, units=units, decoder_hidden=decoder_hidden, obs_std=obs_std, **kwargs)

    def _make_cell(self):
        return _ODEForwardCell(self.units, self.obs_dim, self.field_hidden)

    def get_config(self):
        return {**super().get_config(), "field_hidden": list(self.field_hidden), "solver": self.solver.get_config()}


@keras.saving.register_keras_serializable(package="tfode")
class GRUBaseline(_ForwardSequenceModel):
    """RNN-ΔT baseline (Rubanova et al. 2019; the "RNN" of Chen et al. 2018): no ODE.

    A Keras ``GRUCell`` reads ``[values*mask, mask, Δt]`` at each observed step,
    ``Δt`` the time since the previous observation (or since ``t = 0``); the
    state ``h(0) = 0`` is otherwise held. The prediction at a query time ``t``
    is ``decoder(GRU([0, 0, t - t_prev], h_prev))`` with ``h_prev`` the state
    after the last observation strictly before ``t`` (at ``t_prev``): the only
    way the state sees elapsed time, and the GRU output at all-masked steps
    is never carried forward.

    Inputs (a dict, like ``LatentODE``): ``times`` ``[T]`` or ``[B, T]``
        (``>= 0``, non-decreasing per series), ``values`` ``[B, T, D]``
        (``D = obs_dim``), optional ``mask`` ``[B, T, D]`` (0 = missing; the
        value is ignored, NaN allowed), optional ``query_times`` ``[Q]`` or
        ``[B, Q]`` (``>= 0``, any order; default ``times``). ``fit`` batches
        every entry along its first axis, so give it per-series ``[B, T]`` times.

    Returns:
        ``call`` returns the predicted observation mean ``[B, Q, D]`` at the
        query times, each from the observations strictly before it
        (interpolation between observations, extrapolation past the last).
        With ``training=True`` it adds the loss: the Gaussian negative
        log-likelihood (std ``obs_std``) of every observed entry under its
        one-step-ahead prediction, **averaged per observed entry** (sum over
        observed entries divided by their number in the batch); so
        ``model.compile(optimizer); model.fit(dict)`` needs no ``loss=``.

    Args:
        obs_dim: ``D``.
        units: GRU width.
        decoder_hidden: hidden widths of the decoder MLP (relu).
        obs_std: observation noise std of the likelihood (``LatentODE``'s default).

    Example:
        >>> model = tfode.models.GRUBaseline(obs_dim=2, units=32)
        >>> model.compile(keras.optimizers.Adam(1e-2))
        >>> model.fit({"times": ts, "values": xs}, batch_size=50, epochs=...)
        >>> model({"times": ts, "values": xs, "query_times": future_ts})  # [B, Q, 2]

    References:
        Rubanova, Chen & Duvenaud, "Latent ODEs for Irregularly-Sampled Time
        Series", NeurIPS 2019 (baseline "RNN-ΔT").
    """

    def __init__(self, obs_dim, units=32, *, decoder_hidden=(32,), obs_std=0.3, **kwargs):
        super().__init__(obs_dim, units=units, decoder_hidden=decoder_hidden, obs_std=obs_std, **kwargs)

    def _make_cell(self):
        return _GRUForwardCell(self.units, self.obs_dim)
