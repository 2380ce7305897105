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
from tfode._overrides import current_tolerances, record_fn_evals
from tfode._xla import in_xla_context
from tfode.adjoint import record_stats
from tfode.solvers import solve

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


def _solve_rows(graph_solve, z, tolerances):
    """Runs an eager-mode graph solve on ``z`` ``[..., D]`` flattened to rows ``[N, D]``.

    The graph function relaxes its input shape when retraced for a new one; across
    input ranks that relaxation is an unknown rank, which a vector field (and the
    exact trace's static ``D``) cannot handle. Rows keep every trace at rank 2, so
    any batch shape works on the same bijector. Returns ``graph_solve``'s
    ``(z_end, log_det, regularization)`` reshaped back to ``[..., D]`` and ``[...]``.
    """
    if z.shape.rank is None or z.shape.rank == 0 or not z.shape[-1]:
        return graph_solve(z, tolerances)  # a scalar or an empty event: the solve names the error
    shape = tf.shape(z)
    z_end, log_det, terms = graph_solve(tf.reshape(z, [-1, z.shape[-1]]), tolerances)
    batch = shape[:-1]
    terms = {key: tf.reshape(value, batch) for key, value in terms.items()}
    return tf.reshape(z_end, shape), tf.reshape(log_det, batch), terms


class _SolveStats(tf.Module):
    """Counters of one solve of the bijector: int32 variables ``num_fn_evals``, ``num_steps``, ``status``.

    Under a ``tf.distribute`` strategy each replica writes its own copy (synchronized
    on read, so an update is no cross-replica merge); reads outside replica context
    give the first replica's counts.
    """

    def __init__(self, name):
        super().__init__(name=name)
        with self.name_scope:
            self.num_fn_evals, self.num_steps, self.status = (
                tf.Variable(0, dtype=tf.int32, trainable=False, name=field,
                            synchronization=tf.VariableSynchronization.ON_READ,
                            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
                for field in ("num_fn_evals", "num_steps", "status")
            )  # fmt: skip


class _GraphSolves:
    """Holds the eager-mode graph solves out of TF's object tracking (not saved)."""

    def __init__(self, by_key):
        self.by_key = by_key

    def __getitem__(self, key):
        return self.by_key[key]


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
        method, rtol, atol, options: solver settings (see ``tfode.solve``).
        adjoint: gradients by the adjoint method; ``adjoint_norm`` as in ``solve``.
        regularize: deprecated and ignored. RNODE's kinetic energy ``∫||f||² dt``
            and Jacobian Frobenius norm ``∫||∂f/∂z||_F² dt`` (Hutchinson estimate
            ``||εᵀ∂f/∂z||²`` with ``trace="hutchinson"``, exact otherwise) are
            integrated by ``forward_and_regularization``/``inverse_and_regularization``
            on any bijector, and by no other method.
        seed: Hutchinson noise. An int (default 0) seeds a ``tf.random.Generator``
            that hands each solve a fresh stateless seed: reproducible, and it
            compiles under XLA. ``None`` draws from TF's stateful op-level RNG: not
            reproducible, and refused under XLA (``jit_compile=True``).
        solve_stats: where each solve writes its counters: an object with any of
            the variables ``num_fn_evals``, ``num_steps``, ``status`` (e.g. a
            ``tfode.BackwardStats``). Default: the bijector's own int32 variables.
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
        method="dopri5",
        rtol=1e-5,
        atol=1e-5,
        options=None,
        adjoint=True,
        adjoint_norm="seminorm",
        regularize=False,
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
            self._solver_kwargs = dict(method=method, rtol=rtol, atol=atol, options=options,
                                       adjoint=adjoint, adjoint_norm=adjoint_norm)  # fmt: skip
            self._noise_generator = None if seed is None else tf.random.Generator.from_seed(int(seed))
            self._solve_stats = _SolveStats("solve_stats") if solve_stats is None else solve_stats
            self._backward_stats = _SolveStats("backward_stats") if backward_stats is None else backward_stats
            # Eagerly, the adjoint stops outer tapes during its forward loop, which
            # would also stop the trace's own tape: run eager solves as a graph.
            self._solve_in_graph = _GraphSolves({
                key: tf.function(lambda z, tolerances, k=key: self._solve(z, *k, tolerances), autograph=False,
                                 reduce_retracing=True)
                for key in ((self._t0, self._t1, False), (self._t1, self._t0, False),
                            (self._t0, self._t1, True), (self._t1, self._t0, True))
            })  # fmt: skip
            super().__init__(forward_min_event_ndims=1, validate_args=validate_args, parameters=parameters, name=name)

    @classmethod
    def _parameter_properties(cls, dtype):
        return dict()

    @property
    def vector_field(self):
        return self._vector_field

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

    def _solve_any_mode(self, z, t_start, t_end, regularize=False):
        # A `tfode.solver_tolerances` block is read here, not when the eager-mode
        # function was traced: its values reach that function as tensor arguments.
        tolerances = current_tolerances()
        if tf.executing_eagerly():
            if tolerances is not None:
                tolerances = tuple(tf.cast(value, tf.float64) for value in tolerances)
            return _solve_rows(self._solve_in_graph[(t_start, t_end, regularize)], z, tolerances)
        return self._solve(z, t_start, t_end, regularize, tolerances)

    def _solve(self, z, t_start, t_end, regularize, tolerances=None):
        """One augmented solve; returns ``(z_end, log_det, regularization dict)``.

        ``z``: ``[..., D]``; ``log_det`` and each regularizer ``[...]``;
        ``tolerances``: ``None`` or ``(rtol, atol)`` replacing the bijector's.
        """
        _check_event("x" if t_start == self._t0 else "y", z, self._trace)
        noise = self._draw_noise(z)
        dynamics = _augmented_dynamics(self._vector_field, self._trace, noise, regularize, self.validate_args)
        zeros = tf.zeros(tf.shape(z)[:-1], z.dtype)
        state = (z, zeros, zeros, zeros) if regularize else (z, zeros)
        times = tf.constant([t_start, t_end], dtype=tf.float64 if z.dtype == tf.float64 else tf.float32)
        solver = dict(self._solver_kwargs)
        if tolerances is not None:
            solver["rtol"], solver["atol"] = tolerances
        solution = solve(dynamics, state, times, backward_stats=self._backward_stats, **solver)
        record_stats(self._solve_stats, solution.stats)
        record_fn_evals(solution.stats.num_fn_evals)
        final = tf.nest.map_structure(lambda x: x[-1], solution.ys)
        regularization = {}
        if regularize:
            # Integrated backwards the accumulators are negative; report magnitudes.
            sign = 1.0 if t_end > t_start else -1.0
            regularization = {"kinetic_energy": sign * final[2], "jacobian_frobenius": sign * final[3]}
        return final[0], final[1], regularization

    def _augmented_forward(self, x):
        y, fldj, _ = self._solve_any_mode(x, self._t0, self._t1)
        return y, {"fldj": fldj, "ildj": -fldj}

    def _augmented_inverse(self, y):
        # Integrating t1 -> t0 accumulates -∫ tr dt = log|det ∂x/∂y|.
        x, ildj, _ = self._solve_any_mode(y, self._t1, self._t0)
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
            x, ildj, terms = self._solve_any_mode(tf.convert_to_tensor(y, dtype_hint=tf.float32), self._t1,
                                                  self._t0, regularize=True)  # fmt: skip
            return x, ildj, {k: terms[k] for k in _REGULARIZERS}

    def forward_and_regularization(self, x, name="forward_and_regularization"):
        """``(y, fldj, regularization dict)`` in one solve ``t0 -> t1`` (see ``inverse_and_regularization``)."""
        with tf.name_scope(name):
            y, fldj, terms = self._solve_any_mode(tf.convert_to_tensor(x, dtype_hint=tf.float32), self._t0,
                                                  self._t1, regularize=True)  # fmt: skip
            return y, fldj, {k: terms[k] for k in _REGULARIZERS}
