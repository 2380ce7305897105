"""Tests of ``tfode.datasets``: the seeded 2-D toy densities of the FFJORD paper.

Pure numpy, no TensorFlow graph: the whole module runs in well under a second.
"""

from __future__ import annotations

import numpy as np
import pytest

from tfode.datasets import TOY_2D, toy_2d

NAMES = sorted(TOY_2D)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_samples", [1000, 7])
def test_shape_dtype_and_finite(name, num_samples):
    x = toy_2d(name, num_samples, seed=0)
    assert isinstance(x, np.ndarray)
    assert x.dtype == np.float32
    assert x.shape == (num_samples, 2)
    assert np.all(np.isfinite(x))


@pytest.mark.parametrize("name", NAMES)
def test_seeded(name):
    a, b = toy_2d(name, 500, seed=3), toy_2d(name, 500, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, toy_2d(name, 500, seed=4))
    np.testing.assert_array_equal(toy_2d(name, 50), toy_2d(name, 50, seed=0))  # default seed is 0


@pytest.mark.parametrize("name", NAMES)
def test_rough_scale(name):
    # The module promises data "roughly standardised to [-4, 4]^2". Measured on 20000
    # points: max |x| is 3.3-4.7 and the per-axis std 1.0-2.3 across the sets; the bounds
    # leave room for seeds while failing a set left unscaled (e.g. swissroll x5 reaches ~17)
    # or collapsed to a point.
    x = toy_2d(name, 5000, seed=1)
    assert np.abs(x).max() < 6.0
    assert np.all(x.std(axis=0) > 0.5)
    assert np.all(x.std(axis=0) < 3.5)
    assert np.all(np.abs(x.mean(axis=0)) < 1.0)


def test_eight_gaussians_structure():
    # Centers at radius 4 / 1.414 on 8 equally spaced angles, component std 0.5 / 1.414.
    x = toy_2d("8gaussians", 8000, seed=0).astype(np.float64)
    radius = np.hypot(x[:, 0], x[:, 1])
    assert abs(np.median(radius) - 4.0 / 1.414) < 0.1
    sector = np.round(np.arctan2(x[:, 1], x[:, 0]) / (np.pi / 4)) % 8
    counts = np.bincount(sector.astype(int), minlength=8)
    assert np.all(np.abs(counts - 1000) < 150)  # binomial sd ~30


@pytest.mark.parametrize(("name", "radii"), [("rings", (1.0, 2.0, 3.0, 4.0)), ("circles", (1.5, 3.0))])
def test_ring_radii(name, radii):
    x = toy_2d(name, 4000, seed=0).astype(np.float64)
    radius = np.hypot(x[:, 0], x[:, 1])
    nearest = np.min(np.abs(radius[:, None] - np.asarray(radii)[None]), axis=1)
    assert np.quantile(nearest, 0.95) < 0.5  # ring noise sd is 0.08 (x3 = 0.24 for circles)
    for r in radii:  # every ring is populated
        assert np.mean(np.abs(radius - r) < 0.5) > 0.5 / len(radii)


def test_num_samples_accepts_numpy_int():
    assert toy_2d("moons", np.int64(5)).shape == (5, 2)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_samples", [1, 2, 3, 5, 9, 33])
def test_exact_row_count_and_distinct_rows(name, num_samples):
    # Every set returns exactly num_samples rows, odd sizes included (2spirals once returned
    # (0, 2) for n = 1 and padded odd n with a copy of its first point). Each point draws
    # its own continuous noise, so rows are distinct.
    x = toy_2d(name, num_samples, seed=0)
    assert x.shape == (num_samples, 2)
    assert len(np.unique(x, axis=0)) == num_samples


def test_two_spirals_odd_size_mirrors_its_arms():
    # An odd n: a first arm of (n + 1) / 2 points and the mirror image (x -> -x) of all but
    # its last point. Row i and row i + (n + 1) // 2 are mirrored before their independent
    # noise (sd 0.1 each, so their sum has sd 0.14 per coordinate; 0.6 is > 4 sd).
    n = 9
    x = toy_2d("2spirals", n, seed=2).astype(np.float64)
    half = (n + 1) // 2
    sums = x[: n - half] + x[half:]
    assert np.all(np.abs(sums) < 0.6)
    assert np.abs(x[: n - half]).max() > 1.0  # not collapsed to the origin


@pytest.mark.parametrize("name", ["gaussians", "8Gaussians", "", "mnist"])
def test_unknown_name(name):
    with pytest.raises(ValueError, match="Unknown toy data set"):
        toy_2d(name, 10)


@pytest.mark.parametrize("num_samples", [0, -3, 2.5, 10.0, True, "10", None])
def test_bad_num_samples(num_samples):
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        toy_2d("moons", num_samples)
