"""MuJoCo Hopper trajectories regenerated offline (Rubanova, Chen & Duvenaud 2019, Sec. 4.2).

Exposed as ``tfode.datasets.hopper``. Needs the ``[data]`` extra (``dm-control``
and ``mujoco``); the raw array is cached on disk, never downloaded.
"""

from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np

__all__ = ["hopper", "hopper_cache_dir", "hopper_rollout"]

# The paper's generator (``mujoco_physics.py``): 10 000 series of 200 physics
# steps each, numpy's legacy global RNG seeded with 123.
PAPER_NUM_SERIES = 10_000
PAPER_NUM_TIMES = 200
PAPER_SEED = 123
STATE_DIM = 14  # qpos (7) and qvel (7) of suite.load("hopper", "stand")
CACHE_ENV = "TFODE_CACHE_DIR"

_EXTRA_HINT = (
    "tfode.datasets.hopper needs the MuJoCo packages of the [data] extra: "
    "pip install 'tfode[data]' (dm-control==1.0.50 mujoco==3.17.0; dm-control fails with mujoco 4)."
)


def _load_physics():
    """``suite.load("hopper", "stand").physics``; an ImportError naming the ``[data]`` extra if missing."""
    try:
        with warnings.catch_warnings():
            # glfw warns about a missing X display on import; nothing here renders.
            warnings.simplefilter("ignore")
            from dm_control import suite
    except ImportError as error:
        raise ImportError(_EXTRA_HINT) from error
    return suite.load("hopper", "stand").physics


def _versions():
    """``(mujoco version, dm-control version)``; ImportError if either is missing."""
    from importlib import metadata

    import mujoco

    try:
        dm_control_version = metadata.version("dm-control")
    except metadata.PackageNotFoundError as error:
        raise ImportError("dm-control is not installed") from error
    return mujoco.__version__, dm_control_version


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")


def hopper_cache_dir(cache_dir=None):
    """The directory of cached Hopper arrays.

    Args:
        cache_dir: explicit directory, or ``None`` for ``$TFODE_CACHE_DIR``, else
            ``$XDG_CACHE_HOME/tfode``, else ``~/.cache/tfode``.

    Returns:
        The directory path (not created).
    """
    if cache_dir is not None:
        return os.fspath(cache_dir)
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tfode")


def hopper_rollout(initial_states, num_times=PAPER_NUM_TIMES):
    """Roll out the Hopper from given initial states with the paper's recording loop.

    Each series starts from a fresh ``physics.reset_context()`` (all of MuJoCo's
    data reset, zero controls), sets ``qpos``/``qvel`` and records the state
    *before* each of ``num_times`` calls of ``physics.step()`` (time step 5 ms).

    Args:
        initial_states: ``[N, 14]`` initial ``(qpos, qvel)``.
        num_times: recorded states per series.

    Returns:
        float64 array ``[N, num_times, 14]`` of ``(qpos, qvel)``; row 0 is the
        initial state after MuJoCo's ``mj_forward`` (unchanged for a Hopper).

    Raises:
        ImportError: dm-control / mujoco missing (the ``[data]`` extra).
        ValueError: malformed ``initial_states`` or ``num_times``.
    """
    initial_states = np.asarray(initial_states, dtype=np.float64)
    if initial_states.ndim != 2 or initial_states.shape[1] != STATE_DIM:
        raise ValueError(f"initial_states must be [N, {STATE_DIM}], got shape {initial_states.shape}.")
    _check_positive_int("num_times", num_times)
    physics = _load_physics()
    half = STATE_DIM // 2
    data = np.zeros((len(initial_states), num_times, STATE_DIM))
    for i, state in enumerate(initial_states):
        with physics.reset_context():
            physics.data.qpos[:] = state[:half]
            physics.data.qvel[:] = state[half:]
        for t in range(num_times):
            data[i, t, :half] = physics.data.qpos
            data[i, t, half:] = physics.data.qvel
            physics.step()
    return data


def _paper_initial_states(num_series, seed):
    """The paper's draws, in its order per series: ``qpos[:2] ~ U(0, 0.5)`` (x, z of the torso; z > 0
    keeps it above ground), ``qpos[2:] ~ U(-2, 2)`` (angles), ``qvel ~ U(-5, 5)``, from numpy's legacy
    ``RandomState(seed)`` (the paper seeds the global legacy RNG, the same stream)."""
    rng = np.random.RandomState(seed)
    states = np.zeros((num_series, STATE_DIM))
    for i in range(num_series):
        states[i, :2] = rng.uniform(0, 0.5, size=2)
        states[i, 2:7] = rng.uniform(-2, 2, size=5)
        states[i, 7:] = rng.uniform(-5, 5, size=7)
    return states


def _raw_trajectories(num_series, num_times, seed, cache_dir, use_cache):
    """Raw ``[num_series, num_times, 14]`` float64 states, from the cache or generated (then cached)."""
    mujoco_version, dm_control_version = _load_versions_or_hint()
    name = f"hopper_n{num_series}_t{num_times}_seed{seed}_mujoco{mujoco_version}_dmc{dm_control_version}.npy"
    directory = hopper_cache_dir(cache_dir)
    path = os.path.join(directory, name)
    if use_cache and os.path.exists(path):
        data = np.load(path)
        if data.shape == (num_series, num_times, STATE_DIM):
            return data, path
    data = hopper_rollout(_paper_initial_states(num_series, seed), num_times)
    if use_cache:
        os.makedirs(directory, exist_ok=True)
        # Write then rename: a concurrent reader never sees a partial file.
        handle, temporary = tempfile.mkstemp(dir=directory, suffix=".npy")
        with os.fdopen(handle, "wb") as f:
            np.save(f, data)
        os.replace(temporary, path)
    return data, path if use_cache else None


def _load_versions_or_hint():
    try:
        return _versions()
    except ImportError as error:
        raise ImportError(_EXTRA_HINT) from error


def hopper(
    num_series=PAPER_NUM_SERIES,
    num_times=PAPER_NUM_TIMES,
    seed=PAPER_SEED,
    *,
    cache_dir=None,
    use_cache=True,
):
    """MuJoCo Hopper series regenerated with the protocol of Rubanova et al. (2019).

    Follows the authors' ``mujoco_physics.py``: ``suite.load("hopper", "stand")``
    from the DeepMind Control Suite; for each series, from numpy's legacy
    ``RandomState(seed)`` (paper: seed 123), torso ``x, z ~ U(0, 0.5)``, the
    other 5 joint positions ``~ U(-2, 2)`` and all 7 velocities ``~ U(-5, 5)``;
    then the 14-D state ``(qpos, qvel)`` is recorded before each of
    ``num_times`` physics steps of 5 ms, with zero controls (paper: 10 000
    series of 200 steps). The draws are sequential, so the first ``n`` series
    of a larger set are exactly the series of ``num_series = n``.

    Normalisation is the paper's ``utils.normalize_data``: per feature over all
    returned series and times, ``(x - min) / max`` (divided by the *max*, not by
    ``max - min``; a zero max is replaced by 1). The paper normalises the
    10 000 series before taking its first ``n`` (``-n``); to reproduce that,
    generate 10 000 and slice ``values``. Times are the paper's
    ``arange(num_times) / num_times`` (physics time / 1 s, so ``t`` in ``[0, 1)``).

    The raw float64 states are cached as ``.npy`` in ``hopper_cache_dir(cache_dir)``
    (``$TFODE_CACHE_DIR`` or ``~/.cache/tfode``), under a name holding the
    arguments and the MuJoCo and dm-control versions; generating the paper's
    10 000 series takes about 2 minutes on one CPU core.

    Where regenerated data can differ from the paper's: the authors' file
    (``training.pt``, 2019; not compared here, it is a download) came from a
    MuJoCo 2.0-era dm-control; this uses MuJoCo 3.17 and dm-control 1.0.50.
    MuJoCo's contact solver, default options and the suite's ``hopper.xml``
    have changed between those releases, so the same initial states can give
    trajectories that drift apart, mostly after ground contacts (the dynamics
    are chaotic there), and the per-feature ranges (hence the normalisation)
    can differ. The initial states are the paper's draws (same seed, same
    order); numbers trained on this set are comparable to the paper's, not
    identical. Within one MuJoCo/dm-control version the set is deterministic.

    Args:
        num_series: number of series ``N`` (paper: 10 000).
        num_times: states per series ``T`` (paper: 200).
        seed: seed of the initial-state draws (paper: 123).
        cache_dir: cache directory (default: ``$TFODE_CACHE_DIR`` or ``~/.cache/tfode``).
        use_cache: read and write the cache; ``False`` always regenerates and writes nothing.

    Returns:
        dict with ``times`` ``[T]`` float32; ``values`` ``[N, T, 14]`` float32
        normalised states; ``raw`` ``[N, T, 14]`` float64 states (``qpos`` then
        ``qvel``); ``data_min`` and ``data_max`` ``[14]`` float64, the
        normalisation (``values = (raw - data_min) / data_max``); ``cache_path``
        (``None`` without the cache).

    Raises:
        ImportError: dm-control or mujoco missing; install ``tfode[data]``.
        ValueError: ``num_series`` or ``num_times`` not a positive int, or
            ``seed`` not a non-negative int.

    Example:
        >>> data = tfode.datasets.hopper()                  # the paper's 10 000 x 200 x 14
        >>> data["values"].shape, data["times"][:3]
        ((10000, 200, 14), array([0.   , 0.005, 0.01 ], dtype=float32))

    References:
        Rubanova, Chen & Duvenaud, "Latent ODEs for Irregularly-Sampled Time
        Series", NeurIPS 2019 (Sec. 4.2; ``mujoco_physics.py`` and
        ``lib/utils.py`` in YuliaRubanova/latent_ode).
        Tassa et al., "DeepMind Control Suite", 2018.
    """
    _check_positive_int("num_series", num_series)
    _check_positive_int("num_times", num_times)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    raw, path = _raw_trajectories(int(num_series), int(num_times), int(seed), cache_dir, use_cache)
    data_min = raw.reshape(-1, STATE_DIM).min(axis=0)
    data_max = raw.reshape(-1, STATE_DIM).max(axis=0)
    data_max = np.where(data_max == 0.0, 1.0, data_max)
    return {
        "times": (np.arange(num_times) / num_times).astype(np.float32),
        "values": ((raw - data_min) / data_max).astype(np.float32),
        "raw": raw,
        "data_min": data_min,
        "data_max": data_max,
        "cache_path": path,
    }
