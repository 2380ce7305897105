"""``LatentODE``: the latent-ODE variational autoencoder for irregular time series."""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from tfode._overrides import current_tolerances
from tfode.layers._vector_fields import TimeMLP
from tfode.models._encoders import ODERNNEncoder, RNNEncoder
from tfode.models._irregular import check_batch, solve_at_series_times

__all__ = ["LatentODE", "gaussian_kl", "masked_gaussian_log_likelihood", "predictive_rmse"]


def gaussian_kl(mean, log_var):
    """``KL(N(mean, exp(log_var)) || N(0, I))`` summed over the last axis.

    ``0.5 * sum(exp(log_var) + mean² - 1 - log_var)``.
    """
    return 0.5 * tf.reduce_sum(tf.exp(log_var) + tf.square(mean) - 1.0 - log_var, axis=-1)


def masked_gaussian_log_likelihood(values, mean, std, mask):
    """``sum over observed entries of log N(values; mean, std²)``, per series ``[B]``.

    Masked entries (``mask == 0``, possibly NaN) contribute exactly nothing.
    """
    safe = tf.where(mask > 0, values, mean)
    log_density = -0.5 * tf.square((safe - mean) / std) - tf.math.log(std) - 0.5 * math.log(2 * math.pi)
    return tf.reduce_sum(tf.where(mask > 0, log_density, tf.zeros_like(log_density)), axis=[1, 2])


@keras.saving.register_keras_serializable(package="tfode")
class LatentODE(keras.Model):
    """Latent ODE (Chen et al. 2018; Rubanova et al. 2019) as a Keras model.

    ``q(z0 | x)`` is a Gaussian from an encoder (``"rnn"``: a backwards GRU;
    ``"ode_rnn"``: ODE-RNN); ``dz/dt = f(z)`` carries ``z0`` (at ``t = 0``) to
    any query time with tfode's solver (adjoint gradients); a decoder MLP maps
    ``z(t)`` to the observation mean. Training maximises the ELBO
    ``E_q[log p(x | z)] - KL(q(z0) || N(0, I))`` with a fixed observation std.

    Inputs (a dict; see ``tfode.models._irregular`` for the batch format):
        ``times`` ``[T]`` or ``[B, T]``, ``values`` ``[B, T, D]``, optional
        ``mask`` ``[B, T, D]`` and ``query_times`` ``[Q]`` or ``[B, Q]``
        (default: ``times``), all times ``>= 0`` and non-decreasing per series.

    Returns:
        ``call`` returns the predicted mean at the query times, ``[B, Q, D]``.
        In training it adds the loss ``-ELBO`` (mean over series).

    Args:
        obs_dim: ``D``.
        latent_dim: size of ``z`` (paper: 4 for spirals).
        encoder: ``"rnn"`` or ``"ode_rnn"``.
        encoder_units: recurrent width (paper: 25).
        field_hidden: hidden widths of ``f`` (paper: (20,)).
        decoder_hidden: hidden widths of the decoder (paper: (20,)).
        obs_std: observation noise std of the likelihood (paper: 0.3 for spirals).
        method, rtol, atol, adjoint: latent solver settings.
        kl_weight: weight of the KL term.

    Example:
        >>> model = tfode.models.LatentODE(obs_dim=2, latent_dim=4, encoder="rnn")
        >>> model.compile(keras.optimizers.Adam(1e-2))
        >>> model.fit({"times": ts, "values": xs}, batch_size=100, epochs=...)
        >>> model.predict({"times": ts, "values": xs, "query_times": future_ts})
    """

    def __init__(
        self,
        obs_dim,
        latent_dim=4,
        *,
        encoder="rnn",
        encoder_units=25,
        field_hidden=(20,),
        decoder_hidden=(20,),
        obs_std=0.3,
        method="dopri5",
        rtol=1e-3,
        atol=1e-4,
        adjoint=True,
        kl_weight=1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (("obs_dim", obs_dim), ("latent_dim", latent_dim), ("encoder_units", encoder_units)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if encoder not in ("rnn", "ode_rnn"):
            raise ValueError(f"encoder must be 'rnn' or 'ode_rnn', got {encoder!r}.")
        if not obs_std > 0:
            raise ValueError(f"obs_std must be positive, got {obs_std!r}.")
        self.obs_dim, self.latent_dim = obs_dim, latent_dim
        self.encoder_kind, self.encoder_units = encoder, encoder_units
        self.field_hidden, self.decoder_hidden = tuple(field_hidden), tuple(decoder_hidden)
        self.obs_std, self.kl_weight = float(obs_std), float(kl_weight)
        self.solver = dict(method=method, rtol=rtol, atol=atol, adjoint=adjoint)
        if encoder == "rnn":
            self.encoder = RNNEncoder(latent_dim, encoder_units)
        else:
            self.encoder = ODERNNEncoder(latent_dim, encoder_units)
        self.field = TimeMLP(self.field_hidden, activation="elu", time_embedding="none")
        self.decoder = keras.Sequential(
            [keras.layers.Dense(h, activation="relu") for h in self.decoder_hidden] + [keras.layers.Dense(obs_dim)]
        )
        self.num_fn_evals_forward = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                                    name="nfe_forward", dtype="float32",
                                                    aggregation="mean")  # fmt: skip

    def build(self, input_shape):
        self.field.build((), (None, self.latent_dim))
        self.decoder.build((None, None, self.latent_dim))

    @staticmethod
    def _unpack(inputs):
        if not isinstance(inputs, dict) or "times" not in inputs or "values" not in inputs:
            raise ValueError("inputs must be a dict with 'times' and 'values' (optional 'mask', 'query_times').")
        values = tf.convert_to_tensor(inputs["values"])
        times = tf.cast(tf.convert_to_tensor(inputs["times"]), values.dtype)
        mask = inputs.get("mask")
        mask = tf.ones_like(values) if mask is None else tf.cast(tf.convert_to_tensor(mask), values.dtype)
        query = inputs.get("query_times")
        query = times if query is None else tf.cast(tf.convert_to_tensor(query), values.dtype)
        if values.shape.rank != 3:
            raise ValueError(f"values must be [batch, time, features], got shape {values.shape}.")
        if mask.shape.rank is not None and not mask.shape.is_compatible_with(values.shape):
            raise ValueError(f"mask must have values' shape {values.shape}, got {mask.shape}.")
        if times.shape.rank not in (1, 2) or not tf.TensorShape(times.shape[-1:]).is_compatible_with(values.shape[1:2]):
            raise ValueError(
                f"times must be [time] or [batch, time] matching values {values.shape}, got {times.shape}."
            )
        if query.shape.rank not in (1, 2):
            raise ValueError(f"query_times must be [query] or [batch, query], got shape {query.shape}.")
        if tf.executing_eagerly():
            check_batch(times.numpy(), values.numpy(), mask.numpy())
        return times, values, mask, query

    def encode(self, inputs):
        """``(mean, log_var)`` of ``q(z0 | observations)``, each ``[B, latent_dim]``."""
        times, values, mask, _ = self._unpack(inputs)
        return self.encoder(times, values, mask)

    def latent_trajectory(self, z0, query_times):
        """``z`` at the query times, ``[B, Q, latent_dim]``, from ``z(0) = z0``."""
        zs, stats = self._solve_latent(z0, query_times)
        self.num_fn_evals_forward.assign(tf.cast(stats.num_fn_evals, tf.float32))
        return zs

    def _solve_latent(self, z0, query_times):
        solver = dict(self.solver)
        override = current_tolerances()
        if override is not None:
            solver["rtol"], solver["atol"] = override
        return solve_at_series_times(lambda t, z: self.field(t, z), z0, query_times, **solver)

    def predict_mean(self, times, values, mask, query_times):
        """Posterior-mean prediction without side effects (serving).

        Returns:
            ``(mean [B, Q, D], num_fn_evals)`` of the latent solve.
        """
        mean, _ = self.encoder(times, values, mask)
        zs, stats = self._solve_latent(mean, query_times)
        return self.decoder(zs), stats.num_fn_evals

    def call(self, inputs, training=None):
        times, values, mask, query = self._unpack(inputs)
        mean, log_var = self.encoder(times, values, mask)
        z0 = mean
        if training:
            z0 = mean + tf.exp(0.5 * log_var) * tf.random.normal(tf.shape(mean), dtype=mean.dtype)
        predicted = self.decoder(self.latent_trajectory(z0, query))
        if training:
            observed = predicted if query is times else self.decoder(self.latent_trajectory(z0, times))
            log_likelihood = masked_gaussian_log_likelihood(values, observed, self.obs_std, mask)
            elbo = log_likelihood - self.kl_weight * gaussian_kl(mean, log_var)
            self.add_loss(-tf.reduce_mean(elbo))
        return predicted

    def compute_output_shape(self, input_shape):
        values = input_shape["values"]
        query = input_shape.get("query_times", input_shape["times"])
        return (values[0], query[-1], self.obs_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            obs_dim=self.obs_dim,
            latent_dim=self.latent_dim,
            encoder=self.encoder_kind,
            encoder_units=self.encoder_units,
            field_hidden=list(self.field_hidden),
            decoder_hidden=list(self.decoder_hidden),
            obs_std=self.obs_std,
            kl_weight=self.kl_weight,
            **self.solver,
        )
        return config


def predictive_rmse(model, times, values, mask, query_times, targets):
    """RMSE of the posterior-mean prediction at ``query_times`` against ``targets`` ``[B, Q, D]``."""
    predicted = model({"times": times, "values": values, "mask": mask, "query_times": query_times}, training=False)
    return float(np.sqrt(np.mean((np.asarray(predicted) - np.asarray(targets)) ** 2)))
