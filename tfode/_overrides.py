"""Per-call solver tolerance overrides (the serving tolerance knob).

``with solver_tolerances(rtol, atol): model(x)`` makes every tfode layer or
model traced inside the block use these (possibly symbolic) tolerances instead
of its own. The override is read at trace time, so a serving signature can
take ``rtol``/``atol`` as inputs; nothing is assigned, so concurrent requests
with different tolerances do not interfere.
"""

from __future__ import annotations

import contextlib
import threading

__all__ = ["current_tolerances", "solver_tolerances"]

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
