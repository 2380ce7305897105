"""``model.fit`` under ``tf.distribute``: MirroredStrategy, MultiWorkerMirroredStrategy, fault tolerance.

Every test runs TensorFlow in child processes, so the main pytest process keeps
its single CPU device (the other test files share it):

* MirroredStrategy over two logical CPUs needs ``set_logical_device_configuration``
  before TensorFlow initialises its devices: one child (this file run as a
  script, ``python tests/test_distributed.py mirrored OUT.json``) runs every
  mirrored check and writes a JSON report that the ``mirrored`` tests read.
* MultiWorkerMirroredStrategy: two workers of ``examples/distributed_train.py``
  on free 127.0.0.1 ports train the spiral ``LatentODE``; the fault test crashes
  worker 0 right after its first ``BackupAndRestore`` backup, checks that the
  survivor stops too (a collective op cannot finish without its peer: worker 1
  fails with ``UnavailableError`` within seconds, or after ~15 s of missed
  heartbeats when worker 1 is the one that died), then restarts BOTH workers,
  the standard Keras recipe, and checks that they resume at epoch 1.

Every child runs under a timeout and is killed in ``finally``. Cost: each child
imports tfode (~10 CPU-s) and traces a training step (~5-15 CPU-s); the file
needs ~210 CPU-s in all, ~2.5 minutes on an idle 2-core CPU (4.7 minutes at a
load of 8; the timeouts allow for several times that).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "distributed_train.py"
EPOCHS = 3
# Generous: on a loaded 2-core machine one worker pair takes ~2.5 minutes.
TIMEOUT_S = 480


def _env():
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    # CPU only: two workers on one machine must not both claim a GPU.
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def _free_ports(count):
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@contextlib.contextmanager
def _processes():
    """Yield a ``start(args, log) -> Popen`` that tracks children; kill them all on exit."""
    children = []

    def start(args, log):
        with open(log, "w") as out:
            child = subprocess.Popen([sys.executable, "-u", *map(str, args)], stdout=out, stderr=subprocess.STDOUT,
                                     env=_env(), cwd=REPO)  # fmt: skip
        children.append(child)
        return child

    try:
        yield start
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=30)


def _wait(children, timeout, logs=()):
    """Wait for every child until a shared deadline; on timeout fail with the logs' tails."""
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            tails = "\n".join(f"--- {log}\n{_tail(log)}" for log in logs)
            pytest.fail(f"a child ran past {timeout} s:\n{tails}")


def _tail(log, chars=3000):
    return Path(log).read_text()[-chars:]


def _worker_args(ports, index, tmp_path, epochs=EPOCHS, crash_after_epoch=0):
    return [
        EXAMPLE, "--strategy", "multiworker", "--workers", ",".join(f"127.0.0.1:{p}" for p in ports),
        "--worker-index", index, "--epochs", epochs, "--backup-dir", tmp_path / "backup",
        "--epoch-log", tmp_path / f"epochs-{index}.txt", "--out", tmp_path / f"weights-{index}.npz",
        "--crash-after-epoch", crash_after_epoch,
    ]  # fmt: skip


def _losses(text):
    return {int(e): float(v) for e, v in re.findall(r"^worker \d+ epoch (\d+) loss (\S+)$", text, re.M)}


def _checksum(text):
    found = re.findall(r"^worker \d+ weights checksum (\S+)$", text, re.M)
    return found[-1] if found else None


def _epochs_run(path):
    return [int(line) for line in Path(path).read_text().split()] if Path(path).exists() else []


def _assert_same_weights(tmp_path):
    with np.load(tmp_path / "weights-0.npz") as w0, np.load(tmp_path / "weights-1.npz") as w1:
        assert sorted(w0.files) == sorted(w1.files) and len(w0.files) > 10
        for name in w0.files:
            # Bitwise: both workers apply the same all-reduced gradients to the same weights.
            np.testing.assert_array_equal(w0[name], w1[name], err_msg=name)


# ---------------------------------------------------------------------------
# MultiWorkerMirroredStrategy: two workers of the example
# ---------------------------------------------------------------------------


def test_two_workers_train_and_agree(tmp_path):
    ports = _free_ports(2)
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    with _processes() as start:
        workers = [start(_worker_args(ports, i, tmp_path), logs[i]) for i in range(2)]
        _wait(workers, TIMEOUT_S, logs)
    texts = [log.read_text() for log in logs]
    for worker, text in zip(workers, texts):
        assert worker.returncode == 0, text[-3000:]
    losses = [_losses(text) for text in texts]
    assert sorted(losses[0]) == list(range(EPOCHS)), texts[0][-3000:]
    assert losses[0] == losses[1]  # the logged loss is the mean over both workers' replicas
    assert losses[0][EPOCHS - 1] < losses[0][0]
    assert _checksum(texts[0]) is not None and _checksum(texts[0]) == _checksum(texts[1])
    _assert_same_weights(tmp_path)
    assert not (tmp_path / "backup" / "worker-0").exists()  # fit finished: BackupAndRestore cleaned up


def test_crashed_worker_resumes_from_backup(tmp_path):
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    restart_logs = [tmp_path / f"worker-{i}-restart.log" for i in range(2)]
    with _processes() as start:
        ports = _free_ports(2)
        crashing = start(_worker_args(ports, 0, tmp_path, crash_after_epoch=1), logs[0])
        survivor = start(_worker_args(ports, 1, tmp_path), logs[1])
        _wait([crashing], TIMEOUT_S, logs)
        assert crashing.returncode == 1 and "simulating a crash after epoch 0" in logs[0].read_text(), _tail(logs[0])
        # The survivor cannot finish alone: its next collective op fails (UnavailableError,
        # observed within seconds). Give it a moment to finish writing its own epoch-0 backup
        # (it logs the epoch after the backup), then stop it whatever it is doing.
        deadline = time.monotonic() + 120
        while survivor.poll() is None and not _epochs_run(tmp_path / "epochs-1.txt") and time.monotonic() < deadline:
            time.sleep(0.5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            survivor.wait(timeout=30)
        if survivor.poll() is None:
            survivor.kill()
            survivor.wait(timeout=30)
        assert survivor.returncode != 0 and _checksum(logs[1].read_text()) is None, _tail(logs[1])
        for i in range(2):
            assert _epochs_run(tmp_path / f"epochs-{i}.txt") == [0], _tail(logs[i])
            metadata = json.loads((tmp_path / "backup" / f"worker-{i}" / "training_metadata.json").read_text())
            assert metadata["epoch"] == 1

        # Restart both workers with the same arguments (fresh ports: nothing may still hold the old ones).
        ports = _free_ports(2)
        workers = [start(_worker_args(ports, i, tmp_path), restart_logs[i]) for i in range(2)]
        _wait(workers, TIMEOUT_S, restart_logs)
    texts = [log.read_text() for log in restart_logs]
    for worker, text in zip(workers, texts):
        assert worker.returncode == 0, text[-3000:]
        assert sorted(_losses(text)) == list(range(1, EPOCHS)), text[-3000:]  # resumed at epoch 1
    for i in range(2):
        # Every epoch ran exactly once on each worker, across the crash.
        assert _epochs_run(tmp_path / f"epochs-{i}.txt") == list(range(EPOCHS))
    assert _checksum(texts[0]) is not None and _checksum(texts[0]) == _checksum(texts[1])
    _assert_same_weights(tmp_path)


# ---------------------------------------------------------------------------
# MirroredStrategy over two logical CPUs (one child process, JSON report)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    out = tmp_path_factory.mktemp("mirrored") / "report.json"
    log = out.with_suffix(".log")
    with _processes() as start:
        child = start([__file__, "mirrored", out], log)
        _wait([child], TIMEOUT_S, [log])
    assert child.returncode == 0, _tail(log)
    return json.loads(out.read_text())


@pytest.mark.parametrize("gradients", ["adjoint", "direct"])
def test_mirrored_step_matches_single_device(mirrored, gradients):
    # One model: ODELayer(adjoint) -> ODELayer(direct) -> Dense, rk4 at a fixed step, so both
    # replicas take the single device's steps and the only difference is float32 round-off
    # of the split batch and the all-reduce (observed <= 1e-6, on weights that moved by up to 10).
    result = mirrored["rk4"]
    layer = {p: d for p, d in result["weight_diff"].items() if f"/{gradients}/" in p}
    assert len(layer) >= 2, result["weight_diff"]  # the vector field's kernel and bias
    assert max(v for p, v in result["weight_change"].items() if p in layer) > 1e-2
    assert max(layer.values()) < 1e-5
    assert result["max_weight_diff"] < 1e-5  # the head too
    # 4 rk4 steps + the initial evaluation; metrics are named per layer.
    assert result["history"]["adjoint_nfe_forward"] == result["history"]["direct_nfe_forward"] == 17.0


def test_mirrored_nfe_metrics_are_replica_means(mirrored):
    result = mirrored["dopri5"]
    (forward_0, backward_0), (forward_1, backward_1) = result["replica_nfe"]
    # The halves need different numbers of dopri5 steps, so mean, sum and first replica all differ.
    assert forward_0 != forward_1 and backward_0 != backward_1
    assert result["history"]["ode_nfe_forward"] == (forward_0 + forward_1) / 2
    assert result["history"]["ode_nfe_backward"] == (backward_0 + backward_1) / 2
    # Adaptive steps are chosen per replica (the error norm is over the local batch), so
    # the step matches the single-device one to the solver tolerance (1e-6), not round-off.
    assert result["max_weight_diff"] < 1e-4


def test_mirrored_hutchinson_noise_differs_per_replica(mirrored):
    # The same inputs on both replicas: the log-densities differ only by the Hutchinson noise.
    first, second = (np.array(v) for v in mirrored["hutchinson_log_prob"])
    assert np.all(np.isfinite(first)) and np.all(np.isfinite(second))
    assert not np.allclose(first, second)


def test_mirrored_continuous_flow_and_latent_ode_fit(mirrored):
    for name in ("flow", "latent_ode"):
        assert np.all(np.isfinite(mirrored[name]["loss"])), name
        assert mirrored[name]["max_weight_change"] > 0, name
    assert mirrored["latent_ode"]["nfe_forward"] > 0


def test_mirrored_loss_with_add_loss_matches_single_device(mirrored):
    # NFE counters are synchronized on read: an on-write assignment inside the replica's call
    # is a merge_call during which the other replica runs, and the replicas' add_loss terms mix
    # (observed before the fix: 4.69 against 3.70).
    result = mirrored["add_loss"]
    assert abs(result["mirrored"] - result["single"]) < 1e-5 * abs(result["single"]), result


# ---------------------------------------------------------------------------
# LatentODE's posterior sample differs per worker (tf.random.Generator created in the strategy scope)
# ---------------------------------------------------------------------------


def test_latent_ode_noise_differs_across_workers(tmp_path):
    ports = _free_ports(2)
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    with _processes() as start:
        workers = [start([__file__, "latent-noise", ",".join(map(str, ports)), i, tmp_path], logs[i]) for i in range(2)]
        _wait(workers, TIMEOUT_S, logs)
    for worker, log in zip(workers, logs):
        if worker.returncode != 0:
            pytest.fail(_tail(log))
    first, second = (np.load(tmp_path / f"sample-{i}.npy") for i in range(2))
    # Same data, same weights on both workers: only the posterior sample z0 can differ.
    assert not np.allclose(first, second)


# ---------------------------------------------------------------------------
# Child processes (this file run as a script)
# ---------------------------------------------------------------------------


def _mirrored_checks(out):
    """Run every MirroredStrategy check in this fresh process; write a JSON report to ``out``."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    import tfode

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype("float32")
    x[4:] *= 10.0  # replica 1's half: dopri5 at 1e-6 takes fewer steps on it than on replica 0's
    y = rng.normal(size=(8, 2)).astype("float32")
    learning_rate = 0.1
    report = {}

    def ode_model(method):
        """``[8, 3] -> ODELayer -> Dense(2)``; rk4: an adjoint ODELayer, then a direct one."""
        keras.utils.set_random_seed(0)
        if method == "rk4":
            solver = {"method": "rk4", "options": {"step_size": 0.25}}
            blocks = [tfode.ODELayer(tfode.layers.TimeMLP(hidden=(8,)), adjoint=adjoint, name=name, **solver)
                      for adjoint, name in ((True, "adjoint"), (False, "direct"))]  # fmt: skip
        else:
            blocks = [tfode.ODELayer(tfode.layers.TimeMLP(hidden=(8,)), method=method, rtol=1e-6, atol=1e-6,
                                     name="ode")]  # fmt: skip
        return keras.Sequential([keras.Input((3,)), *blocks, keras.layers.Dense(2)])

    def eager_step(model, xs, ys, scale=1.0):
        """One SGD step on one device: ``(new weights, (forward NFE, backward NFE) of the first ODELayer)``."""
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(xs, training=True) - ys) ** 2) * scale
        grads = tape.gradient(loss, model.trainable_weights)
        layer = model.layers[0]
        nfe = (float(layer.num_fn_evals_forward.numpy()), float(layer.num_fn_evals_backward.numpy()))
        return [w.numpy() - learning_rate * g.numpy() for w, g in zip(model.trainable_weights, grads)], nfe

    def max_diff(weights, arrays):
        return max(float(np.max(np.abs(np.asarray(w) - a))) for w, a in zip(weights, arrays))

    for method in ("rk4", "dopri5"):
        initial = [w.numpy() for w in ode_model(method).trainable_weights]
        reference, _ = eager_step(ode_model(method), x, y)
        # Each replica's half with the loss scaled by 1/replicas, as Keras scales it: the
        # adjoint's error control then sees the replica's cotangents, hence its backward steps.
        replica_nfe = [eager_step(ode_model(method), x[i : i + 4], y[i : i + 4], 0.5)[1] for i in (0, 4)]
        with strategy.scope():
            model = ode_model(method)
            model.compile(keras.optimizers.SGD(learning_rate), "mse", jit_compile=False)
        history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0).history
        paths = [w.path for w in model.trainable_weights]
        report[method] = {
            "max_weight_diff": max_diff(model.trainable_weights, reference),
            "weight_diff": {p: max_diff([w], [r]) for p, w, r in zip(paths, model.trainable_weights, reference)},
            "weight_change": {p: max_diff([w], [i]) for p, w, i in zip(paths, model.trainable_weights, initial)},
            "history": {k: float(v[-1]) for k, v in history.items()},
            "replica_nfe": replica_nfe,
        }

    # Hutchinson noise: the flow's tf.random.Generator is created in the strategy scope.
    points = tfode.datasets.toy_2d("moons", 16, seed=0)

    keras.utils.set_random_seed(0)
    with strategy.scope():
        flow = tfode.models.ContinuousFlow(tfode.layers.TimeMLP(hidden=(8,)), dim=2, trace="hutchinson",
                                           rtol=1e-3, atol=1e-3)  # fmt: skip
        flow(points[:2])
        flow.compile(keras.optimizers.Adam(1e-2), jit_compile=False)  # the optimizer's variables: in scope
    # tf.identity: each replica its own input tensor (the bijector caches results per input tensor).
    per_replica = tf.function(lambda: strategy.run(lambda: flow(tf.identity(points), training=False)))()
    report["hutchinson_log_prob"] = [v.numpy().tolist() for v in strategy.experimental_local_results(per_replica)]

    initial = [w.numpy() for w in flow.trainable_weights]
    history = flow.fit(points, batch_size=16, epochs=1, shuffle=False, verbose=0).history
    report["flow"] = {"loss": history["loss"], "max_weight_change": max_diff(flow.trainable_weights, initial)}

    # LatentODE with per-series times (the example's batch format).
    data = tfode.datasets.spirals_2d(num_spirals=8, seed=0)
    times, values = tfode.datasets.subsample(data["times"], data["values"], 6, seed=0)
    keras.utils.set_random_seed(0)
    with strategy.scope():
        latent = tfode.models.LatentODE(obs_dim=2, latent_dim=2, encoder_units=4, field_hidden=(4,),
                                        decoder_hidden=(4,))  # fmt: skip
        latent({"times": times[:2], "values": values[:2]})
        latent.compile(keras.optimizers.Adam(1e-2), jit_compile=False)
    initial = [w.numpy() for w in latent.trainable_weights]
    history = latent.fit({"times": times, "values": values}, batch_size=8, epochs=1, shuffle=False, verbose=0).history
    report["latent_ode"] = {
        "loss": history["loss"],
        "max_weight_change": max_diff(latent.trainable_weights, initial),
        "nfe_forward": float(latent.num_fn_evals_forward.numpy()),
    }

    # An ODELayer beside an add_loss term (activity regularizer): the logged loss, with a
    # zero learning rate, must equal the single-device loss of the same batch.
    def regularized():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), tfode.ODELayer(tfode.layers.TimeMLP((8,))),
                                  keras.layers.Dense(2, activity_regularizer=keras.regularizers.L2(1.0))])  # fmt: skip
        model.compile(keras.optimizers.SGD(0.0), "mse", jit_compile=False)
        return model

    single_loss = regularized().evaluate(x, y, batch_size=8, verbose=0)[0]
    with strategy.scope():
        mirrored_model = regularized()
    history = mirrored_model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0).history
    report["add_loss"] = {"single": single_loss, "mirrored": history["loss"][0]}
    Path(out).write_text(json.dumps(report))


def _latent_noise_worker(ports, index, out_dir):
    """One of two MWMS workers: the LatentODE training-mode prediction on data shared by both."""
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports.split(",")]},
        "task": {"type": "worker", "index": int(index)},
    })  # fmt: skip
    import keras
    import tensorflow as tf

    import tfode

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    keras.utils.set_random_seed(0)  # the usual way to give every worker the same initial weights
    data = tfode.datasets.spirals_2d(num_spirals=2, seed=0)
    batch = {"times": data["times"][:5], "values": data["values"][:, :5]}
    with strategy.scope():
        model = tfode.models.LatentODE(obs_dim=2, latent_dim=2, encoder_units=4, field_hidden=(4,),
                                       decoder_hidden=(4,))  # fmt: skip
        model(batch)
    sample = tf.function(lambda: strategy.run(lambda: model(batch, training=True)))()
    np.save(Path(out_dir) / f"sample-{index}.npy", strategy.experimental_local_results(sample)[0].numpy())


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if sys.argv[1] == "mirrored":
        _mirrored_checks(sys.argv[2])
    elif sys.argv[1] == "latent-noise":
        _latent_noise_worker(*sys.argv[2:5])
    else:
        raise SystemExit(f"unknown child {sys.argv[1]!r}")
