"""The pieces the ODE-RNN recurrences share: evolving a hidden state over per-series gaps, and running a cell.

Both ODE-RNN recurrences (the backwards encoder and the forwards ``ODERNN``
model) advance their hidden state with ``evolve_over_gaps`` and are run by
``run_cell``, which passes a per-call ``SolverConfig`` to the cell (a Keras
``RNN`` layer cannot).
"""

from __future__ import annotations

import tensorflow as tf

from tfode.config import SolverConfig
from tfode.controllers import ConstantStepSize
from tfode.solvers import solve

__all__ = ["evolve_over_gaps", "gap_solver", "run_cell"]

# Fixed-step methods cover each gap (s in [0, 1]) in this many equal steps.
FIXED_STEPS_PER_GAP = 4


def gap_solver(config: SolverConfig) -> SolverConfig:
    """``config`` for solves over the unit interval: per sample (each series' gap is its own
    problem, so a series' result does not depend on its batch-mates), no adjoint (short
    solves: backpropagation is cheaper than a backward solve per gap), and a fixed-step
    method without a controller takes ``FIXED_STEPS_PER_GAP`` equal steps."""
    if config.controller is None and not config.tableau.adaptive:
        config = config.replace(controller=ConstantStepSize(1.0 / FIXED_STEPS_PER_GAP))
    return config.replace(adjoint=False, batch_axis=0)


def evolve_over_gaps(field, h, gap, config):
    """``h`` ``[B, units]`` evolved by ``dh/dt = field(h)`` over per-series gaps ``gap`` ``[B, 1]``.

    Each series has its own gap: with ``s in [0, 1]``, ``dh/ds = gap * field(s, h)``
    covers all of them in one per-sample solve (a negative gap evolves backwards in
    time); ``field`` receives ``s`` of shape ``[B]``.

    Args:
        field: a vector field ``field(s, h)`` (e.g. ``TimeMLP(time_embedding="none")``).
        h: ``[B, units]``; gap: ``[B, 1]``; config: a ``SolverConfig`` (see ``gap_solver``).

    Returns:
        ``[B, units]``.
    """

    def dynamics(s, h):
        return gap * field(s, h)

    unit = tf.constant([0.0, 1.0], dtype=tf.float64 if h.dtype == tf.float64 else tf.float32)
    return solve(dynamics, h, unit, gap_solver(config)).ys[-1]


def run_cell(cell, inputs, initial_states, mask=None, reverse=False, **call_kwargs):
    """Run a recurrent ``cell(x, states, **call_kwargs) -> (output, states)`` over time.

    Keras' masking rule: at a step whose ``mask`` is False the states are kept and the
    output repeats the previous one (zeros before the first unmasked step).

    Args:
        cell: a Keras layer with ``call(inputs, states, **call_kwargs)``.
        inputs: ``[B, T, F]``; initial_states: list of ``[B, ...]`` tensors.
        mask: optional ``[B, T]`` bool.
        reverse: read the sequence from the last step to the first.
        call_kwargs: passed to every call (e.g. ``solver=``).

    Returns:
        ``(outputs [B, T, units], final_states)``; ``outputs`` in reading order.
    """
    steps = tf.transpose(inputs, [1, 0, 2])
    batch = tf.shape(inputs)[0]
    if mask is None:
        mask = tf.ones(tf.shape(inputs)[:2], tf.bool)
    masks = tf.transpose(mask, [1, 0])
    if reverse:
        steps, masks = tf.reverse(steps, [0]), tf.reverse(masks, [0])
    units = cell.output_size
    first_output = tf.zeros(tf.stack([batch, units]), inputs.dtype)

    def step(carry, elems):
        output, states = carry
        x, keep = elems
        new_output, new_states = cell(x, list(states), **call_kwargs)
        keep = keep[:, None]
        new_states = [tf.where(keep, n, s) for n, s in zip(new_states, states)]
        return tf.where(keep, new_output, output), new_states

    outputs, final = tf.scan(step, (steps, masks), initializer=(first_output, list(initial_states)))
    return tf.transpose(outputs, [1, 0, 2]), [s[-1] for s in final]
