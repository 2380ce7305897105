"""Per-call solver tolerance overrides and NFE recording (for serving).

``with solver_tolerances(rtol, atol): model(x)`` makes every tfode layer or
model traced inside the block use these (possibly symbolic) tolerances instead
of its own. The override is read at trace time, so a serving signature can
take ``rtol``/``atol`` as inputs; nothing is assigned, so concurrent requests
with different tolerances do not interfere.
"""

from __future__ import annotations

import contextlib
import threading

__all__ = ["current_tolerances", "record_fn_evals", "recording_fn_evals", "solver_tolerances"]

_state = threading.local()


@contextlib.contextmanager
def solver_tolerances(rtol, atol):
    """Override the tolerances of tfode layers/models called inside the block.

    Args:
        rtol, atol: positive scalars (Python floats or scalar tensors).
    """
    stack = getattr(_state, "stack", [])
    _state.stack = stack
    stack.append((rtol, atol))
    try:
        yield
    finally:
        stack.pop()


def current_tolerances():
    """The innermost override ``(rtol, atol)``, or ``None``."""
    stack = getattr(_state, "stack", [])
    return stack[-1] if stack else None


@contextlib.contextmanager
def recording_fn_evals():
    """Collect the forward NFE of every tfode layer solve traced inside the block.

    Yields a list that each ``ODELayer`` call appends its solve's
    ``num_fn_evals`` (int32 scalar tensor) to. A serving signature sums them
    into its response, so each request reports its own count instead of reading
    a variable that a concurrent request may overwrite.
    """
    records = []
    stack = getattr(_state, "nfe_stack", [])
    _state.nfe_stack = stack
    stack.append(records)
    try:
        yield records
    finally:
        stack.pop()


def record_fn_evals(num_fn_evals):
    """Append ``num_fn_evals`` to every active ``recording_fn_evals`` block."""
    for records in getattr(_state, "nfe_stack", []):
        records.append(num_fn_evals)
