"""The benchmark runner's plumbing (``benchmarks/run.py``): registry, options, paths, workload data.

No benchmark runs here; these checks keep ``python -m benchmarks.run`` importable and its
command line stable.
"""

import os

import numpy as np
import pytest

from benchmarks import _common as C
from benchmarks import run
from benchmarks.workloads import w5_keras_fit, w6_vdp_batch


@pytest.mark.parametrize("name", sorted(run.WORKLOADS))
def test_workload_contract(name):
    module = run.load(name)
    assert module.__doc__, name
    assert callable(module.add_args) and callable(module.report)
    for kind, (fn, interpreter) in module.WORKERS.items():
        assert callable(fn), kind
        assert interpreter in ("tf", "peer"), kind
    # Its options parse together with the common ones.
    args = run._workload_parser(name).parse_args([])
    assert args.weights == C.default_weights()


def test_unknown_option_is_an_error(capsys):
    assert run.main(["W1", "W2", "--no-such-option"]) == 2
    assert "--no-such-option" in capsys.readouterr().err


def test_option_known_to_one_workload_is_accepted():
    # --tols is W1's, --ref-tol is W2's: neither is unknown to the pair.
    parsed = [run._workload_parser(n).parse_known_args(["--tols", "1e-3", "--ref-tol", "1e-9"]) for n in ("W1", "W2")]
    assert parsed[0][0].tols == "1e-3"
    assert parsed[1][0].ref_tol == 1e-9


def test_no_abbreviations():
    # "--tol" must not silently mean W1's "--tols".
    _, unknown = run._workload_parser("W1").parse_known_args(["--tol", "1e-3"])
    assert "--tol" in unknown


def test_default_paths(monkeypatch):
    monkeypatch.delenv("TFODE_BENCH_WEIGHTS", raising=False)
    monkeypatch.delenv("TFODE_BENCH_PEER_PYTHON", raising=False)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(run.__file__)))
    assert C.default_weights() == os.path.join(os.path.dirname(repo), "shared", "bench", "weights.npz")
    monkeypatch.setenv("TFODE_BENCH_WEIGHTS", "/x/w.npz")
    monkeypatch.setenv("TFODE_BENCH_PEER_PYTHON", "/x/python")
    assert C.default_weights() == "/x/w.npz"
    assert C.default_peer_python() == "/x/python"


def test_json_path_per_workload():
    assert run._json_path("/tmp/out.json", "W5", several=False) == "/tmp/out.json"
    assert run._json_path("/tmp/out.json", "W5", several=True) == "/tmp/out.W5.json"


def test_w5_data_is_deterministic(tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    w5_keras_fit.make_data(a, seed=5, batch=8)
    w5_keras_fit.make_data(b, seed=5, batch=8)
    with np.load(a) as da, np.load(b) as db:
        assert set(da.files) == set(w5_keras_fit.NAMES) | {"x", "y"}
        for k in da.files:
            np.testing.assert_array_equal(da[k], db[k])
        # TimeMLP's concat embedding: one extra input row (the time) per kernel.
        assert da["K0"].shape == (65, 64) and da["K2"].shape == (65, 64)
        assert da["x"].shape == (8, 64) and da["y"].dtype == np.int32


def test_w6_problem():
    mu, t = w6_vdp_batch.make_problem(seed=6, batch=256)
    assert mu.shape == (256,) and 0.5 <= mu.min() and mu.max() <= 20.0
    assert t.shape == (50,) and t[0] == 0.0 and t[-1] == 10.0


def _fake_per_sample_tfode(tf, tfode, field_name):
    """A stand-in tfode whose ``solve(..., config=SolverConfig(..., batch_axis=0))`` solves each sample alone."""
    import types

    class SolverConfig:
        def __init__(self, method, rtol, atol, batch_axis=None):
            if batch_axis != 0:
                raise TypeError("batch_axis")
            self.method, self.rtol, self.atol = method, rtol, atol

    def solve(func, y0, t, config, args=(), options=None):
        sols = [
            tfode.solve(
                func,
                y0[i : i + 1],
                t,
                method=config.method,
                rtol=config.rtol,
                atol=config.atol,
                args=tuple(x[i : i + 1] for x in args),
            )
            for i in range(y0.shape[0])
        ]
        steps = tf.stack([s.stats.num_steps for s in sols])
        counts = {"num_steps": tf.reduce_max(steps), field_name: steps}  # per-sample steps in field_name
        stats = types.SimpleNamespace(
            num_fn_evals=tf.reduce_max([s.stats.num_fn_evals for s in sols]),
            status=tf.reduce_max([s.stats.status for s in sols]),
            **counts,
        )
        return types.SimpleNamespace(ys=tf.concat([s.ys for s in sols], axis=1), stats=stats)

    return types.SimpleNamespace(SolverConfig=SolverConfig, solve=solve)


@pytest.mark.parametrize("field_name", ["num_steps_per_sample", "num_steps"])
def test_w6_detects_a_per_sample_mode(field_name):
    tf = pytest.importorskip("tensorflow")
    import tfode

    fake = _fake_per_sample_tfode(tf, tfode, field_name)
    name, solve = w6_vdp_batch._tfode_per_sample(tf, fake)
    assert solve is not None, name
    assert "SolverConfig(..., batch_axis=...)" in name
    steps, loop = w6_vdp_batch.per_sample_steps(solve(*_vdp_probe(tf)).stats, 2)
    assert int(steps[0]) < int(steps[1]) == int(np.max(loop))


def _vdp_probe(tf):
    def field(t, y, mu):
        return tf.stack([y[:, 1], mu * (1 - y[:, 0] ** 2) * y[:, 1] - y[:, 0]], axis=1)

    y0 = tf.constant([[2.0, 0.0], [2.0, 0.0]])
    return field, y0, tf.constant([0.0, 5.0]), 1e-4, 1e-4, (tf.constant([0.5, 20.0]),)


def test_w6_joint_only_tfode_is_reported_not_available():
    tf = pytest.importorskip("tensorflow")
    import types

    import tfode

    joint_only = types.SimpleNamespace(solve=tfode.solve)  # no SolverConfig, no per-sample keyword
    name, solve = w6_vdp_batch._tfode_per_sample(tf, joint_only)
    assert solve is None and name.startswith("not available")
