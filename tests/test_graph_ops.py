"""Ops per iteration of the integration loop in graph mode (``tfode/_graph_ops.py``).

Without XLA each op of the loop body costs a fixed dispatch per step, so the
count is the graph-mode (TF Serving) latency of a small solve. The bounds are the
counts measured when they were set (field ``-y``, one evaluation = 1 ``Neg`` plus
the NaN-gradient guard): a change that adds ops per step must raise them
deliberately.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfode  # noqa: E402
from tfode._graph_ops import integration_loop_ops, while_body_ops  # noqa: E402

# (method, number of times) -> ops in the loop body. Before the FSAL tableaus reused the last
# stage's state as y1: dopri5 247 / 348, tsit5 253 / 364; before the controller skipped its static
# no-op terms and the status update was shortened: 234 / 335, 238 / 349.
BOUNDS = {("dopri5", 2): 217, ("dopri5", 5): 318, ("tsit5", 2): 221, ("tsit5", 5): 332, ("rk4", 2): 115}


@pytest.mark.parametrize("method, num_times", BOUNDS, ids=[f"{m}-T{n}" for m, n in BOUNDS])
def test_loop_body_op_count_does_not_regress(method, num_times):
    options = {"step_size": 0.1} if method == "rk4" else None
    counts = integration_loop_ops(lambda t, y: -y, tf.ones([3]), tf.linspace(0.0, 1.0, num_times), method=method,
                                  rtol=1e-5, atol=1e-5, options=options)  # fmt: skip
    evaluations = 4 if method == "rk4" else 6  # new evaluations per step (FSAL: the 7th is the next step's first)
    assert counts["Neg"] == evaluations
    assert sum(counts.values()) <= BOUNDS[(method, num_times)], counts.most_common()


# Per-sample loop (what served signatures run), batch size unknown as in an export: before the
# static-rank row checks, 394 / 696.
PER_SAMPLE_BOUNDS = {2: 316, 5: 618}


@pytest.mark.parametrize("num_times", PER_SAMPLE_BOUNDS, ids=[f"T{n}" for n in PER_SAMPLE_BOUNDS])
def test_per_sample_loop_body_op_count_does_not_regress(num_times):
    t = tf.tile(tf.linspace(0.0, 1.0, num_times)[None], [3, 1])
    config = tfode.SolverConfig(rtol=1e-5, atol=1e-5, batch_axis=0)
    counts = integration_loop_ops(lambda t, y: -y, tf.TensorSpec([None, 3]), t, solver=config)
    assert counts["Neg"] == 6
    assert sum(counts.values()) <= PER_SAMPLE_BOUNDS[num_times], counts.most_common()


def test_while_body_ops_sees_nested_loops():
    @tf.function(autograph=False)
    def nested(x):
        def outer(i, x):
            return i + 1, tf.while_loop(lambda j, y: j < 3, lambda j, y: (j + 1, tf.sin(y)), (0, x))[1]

        return tf.while_loop(lambda i, x: i < 2, outer, (0, x))[1]

    loops = while_body_ops(nested.get_concrete_function(tf.TensorSpec([], tf.float32)).graph)
    assert len(loops) == 2
    (outer,) = [name for name in loops if loops[name]["Sin"] == 0]
    (inner,) = [name for name in loops if loops[name]["Sin"] == 1]
    assert inner.startswith(outer + "/")
