"""``LatentODE``: the latent-ODE variational autoencoder for irregular time series."""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from tfode.config import DEFAULTS, as_config
from tfode.layers._metrics import replica_counter
from tfode.layers._vector_fields import TimeMLP
from tfode.models._encoders import ODERNNEncoder, RNNEncoder
from tfode.models._irregular import solve_at_series_times, unpack_inputs
from tfode.models._keras_inputs import IrregularSeriesTrainer
from tfode.solvers import solver_config
from tfode.stats import batch_fn_evals

__all__ = [
    "LatentODE",
    "gaussian_kl",
    "masked_gaussian_log_likelihood",
    "poisson_process_log_likelihood",
    "predictive_rmse",
]


def gaussian_kl(mean, log_var):
    """``KL(N(mean, exp(log_var)) || N(0, I))`` summed over the last axis.

    ``0.5 * sum(exp(log_var) + mean² - 1 - log_var)``.
    """
    return 0.5 * tf.reduce_sum(tf.exp(log_var) + tf.square(mean) - 1.0 - log_var, axis=-1)


def masked_gaussian_log_likelihood(values, mean, std, mask):
    """``sum over observed entries of log N(values; mean, std²)``, per series ``[B]``.

    Args:
        values, mean, mask: ``[B, T, D]``; std: scalar or broadcastable to them.

    Masked entries (``mask == 0``, possibly NaN) contribute exactly nothing.
    """
    mean = tf.convert_to_tensor(mean)
    values = tf.cast(values, mean.dtype)
    std = tf.cast(std, mean.dtype)
    observed = tf.cast(mask, mean.dtype) > 0
    safe = tf.where(observed, values, mean)
    log_density = -0.5 * tf.square((safe - mean) / std) - tf.math.log(std) - 0.5 * math.log(2 * math.pi)
    return tf.reduce_sum(tf.where(observed, log_density, tf.zeros_like(log_density)), axis=[1, 2])


def poisson_process_log_likelihood(log_rate, integrated_rate, mask):
    """Log-likelihood of event times under an inhomogeneous Poisson process, per series ``[B]``.

    ``sum_{i,d} mask[i,d] * log λ_d(t_i) - sum_d ∫_0^{t_end} λ_d(t) dt``: each
    observed entry ``(t_i, d)`` is an event of feature ``d`` (Rubanova et al.
    2019, Sec. 3.4).

    Args:
        log_rate: ``[B, T, D]``, ``log λ(t_i)``.
        integrated_rate: ``[B, D]``, ``∫ λ dt`` over the observation window.
        mask: ``[B, T, D]`` event indicators.
    """
    events = tf.cast(mask, log_rate.dtype) > 0
    observed_log_rate = tf.reduce_sum(tf.where(events, log_rate, tf.zeros_like(log_rate)), axis=[1, 2])
    return observed_log_rate - tf.reduce_sum(integrated_rate, axis=-1)


def _standard_normal_log_density(z):
    return tf.reduce_sum(-0.5 * tf.square(z) - 0.5 * math.log(2 * math.pi), axis=-1)


def _diagonal_normal_log_density(z, mean, log_var):
    return tf.reduce_sum(
        -0.5 * tf.square(z - mean) * tf.exp(-log_var) - 0.5 * log_var - 0.5 * math.log(2 * math.pi), axis=-1
    )


def _mlp(hidden, outputs, activation="relu"):
    layers = [keras.layers.Dense(h, activation=activation) for h in hidden]
    return keras.Sequential([*layers, keras.layers.Dense(outputs)])


@keras.saving.register_keras_serializable(package="tfode")
class LatentODE(IrregularSeriesTrainer, keras.Model):
    """Latent ODE (Chen et al. 2018; Rubanova et al. 2019) as a Keras model.

    ``q(z0 | x)`` is a Gaussian from an encoder (``"rnn"``: a backwards GRU;
    ``"ode_rnn"``: ODE-RNN); ``dz/dt = f(z)`` carries ``z0`` (the state at
    ``t = 0``) to any query time with tfode's solver (adjoint gradients); a
    decoder MLP maps ``z(t)`` to the observation mean. Training maximises

    * ``iwae_samples == 1``: the ELBO ``E_q[log p(x | z0)] - KL(q(z0) || N(0, I))``
      (one posterior sample, closed-form KL);
    * ``iwae_samples == K > 1``: the importance-weighted bound
      ``E[log (1/K) sum_k p(x | z_k) p(z_k) / q(z_k | x)]`` (Burda et al. 2016),
      all K samples solved in one batch;

    with a Gaussian likelihood of fixed ``obs_std`` on the observed entries.
    Options:

    * ``poisson=True``: the observation times are also modelled as events of an
      inhomogeneous Poisson process with rate ``λ(t) = exp(g(z(t)))`` per feature;
      ``∫ λ dt`` is integrated as ``D`` extra ODE states in the same solve and its
      log-likelihood (``poisson_process_log_likelihood``) joins ``log p(x | z)``.
    * ``num_classes=C``: a classifier MLP on ``z0`` (per-series label, Rubanova's
      classification setting); ``inputs["labels"]`` ``[B]`` int is then required
      in training, the loss adds ``classification_weight`` times the mean
      cross-entropy, and ``call`` returns ``{"mean", "logits"}``.

    Inputs (a dict; batch format in ``tfode.models``):
        ``times`` ``[T]`` or ``[B, T]``, ``values`` ``[B, T, D]``, optional
        ``mask`` ``[B, T, D]``, ``query_times`` ``[Q]`` or ``[B, Q]`` (default:
        ``times``) and ``labels`` ``[B]``; all times ``>= 0`` and non-decreasing
        per series.

    Returns:
        ``call``: the predicted mean at the query times, ``[B, Q, D]`` (from the
        posterior mean of ``z0``, or from a posterior sample in training), or
        ``{"mean": [B, Q, D], "logits": [B, C]}`` with a classifier. In training
        it adds the loss ``-bound`` (mean over series).

    Args:
        obs_dim: ``D``.
        latent_dim: size of ``z`` (paper: 4 for spirals).
        encoder: ``"rnn"`` or ``"ode_rnn"``.
        encoder_units: recurrent width (paper: 25).
        field_hidden: hidden widths of ``f`` (paper: (20,)).
        decoder_hidden: hidden widths of the decoder (paper: (20,)).
        obs_std: observation noise std of the likelihood (paper: 0.3 for spirals).
        solver: the latent solve's ``tfode.SolverConfig`` (default
            ``tfode.config.DEFAULTS["LatentODE"]``: dopri5, rtol 1e-3, atol 1e-4, adjoint).
        encoder_solver: the ODE-RNN encoder's (default: ``solver`` without the adjoint
            and with a budget of 256 steps per gap).
        method, rtol, atol, adjoint: conveniences replacing fields of ``solver``.
        kl_weight: weight of the prior/KL term.
        iwae_samples: ``K``, posterior samples per series in training.
        poisson: model observation times as a Poisson process.
        num_classes, classifier_hidden, classification_weight: optional classifier.
        seed: seed of the posterior-sample generator (default: drawn from
            numpy's global generator, so ``keras.utils.set_random_seed`` fixes
            it). A ``tf.random.Generator``: replicas of a distribution strategy
            (and workers of a multi-worker one) draw different samples.

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
        solver=None,
        encoder_solver=None,
        method=None,
        rtol=None,
        atol=None,
        adjoint=None,
        kl_weight=1.0,
        iwae_samples=1,
        poisson=False,
        num_classes=None,
        classifier_hidden=(),
        classification_weight=1.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (
            ("obs_dim", obs_dim),
            ("latent_dim", latent_dim),
            ("encoder_units", encoder_units),
            ("iwae_samples", iwae_samples),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 2):  # fmt: skip
            raise ValueError(f"num_classes must be None or an int >= 2, got {num_classes!r}.")
        if encoder not in ("rnn", "ode_rnn"):
            raise ValueError(f"encoder must be 'rnn' or 'ode_rnn', got {encoder!r}.")
        if not obs_std > 0:
            raise ValueError(f"obs_std must be positive, got {obs_std!r}.")
        self.obs_dim, self.latent_dim = obs_dim, latent_dim
        self.encoder_kind, self.encoder_units = encoder, encoder_units
        self.field_hidden, self.decoder_hidden = tuple(field_hidden), tuple(decoder_hidden)
        self.obs_std, self.kl_weight = float(obs_std), float(kl_weight)
        self.iwae_samples, self.poisson = iwae_samples, bool(poisson)
        self.num_classes, self.classifier_hidden = num_classes, tuple(classifier_hidden)
        self.classification_weight = float(classification_weight)
        self.seed = int(np.random.randint(2**31 - 1)) if seed is None else int(seed)
        base = DEFAULTS["LatentODE"] if solver is None else as_config(solver)
        self.solver = solver_config(base, method=method, rtol=rtol, atol=atol, adjoint=adjoint)
        if encoder_solver is None:
            encoder_solver = self.solver.replace(adjoint=False, max_num_steps=DEFAULTS["encoder"].max_num_steps)
        self.encoder_solver = as_config(encoder_solver)
        if encoder == "rnn":
            self.encoder = RNNEncoder(latent_dim, encoder_units)
        else:
            self.encoder = ODERNNEncoder(latent_dim, encoder_units, solver=self.encoder_solver)
        self.field = TimeMLP(self.field_hidden, activation="elu", time_embedding="none")
        self.decoder = _mlp(self.decoder_hidden, obs_dim)
        self.log_rate = keras.layers.Dense(obs_dim) if self.poisson else None
        self.classifier = _mlp(self.classifier_hidden, num_classes) if num_classes else None
        self._posterior_noise = tf.random.Generator.from_seed(self.seed)
        self.num_fn_evals_forward = replica_counter("nfe_forward")

    def build(self, input_shape=None):
        # Sublayers a direct call (e.g. serving_outputs before fit) already built keep their weights.
        parts = [
            (self.encoder, ((None, None), (None, None, self.obs_dim), (None, None, self.obs_dim))),
            (self.field, ((), (None, self.latent_dim))),
            (self.decoder, ((None, None, self.latent_dim),)),
            (self.log_rate, ((None, None, self.latent_dim),)),
            (self.classifier, ((None, self.latent_dim),)),
        ]
        for layer, shapes in parts:
            if layer is not None and not layer.built:
                layer.build(*shapes)
        self.built = True

    def _unpack(self, inputs):
        times, values, mask, query = unpack_inputs(inputs, self.obs_dim)
        if query is None:
            return times, values, mask, times
        if tf.executing_eagerly() and np.any(np.diff(query.numpy(), axis=-1) < 0):
            raise ValueError("query_times must be non-decreasing within each series.")
        return times, values, mask, query

    def _solvers(self, solver):
        """``(latent config, encoder config)`` for a call: the model's, or ``solver``'s tolerances on both."""
        if solver is None:
            return self.solver, self.encoder_solver
        solver = as_config(solver)
        return solver, self.encoder_solver.replace(rtol=solver.rtol, atol=solver.atol)

    def encode(self, inputs, solver=None):
        """``(mean, log_var)`` of ``q(z0 | observations)``, each ``[B, latent_dim]``."""
        times, values, mask, _ = self._unpack(inputs)
        return self.encoder(times, values, mask, solver=self._solvers(solver)[1])

    def latent_trajectory(self, z0, query_times, solver=None):
        """``z`` at the query times, ``[B, Q, latent_dim]``, from ``z(0) = z0``."""
        zs, stats = self._solve_latent(z0, query_times, self._solvers(solver)[0])
        self.num_fn_evals_forward.assign(tf.cast(batch_fn_evals(stats), tf.float32))
        return zs

    def _solve_latent(self, z0, query_times, solver):
        return solve_at_series_times(lambda t, z: self.field(t, z), z0, query_times, solver)

    def _solve_with_intensity(self, z0, times, solver):
        """``(z [B, T, L], log λ [B, T, D], ∫_0^{t_end} λ dt [B, D], stats)``: ``[z, Λ]`` in one solve."""
        latent = self.latent_dim

        def augmented(t, state):
            z = state[:, :latent]
            return tf.concat([self.field(t, z), tf.exp(self.log_rate(z))], axis=-1)

        start = tf.concat([z0, tf.zeros([tf.shape(z0)[0], self.obs_dim], z0.dtype)], axis=-1)
        states, stats = solve_at_series_times(augmented, start, times, solver)
        zs = states[..., :latent]
        return zs, self.log_rate(zs), states[:, -1, latent:], stats

    def serving_outputs(self, times, values, mask, query_times, solver=None):
        """Posterior-mean prediction without side effects (what ``tfode.serving`` exports).

        Args:
            times, query_times: ``[B, T]``, ``[B, Q]``; values, mask: ``[B, T, D]``.
            solver: optional ``SolverConfig`` for this call (its tolerances also reach the encoder).

        Returns:
            ``{"mean": [B, Q, D], "num_fn_evals": []}`` (the latent solve's), plus
            ``"logits"`` ``[B, C]`` with a classifier.
        """
        latent, encoder = self._solvers(solver)
        z0, _ = self.encoder(times, values, mask, solver=encoder)
        # Inference needs no adjoint: per-series times are then solved per sample (batch-independent).
        zs, stats = self._solve_latent(z0, query_times, latent.replace(adjoint=False))
        outputs = {"mean": self.decoder(zs), "num_fn_evals": batch_fn_evals(stats)}
        if self.classifier is not None:
            outputs["logits"] = self.classifier(z0)
        return outputs

    def classify(self, inputs):
        """Class logits ``[B, C]`` from the posterior mean of ``z0`` (needs ``num_classes``)."""
        if self.classifier is None:
            raise ValueError("classify needs a model built with num_classes.")
        mean, _ = self.encode(inputs)
        return self.classifier(mean)

    def _sample_z0(self, mean, log_var):
        """``[K, B, L]`` posterior samples."""
        shape = tf.concat([[self.iwae_samples], tf.shape(mean)], axis=0)
        noise = self._posterior_noise.normal(shape, dtype=mean.dtype)
        return mean + tf.exp(0.5 * log_var) * noise

    def _observation_log_likelihood(self, z0, times, values, mask, solver):
        """``log p(x | z0)`` per row of ``z0`` ``[N, L]`` (``N`` a multiple of ``B``), and ``z`` at ``times``."""
        repeats = tf.shape(z0)[0] // tf.shape(values)[0]
        if times.shape.rank == 2:
            times = tf.tile(times, [repeats, 1])
        values, mask = tf.tile(values, [repeats, 1, 1]), tf.tile(mask, [repeats, 1, 1])
        if self.poisson:
            zs, log_rate, integrated, stats = self._solve_with_intensity(z0, times, solver)
            extra = poisson_process_log_likelihood(log_rate, integrated, mask)
        else:
            zs, stats = self._solve_latent(z0, times, solver)
            extra = 0.0
        self.num_fn_evals_forward.assign(tf.cast(batch_fn_evals(stats), tf.float32))
        return masked_gaussian_log_likelihood(values, self.decoder(zs), self.obs_std, mask) + extra, zs

    def _training_loss(self, mean, log_var, z0_samples, times, values, mask, solver):
        """``-bound`` (mean over series) and the latent trajectory of the first sample at ``times``."""
        samples, batch = self.iwae_samples, tf.shape(mean)[0]
        flat = tf.reshape(z0_samples, [-1, self.latent_dim])
        log_likelihood, zs = self._observation_log_likelihood(flat, times, values, mask, solver)
        log_likelihood = tf.reshape(log_likelihood, [samples, batch])
        if samples == 1:
            bound = log_likelihood[0] - self.kl_weight * gaussian_kl(mean, log_var)
        else:
            log_weights = log_likelihood + self.kl_weight * (
                _standard_normal_log_density(z0_samples) - _diagonal_normal_log_density(z0_samples, mean, log_var)
            )
            bound = tf.reduce_logsumexp(log_weights, axis=0) - math.log(samples)
        return -tf.reduce_mean(bound), zs[:batch]

    def call(self, inputs, training=None, solver=None):
        """See the class docstring; ``solver`` (a ``SolverConfig``) replaces the model's for
        this call, and its tolerances replace the encoder's."""
        times, values, mask, query = self._unpack(inputs)
        latent_solver, encoder_solver = self._solvers(solver)
        mean, log_var = self.encoder(times, values, mask, solver=encoder_solver)
        if not training:
            z0 = mean
            predicted = self.decoder(self.latent_trajectory(z0, query, latent_solver.replace(adjoint=False)))
        else:
            z0_samples = self._sample_z0(mean, log_var)
            z0 = z0_samples[0]
            loss, zs_observed = self._training_loss(mean, log_var, z0_samples, times, values, mask, latent_solver)
            zs_query = zs_observed if query is times else self.latent_trajectory(z0, query, latent_solver)
            predicted = self.decoder(zs_query)
            if self.classifier is not None:
                loss += self.classification_weight * self._classification_loss(inputs, z0_samples)
            self.add_loss(loss)
        if self.classifier is None:
            return predicted
        return {"mean": predicted, "logits": self.classifier(z0)}

    def _classification_loss(self, inputs, z0_samples):
        """Mean cross-entropy of ``inputs["labels"]`` ``[B]`` over the batch and posterior samples."""
        if inputs.get("labels") is None:
            raise ValueError("a LatentODE with num_classes needs inputs['labels'] ([batch] int) in training.")
        labels = tf.cast(tf.convert_to_tensor(inputs["labels"]), tf.int32)
        if labels.shape.rank != 1:
            raise ValueError(f"labels must be [batch] class indices, got shape {labels.shape}.")
        logits = self.classifier(tf.reshape(z0_samples, [-1, self.latent_dim]))  # [K*B, C], sample-major
        labels = tf.tile(labels, [self.iwae_samples])
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))

    def compute_output_shape(self, input_shape):
        values = input_shape["values"]
        query = input_shape.get("query_times", input_shape["times"])
        mean = (values[0], query[-1], self.obs_dim)
        if self.classifier is None:
            return mean
        return {"mean": mean, "logits": (values[0], self.num_classes)}

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
            iwae_samples=self.iwae_samples,
            poisson=self.poisson,
            num_classes=self.num_classes,
            classifier_hidden=list(self.classifier_hidden),
            classification_weight=self.classification_weight,
            seed=self.seed,
            solver=self.solver.get_config(),
            encoder_solver=self.encoder_solver.get_config(),
        )
        return config


def predictive_rmse(model, times, values, mask, query_times, targets):
    """RMSE of the posterior-mean prediction at ``query_times`` against ``targets`` ``[B, Q, D]``."""
    predicted = model({"times": times, "values": values, "mask": mask, "query_times": query_times}, training=False)
    if isinstance(predicted, dict):
        predicted = predicted["mean"]
    return float(np.sqrt(np.mean((np.asarray(predicted) - np.asarray(targets)) ** 2)))
