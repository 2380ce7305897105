"""Continuous normalizing flows as a TensorFlow Probability bijector.

With ``dz/dt = f(t, z)`` the log-density changes by the trace of the Jacobian
(instantaneous change of variables, Chen et al. 2018, Theorem 1):

    d log p(z(t)) / dt = -tr(∂f/∂z(t)),

so ``forward`` (``t0 -> t1``) has ``log|det J| = ∫_{t0}^{t1} tr(∂f/∂z) dt``.
Forward and inverse each solve ONE augmented system ``(z, log-det[, regularisers])``
and fill the bijector cache, so ``log_prob`` does not solve twice. The log-det
is carried reduced per event (one number per sample), which keeps the
solver's error control on ``z`` undistorted.

References:
    Chen, Rubanova, Bettencourt & Duvenaud (2018), "Neural Ordinary Differential Equations".
    Grathwohl et al. (2019), "FFJORD: Free-form Continuous Dynamics for Scalable
    Reversible Generative Models" (Hutchinson's trace estimator).
    Finlay, Jacobsen, Nurbekyan & Oberman (2020), "How to train your neural ODE:
    the world of Jacobian and kinetic regularization" (RNODE).
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.internal import cache_util

from tfode._overrides import current_tolerances
from tfode.solvers import solve

__all__ = ["ContinuousFlowBijector"]

_TRACES = ("exact", "hutchinson")
_NOISES = ("rademacher", "gaussian")


def _augmented_dynamics(field, trace, noise, regularize):
    """Build ``g(t, (z, logdet, kinetic, jacobian)) -> derivatives``.

    ``z``: ``[..., D]``; the scalar channels are ``[...]``. ``noise`` is ``None``
    (exact trace) or a tensor shaped like ``z`` drawn once per solve.
    """

    def dynamics(t, state):
        z = state[0]
        dim = z.shape[-1]
        with tf.GradientTape(persistent=trace == "exact") as tape:
            tape.watch(z)
            dz = field(t, z)
            components = [dz[..., i] for i in range(dim)] if trace == "exact" else None
        if trace == "exact":
            rows = [tape.gradient(component, z) for component in components]
            divergence = tf.add_n([row[..., i] for i, row in enumerate(rows)])
            frobenius = tf.add_n([tf.reduce_sum(tf.square(row), axis=-1) for row in rows]) if regularize else None
        else:
            vjp = tape.gradient(dz, z, output_gradients=noise)
            divergence = tf.reduce_sum(vjp * noise, axis=-1)
            frobenius = tf.reduce_sum(tf.square(vjp), axis=-1) if regularize else None
        del tape
        if not regularize:
            return (dz, divergence)
        kinetic = tf.reduce_sum(tf.square(dz), axis=-1)
        return (dz, divergence, kinetic, frobenius)

    return dynamics


class _GraphSolves:
    """Holds the eager-mode graph solves out of TF's object tracking (not saved)."""

    def __init__(self, by_direction):
        self.by_direction = by_direction

    def __getitem__(self, direction):
        return self.by_direction[direction]


class ContinuousFlowBijector(tfp.bijectors.Bijector):
    """A continuous normalizing flow ``z(t1) = z(t0) + ∫ f(t, z) dt`` as a bijector.

    ``forward`` maps base samples (time ``t0``) to data (time ``t1``);
    ``forward_log_det_jacobian = ∫ tr(∂f/∂z) dt``, one value per event.

    Args:
        vector_field: ``f(t, z)`` with ``z`` ``[..., D]`` (e.g. ``tfode.layers.TimeMLP``).
        t0, t1: integration interval.
        trace: ``"exact"`` (D vector-Jacobian products per evaluation; low D)
            or ``"hutchinson"`` (one VJP with noise ``ε``: ``E[εᵀ ∂f/∂z ε] = tr``).
        noise: ``"rademacher"`` or ``"gaussian"`` noise for Hutchinson, drawn
            ONCE per solve from a stateless seed (resampling inside a solve
            makes the dynamics non-smooth and blows up NFE).
        method, rtol, atol, options: solver settings (see ``tfode.solve``).
        adjoint: gradients by the adjoint method; ``adjoint_norm`` as in ``solve``.
        regularize: also integrate RNODE's kinetic energy ``∫||f||² dt`` and
            Jacobian Frobenius norm ``∫||∂f/∂z||_F² dt`` (Hutchinson estimate
            ``||εᵀ∂f/∂z||²`` with ``trace="hutchinson"``, exact otherwise); read
            them with ``forward_and_regularization``/``inverse_and_regularization``.
        seed: int seed of the noise generator.
        validate_args: TFP convention.
        name: name scope.

    Example:
        >>> flow = tfode.ContinuousFlowBijector(tfode.layers.TimeMLP(hidden=(64, 64, 64)))
        >>> dist = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(2)), flow)
        >>> dist.log_prob(x); dist.sample(100)
    """

    _cache = cache_util.BijectorCacheWithGreedyAttrs(
        forward_name="_augmented_forward", inverse_name="_augmented_inverse"
    )

    def __init__(
        self,
        vector_field,
        t0=0.0,
        t1=1.0,
        *,
        trace="exact",
        noise="rademacher",
        method="dopri5",
        rtol=1e-5,
        atol=1e-5,
        options=None,
        adjoint=True,
        adjoint_norm="seminorm",
        regularize=False,
        seed=0,
        validate_args=False,
        name="continuous_flow",
    ):
        parameters = dict(locals())
        if not callable(vector_field):
            raise TypeError(f"vector_field must be callable as f(t, z), got {type(vector_field).__name__}.")
        if trace not in _TRACES:
            raise ValueError(f"trace must be one of {_TRACES}, got {trace!r}.")
        if noise not in _NOISES:
            raise ValueError(f"noise must be one of {_NOISES}, got {noise!r}.")
        if float(t0) == float(t1):
            raise ValueError(f"t0 and t1 must differ, got {t0!r}.")
        with tf.name_scope(name) as name:
            self._vector_field = vector_field
            self._t0, self._t1 = float(t0), float(t1)
            self._trace, self._noise = trace, noise
            self._solver_kwargs = dict(method=method, rtol=rtol, atol=atol, options=options,
                                       adjoint=adjoint, adjoint_norm=adjoint_norm)  # fmt: skip
            self._regularize = bool(regularize)
            self._noise_generator = tf.random.Generator.from_seed(int(seed))
            # Eagerly, the adjoint stops outer tapes during its forward loop, which
            # would also stop the trace's own tape: run eager solves as a graph.
            self._solve_in_graph = _GraphSolves({
                direction: tf.function(lambda z, d=direction: self._solve(z, *d), autograph=False,
                                       reduce_retracing=True)
                for direction in ((self._t0, self._t1), (self._t1, self._t0))
            })  # fmt: skip
            super().__init__(forward_min_event_ndims=1, validate_args=validate_args, parameters=parameters, name=name)

    @classmethod
    def _parameter_properties(cls, dtype):
        return dict()

    @property
    def vector_field(self):
        return self._vector_field

    def _draw_noise(self, z):
        if self._trace == "exact":
            return None
        seed = self._noise_generator.make_seeds(1)[:, 0]
        shape = tf.shape(z)
        if self._noise == "gaussian":
            return tf.random.stateless_normal(shape, seed, dtype=z.dtype)
        signs = tf.random.stateless_uniform(shape, seed, minval=0, maxval=2, dtype=tf.int32)
        return tf.cast(2 * signs - 1, z.dtype)

    def _solve_any_mode(self, z, t_start, t_end):
        if tf.executing_eagerly():
            return self._solve_in_graph[(t_start, t_end)](z)
        return self._solve(z, t_start, t_end)

    def _solve(self, z, t_start, t_end):
        """One augmented solve; returns ``(z_end, log_det, regularization dict)``."""
        noise = self._draw_noise(z)
        dynamics = _augmented_dynamics(self._vector_field, self._trace, noise, self._regularize)
        zeros = tf.zeros(tf.shape(z)[:-1], z.dtype)
        state = (z, zeros, zeros, zeros) if self._regularize else (z, zeros)
        times = tf.constant([t_start, t_end], dtype=tf.float64 if z.dtype == tf.float64 else tf.float32)
        solver = dict(self._solver_kwargs)
        override = current_tolerances()
        if override is not None:
            solver["rtol"], solver["atol"] = override
        solution = solve(dynamics, state, times, **solver)
        final = tf.nest.map_structure(lambda x: x[-1], solution.ys)
        regularization = {}
        if self._regularize:
            # Integrated backwards the accumulators are negative; report magnitudes.
            sign = 1.0 if t_end > t_start else -1.0
            regularization = {"kinetic_energy": sign * final[2], "jacobian_frobenius": sign * final[3]}
        return final[0], final[1], regularization

    def _augmented_forward(self, x):
        y, fldj, regularization = self._solve_any_mode(x, self._t0, self._t1)
        return y, {"fldj": fldj, "ildj": -fldj, **regularization}

    def _augmented_inverse(self, y):
        # Integrating t1 -> t0 accumulates -∫ tr dt = log|det ∂x/∂y|.
        x, ildj, regularization = self._solve_any_mode(y, self._t1, self._t0)
        return x, {"ildj": ildj, "fldj": -ildj, **regularization}

    def _forward(self, x):
        return self._augmented_forward(x)[0]

    def _inverse(self, y):
        return self._augmented_inverse(y)[0]

    def _forward_log_det_jacobian(self, x):
        cached = self._cache.forward_attributes(x)
        if "fldj" not in cached:
            cached.update(self._augmented_forward(x)[1])
        return cached["fldj"]

    def _inverse_log_det_jacobian(self, y):
        cached = self._cache.inverse_attributes(y)
        if "ildj" not in cached:
            cached.update(self._augmented_inverse(y)[1])
        return cached["ildj"]

    def inverse_and_regularization(self, y):
        """``(x, ildj, {"kinetic_energy": [...], "jacobian_frobenius": [...]})`` in one solve.

        Requires ``regularize=True``; each regularizer is per event ``[...]``.
        """
        if not self._regularize:
            raise ValueError("construct the bijector with regularize=True to get RNODE terms.")
        x, attrs = self._augmented_inverse(tf.convert_to_tensor(y))
        return x, attrs["ildj"], {k: attrs[k] for k in ("kinetic_energy", "jacobian_frobenius")}

    def forward_and_regularization(self, x):
        """``(y, fldj, regularization dict)`` in one solve (see ``inverse_and_regularization``)."""
        if not self._regularize:
            raise ValueError("construct the bijector with regularize=True to get RNODE terms.")
        y, attrs = self._augmented_forward(tf.convert_to_tensor(x))
        return y, attrs["fldj"], {k: attrs[k] for k in ("kinetic_energy", "jacobian_frobenius")}
