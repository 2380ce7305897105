"""``ContinuousFlow``: a CNF density model trainable with ``keras.Model.fit``."""

from __future__ import annotations

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfode._keras_utils import from_config_with_nested
from tfode.bijectors import ContinuousFlowBijector

__all__ = ["ContinuousFlow"]


@keras.saving.register_keras_serializable(package="tfode")
class ContinuousFlow(keras.Model):
    """Density model ``x = flow(z)``, ``z ~ N(0, I)``, trained by maximum likelihood.

    ``call(x)`` returns ``log p(x)`` per sample ``[batch]``; during training it
    adds the loss ``-mean log p(x) + kinetic_weight * mean KE + jacobian_weight * mean JF``
    (RNODE, Finlay et al. 2020; the paper's code uses 0.01 for both), all from
    ONE solve of the augmented system. Compile with an optimizer only:
    ``model.compile(keras.optimizers.Adam(1e-3)); model.fit(x, batch_size=512)``.

    Args:
        vector_field: Keras layer ``f(t, z)`` (e.g. ``tfode.layers.TimeMLP``).
        dim: event size ``D``.
        trace, noise, method, rtol, atol, adjoint, seed: see ``ContinuousFlowBijector``.
        kinetic_weight, jacobian_weight: RNODE weights (0 disables a term).

    Example:
        >>> model = tfode.models.ContinuousFlow(tfode.layers.TimeMLP((64, 64, 64)), dim=2,
        ...                                     kinetic_weight=0.01, jacobian_weight=0.01)
        >>> model.compile(keras.optimizers.Adam(1e-3)); model.fit(x, batch_size=512, epochs=10)
        >>> model.sample(1000)
    """

    def __init__(
        self,
        vector_field,
        dim,
        *,
        trace="exact",
        noise="rademacher",
        method="dopri5",
        rtol=1e-5,
        atol=1e-5,
        adjoint=True,
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
        self._flow_config = dict(trace=trace, noise=noise, method=method, rtol=rtol, atol=atol,
                                 adjoint=adjoint, seed=seed)  # fmt: skip
        self.bijector = ContinuousFlowBijector(
            vector_field, regularize=self.kinetic_weight > 0 or self.jacobian_weight > 0, **self._flow_config
        )
        self.base = tfp.distributions.MultivariateNormalDiag(tf.zeros([dim]))
        self.distribution = tfp.distributions.TransformedDistribution(self.base, self.bijector)

    def build(self, input_shape):
        if input_shape[-1] != self.dim:
            raise ValueError(f"ContinuousFlow(dim={self.dim}) got inputs of shape {input_shape}.")
        self.vector_field(keras.KerasTensor((), dtype="float32"), keras.KerasTensor(tuple(input_shape)))

    def call(self, x, training=None):
        """``log p(x)`` per sample, ``[batch]``."""
        if self.bijector._regularize:
            z, ildj, terms = self.bijector.inverse_and_regularization(x)
            if training:
                self.add_loss(self.kinetic_weight * tf.reduce_mean(terms["kinetic_energy"]))
                self.add_loss(self.jacobian_weight * tf.reduce_mean(terms["jacobian_frobenius"]))
        else:
            z = self.bijector.inverse(x)
            ildj = self.bijector.inverse_log_det_jacobian(x, event_ndims=1)
        log_prob = self.base.log_prob(z) + ildj
        if training:
            self.add_loss(-tf.reduce_mean(log_prob))
        return log_prob

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
            **self._flow_config,
        )
        return config

    @classmethod
    def from_config(cls, config):
        return from_config_with_nested(cls, config, "vector_field")
