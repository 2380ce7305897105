"""Tensors a vector field reads from its enclosing scope, and gradients that skip rejected steps (internal).

A ``func`` may close over tensors (``lambda t, y: y @ W``). Backpropagation
through the loop sees them like any other input, but a custom gradient (the
adjoint; the guarded evaluations below) only returns gradients for what it is
given: ``captured_tensors`` finds such tensors, so they can be handed over
explicitly instead of silently losing their gradient. Inside a graph it traces
``func`` once; eagerly, where a field may hold code that cannot be traced
(numpy, Python side effects), it reads the tensors ``func``'s code refers to by
name (closure cells and globals) without running it.
"""

from __future__ import annotations

import inspect

import tensorflow as tf

__all__ = [
    "captured_tensors",
    "guard_nonfinite_gradients",
    "is_differentiable_tensor",
    "referenced_eager_tensors",
]


def is_differentiable_tensor(x):
    """A floating or complex tensor (not a variable handle)."""
    return tf.is_tensor(x) and x.dtype != tf.resource and (x.dtype.is_floating or x.dtype.is_complex)


def referenced_eager_tensors(func):
    """Floating eager tensors that ``func``'s code names in its closure or globals (no call).

    Follows ``functools.partial`` and bound methods to the underlying function;
    other callables (e.g. Keras layers, whose weights are variables) give none.
    """
    while hasattr(func, "func") and callable(func.func):  # functools.partial
        func = func.func
    func = getattr(func, "__func__", func)
    if not inspect.isfunction(func):
        return []
    names = inspect.getclosurevars(func)
    found = []
    for value in [*names.nonlocals.values(), *names.globals.values()]:
        if is_differentiable_tensor(value) and not isinstance(value, tf.Variable):
            found.append(value)
    return found


def captured_tensors(fn, t, leaves, args=(), func=None):
    """Floating tensors that ``fn(t, leaves)`` reads from its enclosing scope.

    In a graph, traces ``fn`` once (its Python runs once more) and returns the
    floating external captures (tensors of the graph being built). Eagerly,
    returns ``referenced_eager_tensors(func)`` for the user's ``func`` instead.
    Variables are excluded: TensorFlow's custom gradients see variable reads by
    themselves.

    Args:
        fn: ``fn(t, leaves) -> leaves``.
        t: scalar time tensor; leaves: list of state tensors; args: tensors ``fn`` is
            traced with as inputs (so they are not reported as captures).
        func: the user's function behind ``fn`` (for the eager lookup).

    Returns:
        A list of tensors, each the very object ``fn`` reads.
    """
    if tf.executing_eagerly():
        return referenced_eager_tensors(func) if func is not None else []
    specs = (
        tf.TensorSpec(t.shape, t.dtype),
        [tf.TensorSpec(leaf.shape, leaf.dtype) for leaf in leaves],
        [tf.TensorSpec(a.shape, a.dtype) for a in args],
    )
    traced = tf.function(lambda t_, y_, a_: fn(t_, list(y_)), autograph=False)
    concrete = traced.get_concrete_function(*specs)
    found, seen = [], set()
    for tensor in concrete.captured_inputs:
        if is_differentiable_tensor(tensor) and id(tensor) not in seen:
            seen.add(id(tensor))
            found.append(tensor)
    return found


def _all_finite(tensors):
    return tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(x)) for x in tensors]))


def dense_gradient(gradient, like):
    """``gradient`` as a tensor, or zeros shaped like ``like`` where it is ``None`` (unconnected)."""
    return tf.zeros_like(like) if gradient is None else tf.convert_to_tensor(gradient)


def guard_nonfinite_gradients(fn, captures):
    """``fn`` whose gradient is zero where its output is not finite.

    A rejected trial step may evaluate ``fn`` outside its domain (``sqrt`` of a
    negative state): its output is NaN and its local derivative too. The step is
    discarded with ``tf.where``, which sends a zero cotangent back, but
    ``0 * NaN`` is NaN and would poison every gradient. Such an evaluation never
    influences an accepted step (a non-finite stage makes the error estimate
    non-finite and the step is rejected), so its exact gradient contribution is
    zero: each evaluation's vector-Jacobian product is computed only when its
    output is finite.

    Args:
        fn: ``fn(t, leaves) -> leaves``.
        captures: tensors ``fn`` reads from its enclosing scope (``captured_tensors``);
            they get gradients like the explicit inputs.

    Returns:
        ``guarded(t, leaves) -> leaves`` with the same values.
    """
    captures = list(captures)

    def guarded(t, leaves):
        num_leaves = len(leaves)

        @tf.custom_gradient
        def evaluate(t, *inputs):
            # Persistent: a caller may ask for several gradients (a persistent outer tape, jacobians).
            with tf.GradientTape(persistent=True) as tape:
                tape.watch([t, *inputs])
                out = list(fn(t, list(inputs[:num_leaves])))

            def grad(*cotangents, variables=None):
                variables = list(variables or [])
                sources = [t, *inputs, *variables]
                cotangents = [dense_gradient(c, o) for c, o in zip(cotangents, out)]

                grads = tape.gradient(out, sources, output_gradients=cotangents,
                                      unconnected_gradients=tf.UnconnectedGradients.ZERO)  # fmt: skip
                # Select, not tf.cond: a cond inside the loop's gradient cannot capture variables.
                finite = _all_finite(out)
                grads = [tf.where(finite, g, tf.zeros_like(g)) for g in map(tf.convert_to_tensor, grads)]
                split = 1 + len(inputs)
                return grads[:split], grads[split:]

            return out, grad

        return list(evaluate(t, *leaves, *captures))

    return guarded
