"""Complex states: solve on the real view ``[..., 2]`` (real and imaginary parts).

Every solver piece (error norm, interpolation, adjoint) works on real
tensors; a complex leaf ``z`` of shape ``S`` is carried as the real tensor
``[re z, im z]`` of shape ``S + [2]``, so the error norm is the RMS over real
and imaginary parts (as torchdiffeq does) and time stays real.
"""

from __future__ import annotations

import tensorflow as tf

from tfode.solution import Solution

__all__ = ["expand_tolerance", "has_complex_leaves", "solve_complex"]


def _leaf_dtype(leaf):
    return leaf.dtype if hasattr(leaf, "dtype") else tf.convert_to_tensor(leaf).dtype


def has_complex_leaves(y0):
    """Whether any leaf of ``y0`` is complex64/complex128."""
    return any(tf.as_dtype(_leaf_dtype(leaf)).is_complex for leaf in tf.nest.flatten(y0))


def _to_real(z):
    return tf.stack([tf.math.real(z), tf.math.imag(z)], axis=-1)


def _to_complex(r):
    return tf.complex(r[..., 0], r[..., 1])


def expand_tolerance(tol, structure):
    """A tolerance for the real view: non-scalar tensors gain the trailing axis of size 1."""

    def expand(value):
        if value is None:
            return None
        tensor = tf.convert_to_tensor(value)
        return value if tensor.shape.rank == 0 else tensor[..., None]

    try:
        tf.nest.assert_same_structure(tol, structure)
        if tf.nest.is_nested(structure):
            return tf.nest.map_structure(expand, tol)
    except (ValueError, TypeError):
        pass
    return expand(tol)


def solve_complex(solve, func, y0, t, config, **kwargs):
    """``solve`` (``tfode.solve``) on the real view of complex ``y0``; the solution back as complex.

    ``func(t, z, *args)`` receives and returns complex leaves (its outputs are
    cast to the state's complex dtype); ``config`` is the ``SolverConfig``, whose
    tolerances gain the trailing axis.

    Raises:
        TypeError: when complex and real leaves are mixed, or leaf dtypes differ.
    """
    leaves = [tf.convert_to_tensor(leaf) for leaf in tf.nest.flatten(y0)]
    dtypes = {leaf.dtype for leaf in leaves}
    if len(dtypes) > 1:
        raise TypeError(f"all leaves of y0 must share one dtype, got {sorted(d.name for d in dtypes)}.")
    (complex_dtype,) = dtypes
    structure = y0

    def real_func(time, state, *args):
        z = tf.nest.map_structure(_to_complex, state)
        dz = func(time, z, *args)
        return tf.nest.map_structure(lambda d: _to_real(tf.cast(d, complex_dtype)), dz)

    real_y0 = tf.nest.pack_sequence_as(structure, [_to_real(leaf) for leaf in leaves])
    expanded = {
        name: expand_tolerance(getattr(config, name), structure)
        for name in ("rtol", "atol", "adjoint_rtol", "adjoint_atol")
    }
    solution = solve(real_func, real_y0, t, config.replace(**expanded), **kwargs)
    return Solution(ts=solution.ts, ys=tf.nest.map_structure(_to_complex, solution.ys), stats=solution.stats)
