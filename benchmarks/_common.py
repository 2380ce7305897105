"""Shared helpers of the benchmark workloads (paths, thread pinning, timing, workers, report lines).

Every workload runs each framework in its own subprocess (``Context.run``) pinned
to one core (``taskset -c 0``) with every thread pool set to one thread
(``THREAD_ENV``); ``pin_tensorflow`` / ``pin_torch`` finish the job inside the
worker. See ``benchmarks/run.py`` for the runner and the workload contract.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def default_weights():
    """``$TFODE_BENCH_WEIGHTS``, else ``shared/bench/weights.npz`` beside the repository (``../shared``)."""
    return os.environ.get("TFODE_BENCH_WEIGHTS") or os.path.join(
        os.path.dirname(REPO), "shared", "bench", "weights.npz"
    )


def default_peer_python():
    """``$TFODE_BENCH_PEER_PYTHON`` (the torch/JAX environment), else this interpreter."""
    return os.environ.get("TFODE_BENCH_PEER_PYTHON") or sys.executable


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


def load_workload(size, weights):
    """``{"W1", "b1", "W2", "b2", "y0"}`` float32 arrays of workload ``size`` ("d2", "d32")."""
    import numpy as np

    d = np.load(weights)
    return {k: np.ascontiguousarray(d[f"{size}_{k}"]) for k in ("W1", "b1", "W2", "b2", "y0")}


def jax_mlp_field(jnp):
    """The W1/W2 vector field for JAX: ``field(t, y, (W1, b1, W2, b2)) = tanh(y @ W1.T + b1) @ W2.T + b2``.

    Args:
        jnp: ``jax.numpy`` (passed in so that this module never imports JAX itself).
    """

    def field(t, y, p):
        W1, b1, W2, b2 = p
        return jnp.tanh(y @ W1.T + b1) @ W2.T + b2

    return field


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


def first_call_ms(fn):
    """Call ``fn()`` once (trace/compile included); ``(its result, wall ms)``."""
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1e3


def first_calls(calls, log_prefix=None):
    """``first_call_ms`` of every callable in turn; dict name -> ms.

    Args:
        calls: dict name -> zero-argument callable.
        log_prefix: when given, each time is logged to stderr as
            ``<log_prefix> <name>: first call X.X s``.
    """
    out = {}
    for name, call in calls.items():
        out[name] = first_call_ms(call)[1]
        if log_prefix is not None:
            print(f"{log_prefix} {name}: first call {out[name] / 1e3:.1f} s", file=sys.stderr, flush=True)
    return out


def summary(times_ms):
    """``(median, min, max)`` of a list of ms."""
    import numpy as np

    t = np.asarray(times_ms, dtype=np.float64)
    return float(np.median(t)), float(t.min()), float(t.max())


def fmt_ms(x):
    """Milliseconds for a table cell: 3 significant digits below 10, else one decimal."""
    return f"{x:.3g}" if x < 10 else f"{x:.1f}"


def loadavg():
    """``os.getloadavg()``, or three NaNs where the platform has none."""
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


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


# --------------------------------------------------------------------------- #
# Workers: one pinned subprocess per call
# --------------------------------------------------------------------------- #


class Context:
    """Where a workload's parent side runs its workers (``ctx.run``); see ``benchmarks/run.py``.

    Each worker is ``<interpreter> -m benchmarks.run --_worker NAME:KIND --_args FILE``
    in the repository root, with ``THREAD_ENV``, the repository first on
    ``PYTHONPATH`` and (unless ``--no-pin``) under ``taskset -c 0``. Its outputs
    go to a temporary folder, or ``<--keep-dir>/<NAME>`` to keep them;
    ``--from-dir`` re-reads them instead of running anything.
    """

    def __init__(self, name, module, args):
        self.name, self.module, self.args = name, module, args
        self._tmp = None
        self.workdir = None

    def __enter__(self):
        a = self.args
        if a.from_dir:
            self.workdir = os.path.join(a.from_dir, self.name)
        elif a.keep_dir:
            self.workdir = os.path.join(a.keep_dir, self.name)
            os.makedirs(self.workdir, exist_ok=True)
        else:
            self._tmp = tempfile.TemporaryDirectory()
            self.workdir = self._tmp.name
        return self

    def __exit__(self, *exc):
        if self._tmp is not None:
            self._tmp.cleanup()
        return False

    def run(self, kind, frameworks=(), tag=None, **overrides):
        """Run worker ``kind`` of this workload; its result dict (or ``{"error": ...}``).

        Args:
            kind: a key of the workload's ``WORKERS``.
            frameworks: passed to the worker function.
            tag: file name of this run's outputs (default ``kind``); give one per
                call when a kind runs several times (e.g. one process per row).
            **overrides: attributes of ``args`` to change for this worker only.
        Returns:
            The worker's JSON result, with ``"grads"`` (``load_grads``) when it
            saved an ``.npz`` of gradients through ``save_grads``.
        """
        out = os.path.join(self.workdir, f"{tag or kind}.json")
        if self.args.from_dir:
            return load_saved_output(out)
        _, interpreter = self.module.WORKERS[kind]
        python = self.args.tf_python if interpreter == "tf" else self.args.peer_python
        stored = dict(vars(self.args), **overrides)
        stored["_out"] = out
        args_path = out[: -len(".json")] + ".args.json"
        write_json(args_path, {"args": stored, "frameworks": list(frameworks)})
        cmd = [python, "-m", "benchmarks.run", "--_worker", f"{self.name}:{kind}", "--_args", args_path]
        if not self.args.no_pin and shutil.which("taskset"):
            cmd = ["taskset", "-c", "0"] + cmd
        env = dict(os.environ)
        env.update(THREAD_ENV)
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        label = f"{self.name}/{tag or kind}"
        print(f"[{label}] {python} ({', '.join(frameworks) or kind})", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.exists(out):
            tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-6:]
            return {"error": f"worker failed (rc={proc.returncode}): " + " | ".join(tail)}
        return attach_grads(read_json(out), out)


def split_list(text, convert=str):
    """``"a, b,,c"`` -> ``[convert("a"), convert("b"), convert("c")]`` (blank items dropped)."""
    return [convert(item.strip()) for item in text.split(",") if item.strip()]


def group_by_worker(frameworks, worker_of):
    """``{worker kind: [frameworks it runs]}`` in first-seen order.

    Args:
        frameworks: framework names, e.g. ``["tfode", "tfp", "diffrax"]``.
        worker_of: dict framework -> worker kind, e.g. ``{"tfode": "tf", "diffrax": "jax"}``.
    """
    by_worker = {}
    for fw in frameworks:
        by_worker.setdefault(worker_of[fw], []).append(fw)
    return by_worker


def import_optional(frameworks, modules):
    """Import the module of each requested framework, noting the ones that fail.

    Args:
        frameworks: the requested framework names.
        modules: dict framework -> module name, e.g. ``{"tfp": "tensorflow_probability"}``;
            frameworks not requested are not imported.
    Returns:
        ``(found, missing)``: dict framework -> module or ``None``, and dict
        framework -> ``"not installed (<ImportError>)"``.
    """
    import importlib

    found, missing = {}, {}
    for fw, module in modules.items():
        found[fw] = None
        if fw not in frameworks:
            continue
        try:
            found[fw] = importlib.import_module(module)
        except ImportError as err:
            missing[fw] = f"not installed ({err})"
    return found, missing


def impl_notes(frameworks, message, impls_of, joined=False):
    """Report lines ``"<impl>: <message>"`` for every implementation of ``frameworks``.

    Args:
        frameworks: framework names whose implementations the message concerns.
        message: e.g. a worker's ``"error"`` or ``"not installed (...)"``.
        impls_of: dict framework -> list of implementation names.
        joined: one line per framework, ``"<impl>, <impl>: <message>"``, instead of one per implementation.
    """
    if joined:
        return [f"{', '.join(impls_of[fw])}: {message}" for fw in frameworks]
    return [f"{impl}: {message}" for fw in frameworks for impl in impls_of[fw]]


def versions(**modules):
    """``{name: module.__version__ or "?"}`` of the imported modules (``None`` ones skipped)."""
    return {name: getattr(mod, "__version__", "?") for name, mod in modules.items() if mod is not None}


def read_json(path):
    """The JSON value stored at ``path``."""
    with open(path) as fh:
        return json.load(fh)


def write_json(path, value, indent=None):
    """Store ``value`` as JSON at ``path``."""
    with open(path, "w") as fh:
        json.dump(value, fh, indent=indent)


# --------------------------------------------------------------------------- #
# Gradients exchanged between workers and the parent
# --------------------------------------------------------------------------- #


def save_grads(path, grads):
    """Store ``{key: [array, ...]}`` (row convention) as float64 in one ``.npz``."""
    import numpy as np

    flat = {f"{key}|{i}": np.asarray(g, dtype=np.float64) for key, gs in grads.items() for i, g in enumerate(gs)}
    np.savez(path, **flat)


def load_grads(path):
    """The ``{key: [array, ...]}`` that ``save_grads`` stored at ``path``."""
    import numpy as np

    out = {}
    with np.load(path) as d:
        for k in d.files:
            key, i = k.rsplit("|", 1)
            out.setdefault(key, {})[int(i)] = d[k]
    return {key: [v[i] for i in range(len(v))] for key, v in out.items()}


def attach_grads(res, out_path):
    """Add ``res["grads"]`` from ``out_path + ".npz"`` when the worker succeeded and saved some; returns ``res``."""
    if "error" not in res and os.path.exists(out_path + ".npz"):
        res["grads"] = load_grads(out_path + ".npz")
    return res


def load_saved_output(out_path):
    """A worker's result saved at ``out_path`` (JSON, gradients attached), or ``{"error": ...}``."""
    if not os.path.exists(out_path):
        return {"error": "no saved output"}
    return attach_grads(read_json(out_path), out_path)


def rel_err(g, ref):
    """``||g - ref|| / ||ref||`` over all arrays of ``g`` and ``ref`` flattened and concatenated."""
    import numpy as np

    g = np.concatenate([np.ravel(x) for x in g]).astype(np.float64)
    r = np.concatenate([np.ravel(x) for x in ref]).astype(np.float64)
    return float(np.linalg.norm(g - r) / np.linalg.norm(r))


def jax_setup(x64):
    """Import JAX (float64 enabled if ``x64``) and diffrax with ``THREAD_ENV``; ``(jax, jnp, diffrax)``."""
    set_thread_env()
    import jax

    if x64:
        jax.config.update("jax_enable_x64", True)
    import diffrax
    import jax.numpy as jnp

    return jax, jnp, diffrax


# --------------------------------------------------------------------------- #
# Report footers
# --------------------------------------------------------------------------- #


def run_tf_worker(ctx):
    """Run a workload's single ``"tf"`` worker and print the header line (revision, load before/after).

    Returns the worker's result, or ``None`` after printing its error.
    """
    load_start, rev = loadavg(), tfode_revision()
    res = ctx.run("tf")
    if "error" in res:
        print(f"tf worker failed: {res['error']}")
        return None
    print(f"tfode {rev}; load average {load_start[0]:.1f} at the start, {loadavg()[0]:.1f} at the end.")
    return res


def print_loadavg(start, end):
    """Print the load averages (``loadavg()``) taken at the start and end of a run."""
    la0, la1 = (tuple(round(x, 2) for x in la) for la in (start, end))
    print(f"- load average (1/5/15 min) at start {la0}, end {la1} (machine: {os.cpu_count()} cores)")


def print_revision(start, end):
    """Print the ``tfode_revision()`` measured, with a warning if tfode's sources changed during the run."""
    print(f"- tfode: {start}")
    if end.split(" (", 1)[-1] != start.split(" (", 1)[-1]:  # the tfode/*.py digest; commits elsewhere are fine
        print(f"- WARNING: tfode changed during the run; at the end: {end}")


def print_notes_and_versions(notes, versions):
    """Print each note as a list item, then the ``{package: version}`` line if any."""
    for n in notes:
        print(f"- {n}")
    if versions:
        print("Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
