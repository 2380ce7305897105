"""Shared helpers for the benchmark scripts (thread pinning, weights, timing, workers).

Every benchmark runs each framework in its own subprocess pinned to one core
(``taskset -c 0``) with every thread pool set to one thread (``THREAD_ENV``);
``pin_tensorflow`` / ``pin_torch`` finish the job inside the worker.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_WEIGHTS = os.environ.get("TFODE_BENCH_WEIGHTS", "/work/shared/bench/weights.npz")
PEER_PYTHON = "/work/venv-bench/bin/python"

THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "JAX_PLATFORMS": "cpu",
}


def set_thread_env():
    """Export ``THREAD_ENV`` (call before importing any framework)."""
    os.environ.update(THREAD_ENV)


def pin_tensorflow():
    """Import TensorFlow with one intra-op and one inter-op thread; returns the module."""
    set_thread_env()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return tf


def pin_torch():
    """Import torch with one thread; returns the module."""
    set_thread_env()
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (or pools already started)
        pass
    return torch


def load_workload(size, weights=DEFAULT_WEIGHTS):
    """``{"W1", "b1", "W2", "b2", "y0"}`` float32 arrays of workload ``size`` ("d2", "d32")."""
    import numpy as np

    d = np.load(weights)
    return {k: np.ascontiguousarray(d[f"{size}_{k}"]) for k in ("W1", "b1", "W2", "b2", "y0")}


def time_calls(fn, repeats, warmup=3):
    """Call ``fn()`` ``warmup`` times, then time ``repeats`` calls; list of ms."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def time_interleaved(fns, repeats, warmup=3):
    """Time several callables round-robin (one call of each per round).

    On a shared machine, interleaving spreads background load evenly over the
    implementations, so their ratios are fairer than back-to-back blocks.
    Process CPU time (``time.process_time``, all threads of this process) is
    recorded too: it excludes the time the process waits for a core that
    other jobs hold, so it is the steadier measure when the machine is busy.

    Args:
        fns: dict name -> zero-argument callable.
    Returns:
        ``(wall, cpu)``: dicts name -> list of ms.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            w1, c1 = time.perf_counter(), time.process_time()
            wall[name].append((w1 - w0) * 1e3)
            cpu[name].append((c1 - c0) * 1e3)
    return wall, cpu


def summary(times_ms):
    """``(median, min, max)`` of a list of ms."""
    import numpy as np

    t = np.asarray(times_ms, dtype=np.float64)
    return float(np.median(t)), float(t.min()), float(t.max())


def fmt_ms(x):
    return f"{x:.3g}" if x < 10 else f"{x:.1f}"


def loadavg():
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def run_pinned(script, argv, python=None, pin=True, log_prefix="bench"):
    """Run ``python script argv`` in a subprocess with ``THREAD_ENV``, under ``taskset -c 0``.

    tfode is importable from the repository root (put first on PYTHONPATH).
    Returns ``(returncode, stdout, stderr)``.
    """
    cmd = [python or sys.executable, os.path.abspath(script)] + list(argv)
    if pin and shutil.which("taskset"):
        cmd = ["taskset", "-c", "0"] + cmd
    env = dict(os.environ)
    env.update(THREAD_ENV)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    print(f"[{log_prefix}] {' '.join(cmd[:8])} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


def run_json_worker(script, argv, out_path, python=None, pin=True, log_prefix="bench"):
    """``run_pinned`` a worker that writes JSON to ``out_path``; returns the dict or ``{"error": ...}``."""
    rc, _, err = run_pinned(script, argv, python=python, pin=pin, log_prefix=log_prefix)
    if rc != 0 or not os.path.exists(out_path):
        tail = [line for line in err.strip().splitlines() if line.strip()][-6:]
        return {"error": f"worker failed (rc={rc}): " + " | ".join(tail)}
    with open(out_path) as fh:
        return json.load(fh)


def tfode_revision():
    """``"<commit>[+dirty: files] tree <sha1 of tfode/*.py>"``: which tfode the numbers belong to."""
    import hashlib

    try:
        commit = subprocess.run(
            ["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", REPO, "status", "--porcelain", "--", "tfode"], capture_output=True, text=True
        ).stdout.split("\n")
        dirty = sorted(line[3:].strip() for line in dirty if line.strip())
    except OSError:
        commit, dirty = "?", []
    digest = hashlib.sha1()
    pkg = os.path.join(REPO, "tfode")
    for root, _, files in sorted(os.walk(pkg)):
        for name in sorted(files):
            if name.endswith(".py"):
                with open(os.path.join(root, name), "rb") as fh:
                    digest.update(name.encode() + fh.read())
    rev = commit or "?"
    if dirty:
        rev += " + uncommitted changes to " + ", ".join(dirty)
    return f"{rev} (tfode/*.py sha1 {digest.hexdigest()[:10]})"
