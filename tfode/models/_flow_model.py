"""``ContinuousFlow``: a CNF density model trainable with ``keras.Model.fit``."""

from __future__ import annotations

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfode._keras_utils import from_config_with_nested
from tfode.bijectors import ContinuousFlowBijector
from tfode.config import DEFAULTS, as_config
from tfode.layers._metrics import VariableValue, replica_counter
from tfode.solvers import solver_config
from tfode.stats import SolveStats

__all__ = ["ContinuousFlow"]


@keras.saving.register_keras_serializable(package="tfode")
class ContinuousFlow(keras.Model):
    """Density model ``x = flow(z)``, ``z ~ N(0, I)``, trained by maximum likelihood.

    ``call(x)`` returns ``log p(x)`` per sample ``[batch]``. The objective, used
    by ``fit`` (``training=True``) and reported by ``evaluate`` alike, is

        loss = -mean log p(x) + kinetic_weight * mean KE + jacobian_weight * mean JF

    (RNODE, Finlay et al. 2020; the paper's code uses 0.01 for both), all from
    ONE solve of the augmented system; its terms are added with ``add_loss``.
    The RNODE channels ``KE = ∫||f||² dt`` and ``JF = ∫||∂f/∂z||_F² dt`` are
    integrated only when a weight is nonzero and the loss is wanted (``fit``,
    ``evaluate``, ``model(x, training=True)``): ``log_prob``, ``predict``,
    ``sample`` and serving solve the smaller state ``(z, log-det)``.
    Compile with an optimizer only:
    ``model.compile(keras.optimizers.Adam(1e-3)); model.fit(x, batch_size=512)``.

    ``fit`` and ``evaluate`` log ``loss``, ``nll`` (``-mean log p``), with RNODE
    the unweighted ``kinetic_energy`` and ``jacobian_frobenius`` (epoch means),
    and the cost of the last solve, ``nfe_forward`` and ``nfe_backward`` (adjoint
    backward solve of the last training step), as ``ODELayer`` does; the counts
    live in the non-trainable weights ``num_fn_evals_forward``/``num_fn_evals_backward``.

    Args:
        vector_field: Keras layer ``f(t, z)`` (e.g. ``tfode.layers.TimeMLP``).
        dim: event size ``D``.
        trace, noise, solver, method, rtol, atol, adjoint, seed: see ``ContinuousFlowBijector``.
        kinetic_weight, jacobian_weight: RNODE weights (0 disables a term).

    Example:
        >>> model = tfode.models.ContinuousFlow(tfode.layers.TimeMLP((64, 64, 64)), dim=2,
        ...                                     kinetic_weight=0.01, jacobian_weight=0.01)
        >>> model.compile(keras.optimizers.Adam(1e-3)); model.fit(x, batch_size=512, epochs=10)
        >>> model.evaluate(x_test, return_dict=True)  # {"loss", "nll", "kinetic_energy", ...}
        >>> model.sample(1000)
    """

    def __init__(
        self,
        vector_field,
        dim,
        *,
        trace="exact",
        noise="rademacher",
        solver=None,
        method=None,
        rtol=None,
        atol=None,
        adjoint=None,
        kinetic_weight=0.0,
        jacobian_weight=0.0,
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(vector_field, keras.layers.Layer):
            raise TypeError(f"vector_field must be a keras.layers.Layer, got {type(vector_field).__name__}.")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}.")
        for name, weight in (("kinetic_weight", kinetic_weight), ("jacobian_weight", jacobian_weight)):
            if not weight >= 0:
                raise ValueError(f"{name} must be >= 0, got {weight!r}.")
        self.vector_field = vector_field
        self.dim = dim
        self.kinetic_weight = float(kinetic_weight)
        self.jacobian_weight = float(jacobian_weight)
        base = DEFAULTS["ContinuousFlowBijector"] if solver is None else as_config(solver)
        self.solver = solver_config(base, method=method, rtol=rtol, atol=atol, adjoint=adjoint)
        self._flow_config = dict(trace=trace, noise=noise, seed=seed)
        self._create_trackers()
        self.bijector = ContinuousFlowBijector(
            vector_field,
            solver=self.solver,
            solve_stats=SolveStats("forward_stats", num_fn_evals=self.num_fn_evals_forward, num_steps=False,
                                   status=False),
            backward_stats=SolveStats("backward_stats", num_fn_evals=self.num_fn_evals_backward, num_steps=False,
                                      status=False),
            **self._flow_config,
        )  # fmt: skip
        self.base = tfp.distributions.MultivariateNormalDiag(tf.zeros([dim]))
        self.distribution = tfp.distributions.TransformedDistribution(self.base, self.bijector)
        self._loss_wanted = False  # set by test_step: evaluate computes the training objective

    @property
    def regularized(self):
        """Whether the objective has RNODE terms (a nonzero weight)."""
        return self.kinetic_weight > 0 or self.jacobian_weight > 0

    def _create_trackers(self):
        """NFE weights and the metrics ``nll`` (and RNODE terms), ``nfe_forward``, ``nfe_backward``."""
        # Cost of the last forward/backward solve (mean over replicas under tf.distribute).
        with keras.name_scope(self.name):
            self.num_fn_evals_forward = replica_counter("nfe_forward")
            self.num_fn_evals_backward = replica_counter("nfe_backward")
        self.nll_tracker = keras.metrics.Mean(name="nll")
        if self.regularized:
            self.kinetic_tracker = keras.metrics.Mean(name="kinetic_energy")
            self.jacobian_tracker = keras.metrics.Mean(name="jacobian_frobenius")
        self.nfe_forward = VariableValue(self.num_fn_evals_forward, name="nfe_forward")
        self.nfe_backward = VariableValue(self.num_fn_evals_backward, name="nfe_backward")

    def build(self, input_shape):
        if input_shape[-1] != self.dim:
            raise ValueError(f"ContinuousFlow(dim={self.dim}) got inputs of shape {input_shape}.")
        self.vector_field(keras.KerasTensor((), dtype="float32"), keras.KerasTensor(tuple(input_shape)))

    def call(self, x, training=None, solver=None):
        """``log p(x)`` per sample, ``[batch]``; adds the loss terms when training or evaluating.

        ``solver`` (a ``SolverConfig``) replaces the flow's for this call (inference only).
        """
        with_loss = bool(training) or self._loss_wanted
        if with_loss and self.regularized:
            z, ildj, terms = self.bijector.inverse_and_regularization(x)
        else:
            config = self.solver if solver is None else as_config(solver)
            if not with_loss:
                config = config.replace(adjoint=False)  # inference needs no custom gradient
                self.num_fn_evals_backward.assign(0.0)
            z, ildj = self.bijector.inverse_and_log_det(x, solver=config)
            terms = {}
        log_prob = self.base.log_prob(z) + ildj
        if with_loss:
            self._add_objective(log_prob, terms)
        return log_prob

    def _add_objective(self, log_prob, terms):
        """``add_loss`` the NLL and the weighted RNODE means; update the metrics.

        Args:
            log_prob: ``[batch]``.
            terms: ``{}`` or ``{"kinetic_energy": [batch], "jacobian_frobenius": [batch]}``.
        """
        batch = tf.cast(tf.shape(log_prob)[0], log_prob.dtype)  # weights the epoch means like Keras' loss
        nll = -tf.reduce_mean(log_prob)
        self.add_loss(nll)
        self.nll_tracker.update_state(nll, sample_weight=batch)
        if not terms:
            return
        weighted = (
            ("kinetic_energy", self.kinetic_weight, self.kinetic_tracker),
            ("jacobian_frobenius", self.jacobian_weight, self.jacobian_tracker),
        )
        for key, weight, tracker in weighted:
            mean = tf.reduce_mean(terms[key])
            self.add_loss(weight * mean)
            tracker.update_state(mean, sample_weight=batch)

    def test_step(self, data):
        """Keras' test step, with the training objective as its loss (``evaluate``, validation)."""
        self._loss_wanted = True
        try:
            return super().test_step(data)
        finally:
            self._loss_wanted = False

    def log_prob(self, x):
        return self(x, training=False)

    def sample(self, num_samples, seed=None):
        """``[num_samples, dim]`` samples from the flow."""
        return self.distribution.sample(num_samples, seed=seed)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])

    def get_config(self):
        config = super().get_config()
        config.update(
            vector_field=keras.saving.serialize_keras_object(self.vector_field),
            dim=self.dim,
            kinetic_weight=self.kinetic_weight,
            jacobian_weight=self.jacobian_weight,
            solver=self.solver.get_config(),
            **self._flow_config,
        )
        return config

    @classmethod
    def from_config(cls, config):
        return from_config_with_nested(cls, config, "vector_field")
