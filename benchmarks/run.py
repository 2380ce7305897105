"""One runner for every benchmark workload.

Usage (from the repository root)::

    python -m benchmarks.run W1 W2 ... [--weights PATH] [--peer-python PATH] [--json OUT.json]
        [workload options]
    python -m benchmarks.run --list

Each workload is a module of ``benchmarks/workloads`` named in ``WORKLOADS``.
It defines:

* ``add_args(parser)``: its own options (``--tols``, ``--repeats``, ...). An
  option given on the command line goes to every selected workload that
  defines it; one that no selected workload defines is an error.
* ``WORKERS``: ``{kind: (function, interpreter)}``. ``function(args,
  frameworks)`` runs in a fresh subprocess pinned to one core
  (``taskset -c 0``, every thread pool at one thread) and returns a JSON-able
  dict; it may also write arrays to ``args._out + ".npz"``. ``interpreter`` is
  ``"tf"`` (``--tf-python``, default: this interpreter) or ``"peer"``
  (``--peer-python``, the PyTorch/JAX environment).
* ``report(args, ctx)``: the parent side. It runs workers with
  ``ctx.run(kind, frameworks)``, prints a Markdown report and returns its raw
  results for ``--json``.

Common options:
    --weights PATH      the shared workload data (default ``$TFODE_BENCH_WEIGHTS``,
                        else ``../shared/bench/weights.npz`` next to the repository).
    --peer-python PATH  interpreter with torch/torchdiffeq/torchode/jax/diffrax
                        (default ``$TFODE_BENCH_PEER_PYTHON``, else this interpreter).
    --tf-python PATH    interpreter for the TensorFlow workers (default this one).
    --json PATH         raw results; with several workloads, ``PATH`` gets the
                        workload name inserted before the extension.
    --keep-dir DIR      keep the workers' raw outputs there (one sub-folder per workload).
    --from-dir DIR      run no worker: re-print the reports from a ``--keep-dir``.
    --no-pin            no ``taskset`` (e.g. GPU runs); thread pools stay at one thread.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _common as C  # noqa: E402

# name -> module of benchmarks.workloads (see ../shared/bench/README.md beside the repository and the issues).
WORKLOADS = {
    "W1": "w1_forward",
    "W1-eager": "w1_eager",
    "W1-nfe": "w1_nfe_variants",
    "W1-cost": "w1_step_cost",
    "W1-ops": "w1_graph_ops",
    "W2": "w2_gradient",
    "W2-direct": "w2_direct_xla",
    "W3": "w3_cnf",
    "W4": "w4_memory",
    "W5": "w5_keras_fit",
    "W6": "w6_vdp_batch",
    "serving": "serving",
    "batch_independence": "batch_independence",
    "W2-per-sample": "per_sample_gradient",
}


def load(name):
    """The workload module registered as ``name`` (case-insensitive)."""
    key = {k.lower(): k for k in WORKLOADS}[name.lower()]
    return importlib.import_module(f"benchmarks.workloads.{WORKLOADS[key]}")


def _common_parser(add_help=False):
    p = argparse.ArgumentParser(add_help=add_help, allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=C.default_weights(), help="workload data (.npz)")
    p.add_argument("--peer-python", default=C.default_peer_python(), help="torch/JAX interpreter")
    p.add_argument("--tf-python", default=sys.executable, help="TensorFlow interpreter")
    p.add_argument("--json", default=None, help="write the raw results here")
    p.add_argument("--keep-dir", default=None, help="keep the workers' raw outputs here")
    p.add_argument("--from-dir", default=None, help="only re-print reports from a --keep-dir")
    p.add_argument("--no-pin", action="store_true", help="do not run workers under taskset -c 0")
    return p


def _workload_parser(name):
    p = _common_parser()
    load(name).add_args(p)
    return p


def _json_path(path, name, several):
    if path is None or not several:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}.{name}{ext or '.json'}"


def _worker_main(argv):
    """``--_worker NAME:KIND --_args FILE``: run one worker function, write its JSON result."""
    p = argparse.ArgumentParser()
    p.add_argument("--_worker", required=True)
    p.add_argument("--_args", required=True)
    a = p.parse_args(argv)
    name, kind = a._worker.split(":", 1)
    stored = C.read_json(a._args)
    args = argparse.Namespace(**stored["args"])
    C.set_thread_env()
    fn, _ = load(name).WORKERS[kind]
    C.write_json(args._out, fn(args, stored["frameworks"]))
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--_worker":
        return _worker_main(argv)
    names_lower = {k.lower(): k for k in WORKLOADS}
    names = [names_lower[tok.lower()] for tok in argv if tok.lower() in names_lower]
    rest = [tok for tok in argv if tok.lower() not in names_lower]
    if "--list" in rest or not names:
        if not names and not ({"-h", "--help"} & set(rest)) and "--list" not in rest:
            print("no workload given; choose from: " + " ".join(WORKLOADS), file=sys.stderr)
            return 2
        if {"-h", "--help"} & set(rest):
            _common_parser(add_help=True).parse_args(["--help"])
        for name in WORKLOADS:
            doc = (load(name).__doc__ or "").strip().split("\n")[0]
            print(f"{name:8s} {doc}")
        return 0
    if {"-h", "--help"} & set(rest):
        for name in names:
            print(f"== {name}")
            _workload_parser(name).print_help()
        return 0

    parsed, leftovers = {}, []
    for name in names:
        args, unknown = _workload_parser(name).parse_known_args(rest)
        parsed[name] = args
        leftovers.append(set(u for u in unknown if u.startswith("-")))
    unknown = set.intersection(*leftovers) if leftovers else set()
    if unknown:
        print(f"unknown options for {', '.join(names)}: {' '.join(sorted(unknown))}", file=sys.stderr)
        return 2

    status = 0
    for name in names:
        args = parsed[name]
        module = load(name)
        if len(names) > 1:
            print(f"\n## {name}\n")
        ctx = C.Context(name, module, args)
        with ctx:
            raw = module.report(args, ctx)
        path = _json_path(args.json, name, len(names) > 1)
        if path and raw is not None:
            C.write_json(path, raw, indent=1)
        status = status or (raw is None)
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
