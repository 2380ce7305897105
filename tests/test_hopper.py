"""Tests of the MuJoCo Hopper generator (``tfode/_hopper.py``, ``tfode.datasets.hopper``) and of
``examples/latent_ode_hopper.py`` in ``--quick`` mode.

Argument checks, the cache location and the missing-extra error run everywhere. Everything that
simulates needs the ``[data]`` extra (dm-control, mujoco) and skips cleanly without it
(``pytest.importorskip``): CI installs only ``.[test]``. Generating a series takes ~10 ms, so the
tests simulate a handful of short series, each in its own temporary cache.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tfode  # noqa: E402
from tfode import _hopper  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "latent_ode_hopper.py"
TIMESTEP = 0.005  # hopper.xml: <option timestep="0.005"/>, MuJoCo's default (semi-implicit) Euler integrator


def _needs_mujoco():
    pytest.importorskip("dm_control", reason="needs the [data] extra (dm-control, mujoco)")
    return pytest.importorskip("mujoco")


# ---------------------------------------------------------------------------
# Without the [data] extra
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_series": 0}, "num_series"),
        ({"num_series": True}, "num_series"),
        ({"num_series": 2.5}, "num_series"),
        ({"num_times": 0}, "num_times"),
        ({"seed": -1}, "seed"),
        ({"seed": "123"}, "seed"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        tfode.datasets.hopper(**kwargs, use_cache=False)


def test_missing_extra_names_it(monkeypatch):
    # A None entry in sys.modules makes `import` raise ImportError, as if not installed.
    monkeypatch.setitem(sys.modules, "mujoco", None)
    monkeypatch.setitem(sys.modules, "dm_control", None)
    with pytest.raises(ImportError, match=r"tfode\[data\]"):
        tfode.datasets.hopper(num_series=1, num_times=2, use_cache=False)
    with pytest.raises(ImportError, match=r"tfode\[data\]"):
        _hopper.hopper_rollout(np.zeros((1, 14)), 2)


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv(_hopper.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _hopper.hopper_cache_dir() == str(tmp_path / "xdg" / "tfode")
    monkeypatch.setenv(_hopper.CACHE_ENV, str(tmp_path / "env"))
    assert _hopper.hopper_cache_dir() == str(tmp_path / "env")
    assert _hopper.hopper_cache_dir(tmp_path / "arg") == str(tmp_path / "arg")


def test_rollout_rejects_bad_states():
    with pytest.raises(ValueError, match="initial_states"):
        _hopper.hopper_rollout(np.zeros((2, 13)), 5)


# ---------------------------------------------------------------------------
# With the [data] extra
# ---------------------------------------------------------------------------


def test_shapes_times_and_normalisation(tmp_path):
    _needs_mujoco()
    data = tfode.datasets.hopper(num_series=4, num_times=30, cache_dir=tmp_path)
    assert data["values"].shape == data["raw"].shape == (4, 30, 14)
    assert data["values"].dtype == np.float32 and data["raw"].dtype == np.float64
    np.testing.assert_allclose(data["times"], np.arange(30) / 30, rtol=0, atol=1e-7)
    # The paper's normalize_data: (x - min) / max per feature, over all series and times.
    raw = data["raw"].reshape(-1, 14)
    np.testing.assert_allclose(data["data_min"], raw.min(axis=0))
    expected = (data["raw"] - raw.min(axis=0)) / np.where(raw.max(axis=0) == 0, 1.0, raw.max(axis=0))
    np.testing.assert_allclose(data["values"], expected, rtol=1e-6, atol=1e-6)
    assert np.allclose(data["values"].reshape(-1, 14).min(axis=0), 0.0, atol=1e-6)


def test_initial_states_follow_the_paper_draws(tmp_path):
    """Row 0 of every series is the paper's draw: RandomState(123), per series U(0, .5)^2, U(-2, 2)^5, U(-5, 5)^7."""
    _needs_mujoco()
    raw = tfode.datasets.hopper(num_series=5, num_times=2, cache_dir=tmp_path)["raw"]
    rng = np.random.RandomState(123)
    for series in raw:
        expected = np.concatenate([rng.uniform(0, 0.5, 2), rng.uniform(-2, 2, 5), rng.uniform(-5, 5, 7)])
        np.testing.assert_array_equal(series[0], expected)
    assert np.all((raw[:, 0, :2] >= 0) & (raw[:, 0, :2] <= 0.5))


def test_deterministic_for_a_seed_and_prefix_stable(tmp_path):
    _needs_mujoco()
    first = tfode.datasets.hopper(num_series=3, num_times=40, use_cache=False)
    again = tfode.datasets.hopper(num_series=3, num_times=40, use_cache=False)
    np.testing.assert_array_equal(first["raw"], again["raw"])
    assert first["cache_path"] is None
    # Draws are sequential: a larger set starts with the smaller one.
    larger = tfode.datasets.hopper(num_series=5, num_times=40, use_cache=False)
    np.testing.assert_array_equal(larger["raw"][:3], first["raw"])
    other = tfode.datasets.hopper(num_series=3, num_times=40, seed=7, use_cache=False)
    assert np.max(np.abs(other["raw"][:, 0] - first["raw"][:, 0])) > 0.1


def test_cache_is_written_once_and_read_back(tmp_path):
    _needs_mujoco()
    data = tfode.datasets.hopper(num_series=2, num_times=10, cache_dir=tmp_path)
    path = Path(data["cache_path"])
    assert path.parent == tmp_path and path.exists()
    assert "mujoco" in path.name and "seed123" in path.name
    # Overwrite the cached array: a second call must read the file rather than regenerate.
    np.save(path, np.full((2, 10, 14), 3.0))
    cached = tfode.datasets.hopper(num_series=2, num_times=10, cache_dir=tmp_path)
    assert np.all(cached["raw"] == 3.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left behind


def test_matches_a_direct_mujoco_rollout(tmp_path):
    """The recorded states equal a rollout with MuJoCo's own ``mj_step`` on the suite's hopper model."""
    mujoco = _needs_mujoco()
    from dm_control.suite import hopper as hopper_task

    raw = tfode.datasets.hopper(num_series=2, num_times=120, cache_dir=tmp_path)["raw"]
    xml, assets = hopper_task.get_model_and_assets()
    model = mujoco.MjModel.from_xml_string(xml.decode(), assets)
    assert model.opt.timestep == TIMESTEP and model.nq == 7 and model.nv == 7
    for series in raw:
        data = mujoco.MjData(model)
        data.qpos[:], data.qvel[:] = series[0, :7], series[0, 7:]
        mujoco.mj_forward(model, data)
        states = []
        for _ in range(len(series)):
            states.append(np.concatenate([data.qpos, data.qvel]))
            mujoco.mj_step(model, data)
        # Same model, same steps: agreement to round-off, even after ground contacts (chaotic).
        np.testing.assert_allclose(np.array(states), series, rtol=1e-9, atol=1e-9)


def test_physical_sanity(tmp_path):
    """Semi-implicit Euler pairs each position step with the *new* velocity; the hopper falls."""
    _needs_mujoco()
    raw = tfode.datasets.hopper(num_series=3, num_times=200, cache_dir=tmp_path)["raw"]
    qpos, qvel = raw[..., :7], raw[..., 7:]
    # All 7 joints are scalar (slide x, slide z, hinges): qpos[t+1] = qpos[t] + h * qvel[t+1] exactly.
    np.testing.assert_allclose(np.diff(qpos, axis=1), TIMESTEP * qvel[:, 1:], rtol=1e-9, atol=1e-12)
    # Gravity: with zero controls the torso height ends lower than the highest point it reached.
    assert np.all(qpos[:, -1, 1] < qpos[:, :, 1].max(axis=1))
    assert np.all(np.isfinite(raw)) and np.abs(qvel).max() < 1e3


# ---------------------------------------------------------------------------
# The example, end to end
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_example_quick_runs_end_to_end(tmp_path):
    _needs_mujoco()
    spec = importlib.util.spec_from_file_location("latent_ode_hopper", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "out"
    results = example.main(["--quick", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    assert {key[0] for key in results} == set(example.MODEL_NAMES)
    assert {key[1] for key in results} == {"interp", "extrap"}
    for result in results.values():
        # Normalised data lie in [0, ~3]; an untrained or diverged model scores ~1 or worse, a
        # prediction in raw units (features up to ~100) far worse. One epoch must stay in range.
        assert 0.0 < result["mse"] < 2.0, result["mse"]
        assert result["series_per_second"] > 0
    table = (out / "latent_ode_hopper.md").read_text()
    assert "0.360" in table and "tfode (this run)" in table and "--quick" in table
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "latent_ode_hopper_interp.png").stat().st_size > 10_000
        assert (out / "latent_ode_hopper_extrap.png").stat().st_size > 10_000
