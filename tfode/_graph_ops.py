"""Count the ops in the while-loop bodies of a traced graph (internal; benchmarks and tests).

Without XLA, TensorFlow's executor runs every op of the loop body once per
iteration, each at a fixed dispatch cost (about a microsecond on a CPU core), so
for small states the number of ops per step is the solve's cost. A count of the
integration loop's body is a deterministic proxy for the graph-mode (TF Serving)
latency that tests can bound.
"""

from __future__ import annotations

import collections

import tensorflow as tf

__all__ = ["integration_loop_ops", "while_body_ops"]

_WHILE_OPS = ("While", "StatelessWhile")


def while_body_ops(graph):
    """``{name: Counter of op types}`` of every while-loop body in ``graph``, nested loops included.

    Args:
        graph: a ``tf.Graph`` (e.g. ``concrete_function.graph``).

    Returns:
        A dict from the while op's name (``outer/inner`` for nested loops) to a
        ``collections.Counter`` of its body's op types (the body's own ops only,
        not those of the loops nested in it).
    """
    library = {f.signature.name: f for f in graph.as_graph_def().library.function}
    found = {}

    def visit(prefix, node_defs):
        for node in node_defs:
            if node.op in _WHILE_OPS:
                body = library[node.attr["body"].func.name]
                name = f"{prefix}{node.name}"
                found[name] = collections.Counter(n.op for n in body.node_def)
                visit(name + "/", body.node_def)

    visit("", graph.as_graph_def().node)
    return found


def integration_loop_ops(func, y0, t, **solve_kwargs):
    """Op types in the body of the integration loop of ``tfode.solve(func, y0, t, **solve_kwargs)``.

    ``y0`` may be a ``tf.TensorSpec`` (e.g. with an unknown batch size, as a served signature
    traces it); the joint and the per-sample (``batch_axis=0``) loops are both found.

    The solve is traced once in a ``tf.function`` (graph mode, no XLA) and the body
    of its ``integrate`` while loop is counted (``Const`` included: in a loop frame
    constants run every iteration too).

    Returns:
        A ``collections.Counter`` of op types; ``sum(counter.values())`` is the total.
    """
    from tfode.solvers import solve  # imported here: tfode.solvers imports much of the package

    traced = tf.function(lambda y: solve(func, y, t, **solve_kwargs).ys, autograph=False)
    loops = while_body_ops(traced.get_concrete_function(y0).graph)
    main = [name for name in loops if name.split("/")[-1].startswith("while")
            and ("integrate/" in name or "integrate_per_sample/" in name)]  # fmt: skip
    if not main:
        raise ValueError(f"no integration loop in the traced solve; while loops: {sorted(loops)}")
    return loops[min(main, key=len)]
