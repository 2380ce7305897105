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


def test_w6_batched_nfe():
    # Two initial evaluations and six per step; the loop runs the slowest sample's steps.
    assert w6_vdp_batch.batched_nfe([80, 518], [13, 86]) == 86 * 6 + 2
    assert w6_vdp_batch.batched_nfe([8], [1]) == 8


def test_w6_per_sample_api():
    # The call the W6 worker makes: SolverConfig(batch_axis=0) as solve's 4th argument.
    tf = pytest.importorskip("tensorflow")
    import tfode

    def field(t, y, mu):
        assert t.shape == (2,)  # one time per sample
        return tf.stack([y[:, 1], mu * (1 - y[:, 0] ** 2) * y[:, 1] - y[:, 0]], axis=1)

    config = tfode.SolverConfig(method="dopri5", rtol=1e-4, atol=1e-4, max_num_steps=w6_vdp_batch.MAX_STEPS,
                                batch_axis=0)  # fmt: skip
    y0 = tf.constant([[2.0, 0.0], [2.0, 0.0]])
    sol = tfode.solve(field, y0, tf.constant([0.0, 2.5, 5.0]), config, args=(tf.constant([0.5, 20.0]),))
    steps, nfe = sol.stats.num_steps.numpy(), sol.stats.num_fn_evals.numpy()
    assert sol.ys.shape == (3, 2, 2) and steps.shape == (2,) and steps[0] < steps[1]
    assert w6_vdp_batch.batched_nfe(nfe, steps) == 6 * steps.max() + (nfe[0] - 6 * steps[0])
