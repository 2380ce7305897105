"""Seeded toy data generated locally (nothing is downloaded): 2-D densities and time series.

2-D densities of the FFJORD paper (Grathwohl et al. 2019, Fig. 2), each a
float32 array ``[num_samples, 2]`` roughly standardised to ``[-4, 4]²``.
"""

from __future__ import annotations

import numpy as np

from tfode._hopper import hopper

__all__ = ["TOY_2D", "hopper", "periodic_1d", "spirals_2d", "subsample", "toy_2d"]


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
    # One arm of ceil(n / 2) points and its mirror image, cut to n rows (an odd n
    # drops the mirror of the last point); an even n gives both arms n / 2 points.
    half = (n + 1) // 2
    radius = np.sqrt(rng.uniform(size=half)) * 540 * (2 * np.pi) / 360
    d1x = -np.cos(radius) * radius + rng.uniform(size=half) * 0.5
    d1y = np.sin(radius) * radius + rng.uniform(size=half) * 0.5
    arm = np.stack([d1x, d1y], axis=1)
    points = np.concatenate([arm, -arm])[:n] / 3
    return points + rng.normal(size=points.shape) * 0.1


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
        float32 array ``[num_samples, 2]``: exactly ``num_samples`` rows, distinct
        points (each draws its own noise) for every ``num_samples >= 1``.

    Raises:
        ValueError: unknown name or non-positive ``num_samples``.
    """
    if name not in TOY_2D:
        raise ValueError(f"Unknown toy data set {name!r}; valid names are: {', '.join(TOY_2D)}.")
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}.")
    rng = np.random.default_rng(seed)
    return TOY_2D[name](rng, int(num_samples)).astype(np.float32)


def spirals_2d(
    num_spirals=1000,
    num_total=1000,
    num_window=100,
    t_stop=6 * np.pi,
    a=0.0,
    b=0.3,
    noise_std=0.3,
    seed=0,
):
    """Chen et al. (2018) spirals, following their ``generate_spiral2d`` protocol.

    Two reference spirals are traced on ``num_total`` times ``linspace(0, t_stop)``:
    counter-clockwise ``r = a + b θ``, ``(r cos θ + 5, r sin θ)`` with ``θ = t``, and
    clockwise ``r = a + 50 b / θ``, ``(r cos θ - 5, r sin θ)`` with
    ``θ = t_stop + 1 - t``. Each spiral takes one of them (exactly half of each,
    shuffled), a window of ``num_window`` consecutive points starting at a
    uniform index in ``[num_window, num_total - num_window)``, and Gaussian
    noise of std ``noise_std`` on the observations. All windows share the
    times ``ts = linspace(0, t_stop)[:num_window]`` (relative to the window start).

    Args:
        num_spirals: number of series (paper: 1000).
        num_total: points on each reference spiral (paper: 1000).
        num_window: points per series (paper: 100).
        t_stop: end of the reference time grid (paper: 6π).
        a, b: spiral parameters (paper: 0 and 0.3).
        noise_std: observation noise (paper: 0.3).
        seed: int seed.

    Returns:
        dict with ``times`` ``[num_window]`` float32 (shared), ``values``
        ``[num_spirals, num_window, 2]`` noisy observations, ``clean``
        ``[num_spirals, num_window, 2]`` noise-free, ``clean_full``
        ``[num_spirals, num_total, 2]`` (the reference spiral each uses),
        ``start`` ``[num_spirals]`` window start indices and ``clockwise`` ``[num_spirals]`` bools.
    """
    if num_total < 3 * num_window:
        raise ValueError(f"num_total must be >= 3 * num_window, got {num_total} and {num_window}.")
    rng = np.random.default_rng(seed)
    ts = np.linspace(0.0, t_stop, num_total)
    theta_cw = t_stop + 1.0 - ts
    r_cw = a + 50.0 * b / theta_cw
    clockwise_ref = np.stack([r_cw * np.cos(theta_cw) - 5.0, r_cw * np.sin(theta_cw)], axis=1)
    r_cc = a + b * ts
    counter_ref = np.stack([r_cc * np.cos(ts) + 5.0, r_cc * np.sin(ts)], axis=1)
    clockwise = rng.permutation(np.arange(num_spirals) < num_spirals // 2)
    start = rng.integers(num_window, num_total - num_window, num_spirals)
    refs = np.where(clockwise[:, None, None], clockwise_ref[None], counter_ref[None])
    window = start[:, None] + np.arange(num_window)[None]
    clean = np.take_along_axis(refs, window[:, :, None], axis=1)
    values = clean + rng.normal(scale=noise_std, size=clean.shape)
    return {
        "times": ts[:num_window].astype(np.float32),
        "values": values.astype(np.float32),
        "clean": clean.astype(np.float32),
        "clean_full": refs.astype(np.float32),
        "start": start,
        "clockwise": clockwise,
    }


def periodic_1d(num_series=1000, num_times=100, t_max=5.0, noise_std=0.01, seed=0):
    """Rubanova et al. (2019) style periodic toy series, irregularly sampled.

    Each series is ``x(t) = amplitude * sin(2π t / period + phase)`` with
    amplitude ``U(0.5, 1.5)``, period ``U(1, 3)``, phase ``U(0, 2π)``, observed
    at ``num_times`` sorted uniform times in ``[0, t_max]`` (its own times),
    shifted so the first observation is at ``t = 0``, plus noise.

    Returns:
        dict with ``times`` ``[num_series, num_times]``, ``values`` and ``clean``
        ``[num_series, num_times, 1]``, all float32.
    """
    rng = np.random.default_rng(seed)
    times = np.sort(rng.uniform(0.0, t_max, size=(num_series, num_times)), axis=1)
    times = times - times[:, :1]
    amplitude = rng.uniform(0.5, 1.5, size=(num_series, 1))
    period = rng.uniform(1.0, 3.0, size=(num_series, 1))
    phase = rng.uniform(0.0, 2 * np.pi, size=(num_series, 1))
    clean = amplitude * np.sin(2 * np.pi * times / period + phase)
    values = clean + rng.normal(scale=noise_std, size=clean.shape)
    return {
        "times": times.astype(np.float32),
        "values": values[..., None].astype(np.float32),
        "clean": clean[..., None].astype(np.float32),
    }


def subsample(times, values, num_observed, seed=0):
    """Keep ``num_observed`` random time points of each series (sorted).

    Args:
        times: ``[T]`` (shared) or ``[B, T]`` times.
        values: ``[B, T, D]``.
        num_observed: points kept per series, ``1 <= num_observed <= T``.
        seed: int seed.

    Returns:
        ``(times [B, num_observed], values [B, num_observed, D])``, each
        series with its own sorted times.
    """
    values = np.asarray(values)
    batch, length = values.shape[:2]
    if not 1 <= num_observed <= length:
        raise ValueError(f"num_observed must be in [1, {length}], got {num_observed}.")
    times = np.broadcast_to(np.asarray(times), (batch, length))
    rng = np.random.default_rng(seed)
    keep = np.sort(np.argsort(rng.uniform(size=(batch, length)), axis=1)[:, :num_observed], axis=1)
    return (
        np.take_along_axis(times, keep, axis=1).astype(np.float32),
        np.take_along_axis(values, keep[:, :, None], axis=1).astype(np.float32),
    )
