"""Continuous normalizing flows as a TensorFlow Probability bijector.

With ``dz/dt = f(t, z)`` the log-density changes by the trace of the Jacobian
(instantaneous change of variables, Chen et al. 2018, Theorem 1):

    d log p(z(t)) / dt = -tr(∂f/∂z(t)),

so ``forward`` (``t0 -> t1``) has ``log|det J| = ∫_{t0}^{t1} tr(∂f/∂z) dt``.
Forward and inverse each solve ONE augmented system ``(z, log-det)`` and fill
the bijector cache, so ``log_prob`` does not solve twice. The log-det is
carried reduced per event (one number per sample), which keeps the solver's
error control on ``z`` undistorted. RNODE's regularizers are two more scalar
channels per event, integrated only by ``forward_and_regularization`` /
``inverse_and_regularization``: ``forward``, ``inverse``, ``log_prob`` and
``sample`` solve the smaller state.

References:
    Chen, Rubanova, Bettencourt & Duvenaud (2018), "Neural Ordinary Differential Equations".
    Grathwohl et al. (2019), "FFJORD: Free-form Continuous Dynamics for Scalable
    Reversible Generative Models" (Hutchinson's trace estimator).
    Finlay, Jacobsen, Nurbekyan & Oberman (2020), "How to train your neural ODE:
    the world of Jacobian and kinetic regularization" (RNODE).
"""

from __future__ import annotations

import numbers

import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.internal import cache_util

from tfode._module_variables import KerasVariables
from tfode._tf_compat import in_xla_context
from tfode.config import DEFAULTS, as_config
from tfode.solvers import solve, solver_config
from tfode.stats import SolveStats, record_stats

__all__ = ["ContinuousFlowBijector"]

_TRACES = ("exact", "hutchinson")
_NOISES = ("rademacher", "gaussian")
_REGULARIZERS = ("kinetic_energy", "jacobian_frobenius")


def _check_field_output(z, dz, validate_args):
    """Checks ``dz = f(t, z)`` at its first (trace-time) evaluation.

    Returns ``dz``, with a run-time shape assertion when ``validate_args`` and the
    static shapes cannot decide.

    Raises:
        TypeError: ``dz`` is not a tensor or has another dtype than ``z``.
        ValueError: ``dz``'s static shape differs from ``z``'s ``[..., D]``.
    """
    if not tf.is_tensor(dz):
        raise TypeError(f"vector_field must return a tensor dz/dt shaped like z, got {type(dz).__name__}.")
    if dz.dtype != z.dtype:
        raise TypeError(f"vector_field must return dz/dt in z's dtype {z.dtype.name}, got {dz.dtype.name}.")
    if not dz.shape.is_compatible_with(z.shape):
        raise ValueError(
            f"vector_field must return dz/dt with z's shape {z.shape.as_list()} ([..., D]), got {dz.shape.as_list()}."
        )
    if validate_args and not (z.shape.is_fully_defined() and dz.shape.is_fully_defined()):
        message = "vector_field must return dz/dt with z's shape."
        with tf.control_dependencies([tf.debugging.assert_equal(tf.shape(dz), tf.shape(z), message=message)]):
            dz = tf.identity(dz)
    return dz


def _augmented_dynamics(field, trace, noise, regularize, validate_args=False):
    """Build ``g(t, (z, logdet[, kinetic, jacobian])) -> derivatives``.

    ``z``: ``[..., D]``; the scalar channels are ``[...]``:
    ``d logdet/dt = tr(∂f/∂z)`` (exact: ``sum_i (e_iᵀ ∂f/∂z)_i``, D vector-Jacobian
    products; Hutchinson: ``(εᵀ ∂f/∂z) ε``, one VJP), and with ``regularize``
    ``d kinetic/dt = ||f||²`` and ``d jacobian/dt = ||∂f/∂z||_F²`` (exact) or
    ``||εᵀ ∂f/∂z||²`` (Hutchinson). ``noise`` is ``None`` (exact trace) or a
    tensor shaped like ``z``, drawn once per solve.
    """

    def dynamics(t, state):
        z = state[0]
        dim = z.shape[-1]
        with tf.GradientTape(persistent=trace == "exact") as tape:
            tape.watch(z)
            dz = _check_field_output(z, field(t, z), validate_args)
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


def _check_event(name, z, trace):
    """Static checks of a bijector input ``z`` ``[..., D]``, named ``name`` in errors."""
    rank = z.shape.rank
    if rank == 0:
        raise ValueError(f"{name} must have rank >= 1 (events are vectors [..., D]), got a scalar.")
    if rank is None:
        return
    if z.shape[-1] == 0:
        raise ValueError(f"{name} must have event size D >= 1 (its last dimension), got shape {z.shape.as_list()}.")
    if z.shape[-1] is None and trace == "exact":
        raise ValueError(
            f"trace='exact' needs a static event size D (the last dimension of {name}), got shape "
            f"{z.shape.as_list()}; give {name} a static last dimension or use trace='hutchinson'."
        )


def _noise(kind, shape, dtype, seed):
    """Hutchinson noise ``[..., D]``: Rademacher (±1) or standard normal.

    ``seed``: a stateless ``[2]`` seed, or ``None`` for TF's stateful op-level RNG.
    Philox explicitly (not "auto_select", which XLA resolves differently), so a seed
    gives the same Rademacher noise with and without XLA; XLA's normal transform
    differs from TF's, so Gaussian noise has the same law but other values there.
    """
    if seed is None:
        if kind == "gaussian":
            return tf.random.normal(shape, dtype=dtype)
        signs = tf.random.uniform(shape, minval=0, maxval=2, dtype=tf.int32)
    else:
        if kind == "gaussian":
            return tf.random.stateless_normal(shape, seed, dtype=dtype, alg="philox")
        signs = tf.random.stateless_uniform(shape, seed, minval=0, maxval=2, dtype=tf.int32, alg="philox")
    return tf.cast(2 * signs - 1, dtype)


class ContinuousFlowBijector(tfp.bijectors.Bijector):
    """A continuous normalizing flow ``z(t1) = z(t0) + ∫ f(t, z) dt`` as a bijector.

    ``forward`` maps base samples (time ``t0``) to data (time ``t1``);
    ``forward_log_det_jacobian = ∫ tr(∂f/∂z) dt``, one value per event.

    Args:
        vector_field: ``f(t, z)`` with ``z`` ``[..., D]`` returning ``dz/dt`` of the
            same shape and dtype (e.g. ``tfode.layers.TimeMLP``); checked at its
            first call.
        t0, t1: integration interval.
        trace: ``"exact"`` (D vector-Jacobian products per evaluation; low D; needs a
            static D) or ``"hutchinson"`` (one VJP with noise ``ε``: ``E[εᵀ ∂f/∂z ε] = tr``).
        noise: ``"rademacher"`` or ``"gaussian"`` noise for Hutchinson, drawn
            ONCE per solve (resampling inside a solve makes the dynamics
            non-smooth and blows up NFE).
        solver: a ``tfode.SolverConfig`` (default ``tfode.config.DEFAULTS["ContinuousFlowBijector"]``:
            dopri5, ``rtol = atol = 1e-5``, adjoint). ``batch_axis=0`` solves every sample
            on its own (own steps; its ``log_prob`` does not depend on the batch); the default
            solves the batch jointly.
        method, rtol, atol, options, adjoint, adjoint_norm: conveniences that replace
            fields of ``solver`` (as in ``tfode.solve``).

    RNODE's kinetic energy ``∫||f||² dt`` and Jacobian Frobenius norm
    ``∫||∂f/∂z||_F² dt`` (Hutchinson estimate ``||εᵀ∂f/∂z||²`` with
    ``trace="hutchinson"``, exact otherwise) are integrated by
    ``forward_and_regularization``/``inverse_and_regularization`` only. Per-call
    solver settings (e.g. a served request's tolerances) go through
    ``forward_and_log_det``/``inverse_and_log_det(..., solver=...)``, which solve once
    and bypass TFP's cache.

    Eager calls run each solve as a cached traced function (``tfode.solve``'s eager
    cache; the Hutchinson noise drawn per solve is one of its inputs, so new noise
    needs no retrace): the field must be traceable. To step through the field
    eagerly, use ``tf.config.run_functions_eagerly(True)`` with ``adjoint=False``.
        seed: Hutchinson noise. An int (default 0) seeds a ``tf.random.Generator``
            that hands each solve a fresh stateless seed: reproducible, and it
            compiles under XLA. ``None`` draws from TF's stateful op-level RNG: not
            reproducible, and refused under XLA (``jit_compile=True``).
        solve_stats: a ``tfode.SolveStats`` where each solve writes its counters
            (default: the bijector's own).
        backward_stats: the same for the adjoint's backward solve (written when a
            gradient is computed; ``adjoint=True`` only).
        validate_args: TFP convention; also asserts at run time that ``vector_field``
            returns ``z``'s shape when the static shapes cannot tell.
        name: name scope.

    Raises:
        TypeError: ``vector_field`` not callable; ``seed`` neither an int nor None.
        ValueError: unknown ``trace`` or ``noise``; ``t0 == t1``. At the first solve:
            a scalar input (events must be vectors), an event size of 0, an unknown D
            with ``trace="exact"``, a ``vector_field`` output shaped unlike its input,
            ``trace="hutchinson"`` with ``seed=None`` under XLA.

    Example:
        >>> flow = tfode.ContinuousFlowBijector(tfode.layers.TimeMLP(hidden=(64, 64, 64)))
        >>> dist = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(2)), flow)
        >>> dist.log_prob(x); dist.sample(100)
        >>> int(flow.solve_stats.num_fn_evals)  # NFE of the last solve
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
        solver=None,
        method=None,
        rtol=None,
        atol=None,
        options=None,
        adjoint=None,
        adjoint_norm=None,
        seed=0,
        solve_stats=None,
        backward_stats=None,
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
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise TypeError(f"seed must be an int or None, got {seed!r}.")
        with tf.name_scope(name) as name:
            self._vector_field = vector_field
            self._vector_field_variables = KerasVariables(vector_field)  # a Keras field's weights in `variables`
            self._t0, self._t1 = float(t0), float(t1)
            self._trace, self._noise = trace, noise
            base = DEFAULTS["ContinuousFlowBijector"] if solver is None else as_config(solver)
            self._solver = solver_config(base, method=method, rtol=rtol, atol=atol, options=options,
                                         adjoint=adjoint, adjoint_norm=adjoint_norm)  # fmt: skip
            self._noise_generator = None if seed is None else tf.random.Generator.from_seed(int(seed))
            self._solve_stats = SolveStats("solve_stats") if solve_stats is None else solve_stats
            self._backward_stats = SolveStats("backward_stats") if backward_stats is None else backward_stats
            super().__init__(forward_min_event_ndims=1, validate_args=validate_args, parameters=parameters, name=name)

    @classmethod
    def _parameter_properties(cls, dtype):
        return dict()

    @property
    def vector_field(self):
        return self._vector_field

    @property
    def solver(self):
        """The bijector's ``tfode.SolverConfig``."""
        return self._solver

    @property
    def solve_stats(self):
        """Counters of the last solve (either direction): ``num_fn_evals``, ``num_steps``, ``status``.

        Variables (read them after the call, e.g. ``int(flow.solve_stats.num_fn_evals)``);
        a result served from the bijector cache runs no solve and writes nothing.
        """
        return self._solve_stats

    @property
    def backward_stats(self):
        """Counters of the last adjoint backward solve, written by ``tape.gradient``."""
        return self._backward_stats

    def _draw_noise(self, z):
        if self._trace == "exact":
            return None
        if self._noise_generator is None:
            if in_xla_context():
                raise ValueError(
                    "trace='hutchinson' with seed=None draws its noise from TF's stateful RNG, which XLA "
                    "(jit_compile=True) cannot compile reproducibly: pass an int seed (e.g. seed=0)."
                )
            return _noise(self._noise, tf.shape(z), z.dtype, None)
        return _noise(self._noise, tf.shape(z), z.dtype, self._noise_generator.make_seeds(1)[:, 0])

    def _solve(self, z, t_start, t_end, regularize=False, solver=None):
        """One augmented solve; returns ``(z_end, log_det, regularization dict)``.

        ``z``: ``[..., D]``; ``log_det`` and each regularizer ``[...]``;
        ``solver``: ``None`` or a ``SolverConfig`` replacing the bijector's.
        """
        _check_event("x" if t_start == self._t0 else "y", z, self._trace)
        config = self._solver if solver is None else as_config(solver)
        shape = tf.shape(z)
        if config.batch_axis is not None:
            # Per sample: every event of any batch shape [...] is one sample of a flat batch.
            z = tf.reshape(z, tf.stack([-1, shape[-1]]))
        noise = self._draw_noise(z)
        dynamics = _augmented_dynamics(self._vector_field, self._trace, noise, regularize, self.validate_args)
        zeros = tf.zeros(tf.shape(z)[:-1], z.dtype)
        state = (z, zeros, zeros, zeros) if regularize else (z, zeros)
        times = tf.constant([t_start, t_end], dtype=tf.float64 if z.dtype == tf.float64 else tf.float32)
        backward_stats = self._backward_stats if config.adjoint else None
        solution = solve(dynamics, state, times, config, backward_stats=backward_stats)
        record_stats(self._solve_stats, solution.stats)
        final = [tf.reshape(x[-1], shape if i == 0 else shape[:-1]) for i, x in enumerate(solution.ys)]
        regularization = {}
        if regularize:
            # Integrated backwards the accumulators are negative; report magnitudes.
            sign = 1.0 if t_end > t_start else -1.0
            regularization = {"kinetic_energy": sign * final[2], "jacobian_frobenius": sign * final[3]}
        return final[0], final[1], regularization

    def _augmented_forward(self, x):
        y, fldj, _ = self._solve(x, self._t0, self._t1)
        return y, {"fldj": fldj, "ildj": -fldj}

    def _augmented_inverse(self, y):
        # Integrating t1 -> t0 accumulates -∫ tr dt = log|det ∂x/∂y|.
        x, ildj, _ = self._solve(y, self._t1, self._t0)
        return x, {"ildj": ildj, "fldj": -ildj}

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

    def inverse_and_regularization(self, y, name="inverse_and_regularization"):
        """``(x, ildj, {"kinetic_energy": [...], "jacobian_frobenius": [...]})`` in one solve.

        Solves the augmented state with the two RNODE channels (``t1 -> t0``);
        each regularizer is per event ``[...]`` and positive (the integral over
        the path, whichever the direction). Bypasses the bijector cache.

        Args:
            y: ``[..., D]`` points at ``t1``.
        """
        with tf.name_scope(name):
            x, ildj, terms = self._solve(tf.convert_to_tensor(y, dtype_hint=tf.float32), self._t1,
                                                  self._t0, regularize=True)  # fmt: skip
            return x, ildj, {k: terms[k] for k in _REGULARIZERS}

    def inverse_and_log_det(self, y, solver=None, name="inverse_and_log_det"):
        """``(x, ildj)`` from one solve ``t1 -> t0``, optionally with another ``SolverConfig``.

        Bypasses TFP's cache (so a per-call ``solver`` always takes effect).

        Args:
            y: ``[..., D]`` points at ``t1``.
            solver: a ``tfode.SolverConfig`` for this call (e.g. a request's tolerances).
        """
        with tf.name_scope(name):
            x, ildj, _ = self._solve(tf.convert_to_tensor(y, dtype_hint=tf.float32), self._t1, self._t0,
                                     solver=solver)  # fmt: skip
            return x, ildj

    def forward_and_log_det(self, x, solver=None, name="forward_and_log_det"):
        """``(y, fldj)`` from one solve ``t0 -> t1`` (see ``inverse_and_log_det``)."""
        with tf.name_scope(name):
            y, fldj, _ = self._solve(tf.convert_to_tensor(x, dtype_hint=tf.float32), self._t0, self._t1,
                                     solver=solver)  # fmt: skip
            return y, fldj

    def forward_and_regularization(self, x, name="forward_and_regularization"):
        """``(y, fldj, regularization dict)`` in one solve ``t0 -> t1`` (see ``inverse_and_regularization``)."""
        with tf.name_scope(name):
            y, fldj, terms = self._solve(tf.convert_to_tensor(x, dtype_hint=tf.float32), self._t0,
                                                  self._t1, regularize=True)  # fmt: skip
            return y, fldj, {k: terms[k] for k in _REGULARIZERS}
