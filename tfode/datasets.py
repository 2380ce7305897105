"""Seeded toy data generated locally (nothing is downloaded).

2-D densities of the FFJORD paper (Grathwohl et al. 2019, Fig. 2), each a
float32 array ``[num_samples, 2]`` roughly standardised to ``[-4, 4]²``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TOY_2D", "toy_2d"]


def _eight_gaussians(rng, n):
    centers = [(1, 0), (-1, 0), (0, 1), (0, -1)]
    centers += [(s1 / np.sqrt(2), s2 / np.sqrt(2)) for s1 in (1, -1) for s2 in (1, -1)]
    centers = 4.0 * np.array(centers)
    points = rng.normal(size=(n, 2)) * 0.5 + centers[rng.integers(0, 8, n)]
    return points / 1.414


def _moons(rng, n):
    n_upper = n // 2
    angles_upper = rng.uniform(0, np.pi, n_upper)
    angles_lower = rng.uniform(0, np.pi, n - n_upper)
    upper = np.stack([np.cos(angles_upper), np.sin(angles_upper)], axis=1)
    lower = np.stack([1 - np.cos(angles_lower), 0.5 - np.sin(angles_lower)], axis=1)
    points = np.concatenate([upper, lower]) + rng.normal(scale=0.1, size=(n, 2))
    return (points * 2 + np.array([-1.0, -0.2])) * 1.0


def _circles(rng, n):
    n_outer = n // 2
    angles = rng.uniform(0, 2 * np.pi, n)
    radius = np.where(np.arange(n) < n_outer, 1.0, 0.5)
    points = np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius[:, None]
    return (points + rng.normal(scale=0.08, size=(n, 2))) * 3.0


def _rings(rng, n):
    radii = np.array([1.0, 2.0, 3.0, 4.0])[rng.integers(0, 4, n)]
    angles = rng.uniform(0, 2 * np.pi, n)
    points = np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii[:, None]
    return points + rng.normal(scale=0.08, size=(n, 2))


def _checkerboard(rng, n):
    x1 = rng.uniform(0, 1, n) * 4 - 2
    x2 = rng.uniform(0, 1, n) - rng.integers(0, 2, n) * 2.0
    x2 = x2 + (np.floor(x1) % 2)
    return np.stack([x1, x2], axis=1) * 2


def _two_spirals(rng, n):
    half = n // 2
    radius = np.sqrt(rng.uniform(size=half)) * 540 * (2 * np.pi) / 360
    d1x = -np.cos(radius) * radius + rng.uniform(size=half) * 0.5
    d1y = np.sin(radius) * radius + rng.uniform(size=half) * 0.5
    arm = np.stack([d1x, d1y], axis=1)
    points = np.concatenate([arm, -arm]) / 3
    points = points + rng.normal(size=points.shape) * 0.1
    if n % 2:
        points = np.concatenate([points, points[:1]])
    return points


def _pinwheel(rng, n):
    radial_std, tangential_std, num_classes, rate = 0.3, 0.1, 5, 0.25
    angles = np.linspace(0, 2 * np.pi, num_classes, endpoint=False)
    features = rng.normal(size=(n, 2)) * np.array([radial_std, tangential_std])
    features[:, 0] += 1.0
    labels = rng.integers(0, num_classes, n)
    rotation = angles[labels] + rate * np.exp(features[:, 0])
    matrices = np.stack([np.cos(rotation), -np.sin(rotation), np.sin(rotation), np.cos(rotation)], axis=1)
    matrices = matrices.reshape(-1, 2, 2)
    return 2 * np.einsum("ti,tij->tj", features, matrices)


def _swissroll(rng, n):
    t = 1.5 * np.pi * (1 + 2 * rng.uniform(size=n))
    points = np.stack([t * np.cos(t), t * np.sin(t)], axis=1)
    points = points + rng.normal(scale=1.0, size=(n, 2))
    return points / 5.0


TOY_2D = {
    "8gaussians": _eight_gaussians,
    "moons": _moons,
    "rings": _rings,
    "circles": _circles,
    "checkerboard": _checkerboard,
    "2spirals": _two_spirals,
    "pinwheel": _pinwheel,
    "swissroll": _swissroll,
}


def toy_2d(name, num_samples, seed=0):
    """Sample a 2-D toy density.

    Args:
        name: one of ``TOY_2D``: 8gaussians, moons, rings, circles,
            checkerboard, 2spirals, pinwheel, swissroll.
        num_samples: positive int.
        seed: int seed (same seed, same samples).

    Returns:
        float32 array ``[num_samples, 2]``.

    Raises:
        ValueError: unknown name or non-positive ``num_samples``.
    """
    if name not in TOY_2D:
        raise ValueError(f"Unknown toy data set {name!r}; valid names are: {', '.join(TOY_2D)}.")
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}.")
    rng = np.random.default_rng(seed)
    return TOY_2D[name](rng, int(num_samples)).astype(np.float32)
