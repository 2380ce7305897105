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


def _timed(cpu_ms, nfe=20):
    return {"wall_ms": [cpu_ms] * 4, "cpu_ms": [cpu_ms] * 4, "total_s": 4 * cpu_ms / 1e3, "nfe": [nfe] * 4}


def test_serving_tables_compare_paths():
    from types import SimpleNamespace

    from benchmarks.workloads import serving

    costs = {"1": (4.0, 2.0), "64": (10.0, 12.0), "512": (20.0, 400.0)}  # per-sample, union CPU ms
    result = {
        "export": "savedmodels/latent_ode_spiral/1", "tensorflow": "2.x", "gpus": [], "load_s": 1.0,
        "first_call_s": 1.0, "paths": ["export", "union"], "tols": {},
        "path_batches": {b: {"export": _timed(p), "union": _timed(u)} for b, (p, u) in costs.items()},
        "max_abs_diff_vs_export": {b: {"export": 0.0, "union": 1e-3} for b in costs},
    }  # fmt: skip
    text = serving.tables(result, SimpleNamespace(requests=4, warmup=1, tol_batch=64))
    assert "| 512 | union |" in text and "| 512 | export |" in text
    assert "batch 512 / batch 64 (linear: 8x): export 2.00x, union 33.33x" in text
    assert "union / export by batch: 1: 0.50x, 64: 1.20x, 512: 20.00x" in text


def test_batch_independence_tables():
    from types import SimpleNamespace

    from benchmarks.workloads import batch_independence as bi

    same = {"abs": [0.0, 1e-7], "rel": [0.0, 1e-7], "scale": [1.0, 1.0], "nfe_alone": [], "nfe_batch": []}
    off = dict(same, abs=[1e-4, 1e-4], rel=[1e-4, 1e-4])
    result = {"tensorflow": "2.x", "exports": {"odenet": "savedmodels/odenet/1"},
              "models": {"odenet": {"0.001": same, "1e-06": off}}}  # fmt: skip
    text = bi.tables(result, SimpleNamespace(draws=2, batch=64))
    rows = [line for line in text.splitlines() if line.startswith("| odenet")]
    assert rows[0].endswith("| 0/2 | 1/2 | - | - | met |") and rows[1].endswith("| 2/2 | 0/2 | - | - | missed |")
