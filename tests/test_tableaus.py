"""Tests for tfode/tableaus.py: the coefficients, checked algebraically.

Every tableau is checked against the Butcher order conditions, computed here
from scratch by enumerating rooted trees: the propagated solution has exactly
its declared order, the embedded solution its declared embedded order, and the
dense output satisfies the conditions of its interpolation order for every
``theta``. A single mistyped coefficient breaks one of these identities.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import numpy as np
import pytest
from conftest import ADAPTIVE_METHODS, FIXED_METHODS

import tfode
from tfode import tableaus
from tfode.tableaus import ButcherTableau, get_tableau

ALL_METHODS = tfode.method_names()

# Rational coefficients are stored as doubles (dopri8's as rational approximations
# accurate to ~1e-12), so satisfied conditions hold to ~1e-12; violated ones are off by
# more than 1e-7 (the smallest violation, dopri8 at order 9, is 1.6e-7).
_HOLDS = 1e-10
_VIOLATED = 1e-8

# Interpolation order of the dense output, i.e. the order conditions its weights
# b_i(theta) satisfy: Hairer's and Tsitouras' 4th-order extensions, dopri8's 6th-degree
# extension (5th order: its order-6 conditions fail by ~5e-6), and cubic Hermite (order 3,
# capped by the order of the solution it interpolates).
_DENSE_ORDER = {"dopri5": 4, "tsit5": 4, "dopri8": 5}


def _dense_order(method):
    tableau = get_tableau(method)
    return _DENSE_ORDER.get(method, min(tableau.order, 3))


# --------------------------------------------------------------------------- rooted trees


@functools.cache
def _trees(n):
    """Rooted trees with ``n`` vertices, each a sorted tuple of its children's trees."""
    if n == 1:
        return ((),)

    def partitions(total, largest):
        if total == 0:
            yield ()
            return
        for size in range(min(total, largest), 0, -1):
            for rest in partitions(total - size, size):
                yield (size, *rest)

    out = set()
    for sizes in partitions(n - 1, n - 1):
        for children in itertools.product(*(_trees(s) for s in sizes)):
            out.add(tuple(sorted(children)))
    return tuple(sorted(out))


def _order_of(tree):
    return 1 + sum(_order_of(child) for child in tree)


def _density(tree):
    """gamma(t) = |t| * prod gamma(children): the exact solution's weight is 1/gamma."""
    return _order_of(tree) * np.prod([_density(child) for child in tree])


def _stage_weights(tree, a):
    """Phi_i(t) = prod_children (A Phi(child))_i, a vector over stages."""
    out = np.ones(a.shape[0])
    for child in tree:
        out = out * (a @ _stage_weights(child, a))
    return out


def _residual(weights, a, tree, scale=1.0):
    """``weights . Phi(t) - scale / gamma(t)``: zero iff the order condition for ``tree`` holds."""
    return float(weights @ _stage_weights(tree, a) - scale / _density(tree))


def _max_residual(weights, a, order, theta=1.0):
    return max(abs(_residual(weights, a, tree, theta**order)) for tree in _trees(order))


def _matrix(tableau):
    a = np.zeros((tableau.num_stages, tableau.num_stages))
    for i, row in enumerate(tableau.a):
        a[i, : len(row)] = row
    return a


def _extended_matrix(tableau):
    """The stage matrix including ``f(t1, y1)`` (row ``b``) when the tableau is not FSAL."""
    a = _matrix(tableau)
    if tableau.fsal:
        return a
    s = tableau.num_stages
    ext = np.zeros((s + 1, s + 1))
    ext[:s, :s] = a
    ext[s, :s] = tableau.b
    return ext


def test_tree_counts():
    # OEIS A000081: the number of order conditions per order.
    assert [len(_trees(n)) for n in range(1, 10)] == [1, 1, 2, 4, 9, 20, 48, 115, 286]


# --------------------------------------------------------------------------- order conditions


@pytest.mark.parametrize("method", ALL_METHODS)
def test_solution_has_exactly_its_order(method):
    tableau = get_tableau(method)
    a, b = _matrix(tableau), np.array(tableau.b)
    for order in range(1, tableau.order + 1):
        assert _max_residual(b, a, order) < _HOLDS, f"order-{order} conditions fail"
    assert _max_residual(b, a, tableau.order + 1) > _VIOLATED, "order is higher than declared"


@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_embedded_solution_has_exactly_its_order(method):
    tableau = get_tableau(method)
    a = _matrix(tableau)
    b_embedded = np.array(tableau.b) - np.array(tableau.b_error)
    for order in range(1, tableau.embedded_order + 1):
        assert _max_residual(b_embedded, a, order) < _HOLDS, f"order-{order} conditions fail"
    assert _max_residual(b_embedded, a, tableau.embedded_order + 1) > _VIOLATED
    # The error estimate must be a genuine difference of two solutions, of order q = error_order.
    assert tableau.error_order == min(tableau.order, tableau.embedded_order) + 1


@pytest.mark.parametrize("theta", [0.2, 0.5, 0.85])
@pytest.mark.parametrize("method", ALL_METHODS)
def test_dense_output_order_conditions(method, theta):
    """sum_i b_i(theta) Phi_i(t) = theta^|t| / gamma(t) for every tree up to the dense order."""
    tableau = get_tableau(method)
    a = _extended_matrix(tableau)
    weights = tableau.dense @ theta ** np.arange(1, tableau.dense.shape[1] + 1)
    for order in range(1, _dense_order(method) + 1):
        assert _max_residual(weights, a, order, theta) < _HOLDS, f"order-{order} conditions fail"


@pytest.mark.parametrize("method", ALL_METHODS)
def test_dense_output_endpoints(method):
    tableau = get_tableau(method)
    s_ext = tableau.num_extended_stages
    # theta = 1 reproduces the step's solution: the weights are b (and 0 for f(t1, y1)).
    b_ext = np.concatenate([tableau.b, np.zeros(s_ext - tableau.num_stages)])
    np.testing.assert_allclose(tableau.dense.sum(axis=1), b_ext, atol=1e-12)
    # d/dtheta at theta = 0 is the first stage alone: the slope is f(t0, y0). (dopri8 folds
    # its ~1e-12 renormalisation into the linear term, hence atol 1e-11.)
    np.testing.assert_allclose(tableau.dense[:, 0], np.eye(s_ext)[0], atol=1e-11)


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize("method", ALL_METHODS)
def test_structure(method):
    tableau = get_tableau(method)
    s = tableau.num_stages
    assert tableau.name == method
    assert tableau.c[0] == 0.0
    assert [len(row) for row in tableau.a] == list(range(s))
    np.testing.assert_allclose(_matrix(tableau).sum(axis=1), tableau.c, atol=1e-12)
    assert sum(tableau.b) == pytest.approx(1.0, abs=1e-12)
    assert tableau.adaptive == (method in ADAPTIVE_METHODS)
    if tableau.adaptive:
        assert sum(tableau.b_error) == pytest.approx(0.0, abs=1e-12)
    assert tableau.citation


FSAL = {"dopri5": True, "tsit5": True, "bosh3": True, "dopri8": True}
# New evaluations of f per step: stages after the first, plus f(t1, y1) when not FSAL.
FN_EVALS_PER_STEP = {
    "dopri5": 6,
    "tsit5": 6,
    "bosh3": 3,
    "fehlberg2": 3,
    "adaptive_heun": 2,
    "dopri8": 13,
    "euler": 1,
    "midpoint": 2,
    "rk4": 4,
}


@pytest.mark.parametrize("method", ALL_METHODS)
def test_fsal_is_derived(method):
    tableau = get_tableau(method)
    assert tableau.fsal == FSAL.get(method, False)
    assert tableau.num_extended_stages == tableau.num_stages + (0 if tableau.fsal else 1)
    assert tableau.fn_evals_per_step == FN_EVALS_PER_STEP[method]


def test_fsal_detects_a_custom_fsal_tableau():
    # Heun's method written with an explicit f(t1, y1) stage.
    heun_fsal = ButcherTableau(
        name="heun_fsal", order=2, c=(0.0, 1.0, 1.0), a=((), (1.0,), (0.5, 0.5)), b=(0.5, 0.5, 0.0)
    )
    assert heun_fsal.fsal and heun_fsal.fn_evals_per_step == 2
    # Same stages, but the last stage is not at the new solution: not FSAL.
    not_fsal = ButcherTableau(
        name="not_fsal", order=2, c=(0.0, 1.0, 1.0), a=((), (1.0,), (0.4, 0.6)), b=(0.5, 0.5, 0.0)
    )
    assert not not_fsal.fsal and not_fsal.fn_evals_per_step == 3


# --------------------------------------------------------------------------- validation


def _corrupt_row_sum(t):
    a = list(t.a)
    a[2] = (a[2][0] + 1e-3, *a[2][1:])
    return dataclasses.replace(t, a=tuple(a))


def _corrupt_weights(t):
    return dataclasses.replace(t, b=(t.b[0] + 1e-3, *t.b[1:]))


def _corrupt_error_weights(t):
    return dataclasses.replace(t, b_error=(t.b_error[0] + 1e-3, *t.b_error[1:]))


def _corrupt_dense(t):
    dense = t.dense.copy()
    dense[1, -1] += 1e-3
    return dataclasses.replace(t, dense=dense)


def _short_row(t):
    return dataclasses.replace(t, a=(*t.a[:-1], t.a[-1][:-1]))


def _short_b(t):
    return dataclasses.replace(t, b=t.b[:-1])


def _short_b_error(t):
    return dataclasses.replace(t, b_error=t.b_error[:-1])


def _dense_rows(t):
    return dataclasses.replace(t, dense=t.dense[:-1])


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (_corrupt_row_sum, r"row 2 of `a` sums to"),
        (_corrupt_weights, r"weights `b` sum to"),
        (_corrupt_error_weights, r"error weights sum to"),
        (_corrupt_dense, r"dense output at theta=1"),
        (_short_row, r"`a` must have rows"),
        (_short_b, r"`b` must have 7 entries"),
        (_short_b_error, r"`b_error` must have 7 entries"),
        (_dense_rows, r"dense output has 6 rows, expected 7"),
    ],
)
def test_corrupted_tableau_raises(corrupt, match):
    dopri5 = get_tableau("dopri5")
    with pytest.raises(ValueError, match=match):
        corrupt(dopri5)


def test_consistency_tolerance_rejects_small_errors():
    # A 1e-6 slip in one weight is far below what a solve would reveal quickly, yet is caught.
    rk4 = get_tableau("rk4")
    with pytest.raises(ValueError, match="weights `b`"):
        dataclasses.replace(rk4, b=(rk4.b[0] + 1e-6, *rk4.b[1:]))


# --------------------------------------------------------------------------- registry


def test_registry():
    names = tfode.method_names()
    assert set(names) == set(tableaus.METHODS)
    assert set(ADAPTIVE_METHODS) == {"dopri5", "tsit5", "bosh3", "fehlberg2", "adaptive_heun", "dopri8"}
    assert set(FIXED_METHODS) == {"euler", "midpoint", "rk4"}
    # Adaptive methods are listed first.
    assert names[: len(ADAPTIVE_METHODS)] == ADAPTIVE_METHODS


def test_get_tableau():
    tableau = get_tableau("tsit5")
    assert get_tableau(tableau) is tableau
    with pytest.raises(ValueError, match=r"Unknown method='rk45'.*dopri5.*tsit5.*rk4"):
        get_tableau("rk45")
    with pytest.raises(ValueError, match="Unknown method"):
        get_tableau(None)
