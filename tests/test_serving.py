"""Tests of ``tfode.serving``: exports that run without Python-side tfode.

* A C program compiled against TensorFlow's C API (the ``libtensorflow`` the
  wheel ships) loads each export with ``TF_LoadSessionFromSavedModel`` — the
  session-based C++ loader TF Serving uses — and runs ``serving_default`` and
  ``predict_with_tolerance`` at 1e-6; the latter must match the Python model to
  1e-5, the former to 1e-5 plus what the served tolerance allows (see
  ``_check_c_runs``).
* A fresh interpreter that imports TensorFlow but cannot import tfode loads
  each export and runs every signature; the graphs hold no XLA or Python ops.
* ``predict_with_tolerance`` changes the cost per request without reloading;
  bad inputs and empty batches; export versioning.

Exports: three small untrained models exported here into a temporary folder
(an ODE-Net, a latent ODE and a CNF), and every SavedModel under
``savedmodels/`` (written by ``savedmodels/regenerate.py``).

The models here use ``adjoint=False``: the served forward graph is the same,
but with the adjoint ``tf.saved_model.save`` also traces and stores the
adjoint gradient functions (the CNF's export takes ~5x longer and 2x the
bytes), which would dominate this file's runtime.

The C-API and tfode-free-process tests are marked ``slow`` (multi-process).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

import tfode
from tfode import serving

REPO = Path(__file__).resolve().parents[1]
COMMITTED = sorted(p.parent for p in (REPO / "savedmodels").glob("*/*/saved_model.pb") if p.parent.name.isdigit())
FORBIDDEN_OPS = {"XlaLaunch", "_XlaCompile", "_XlaRun", "PyFunc", "PyFuncStateless", "EagerPyFunc"}
# float32 outputs computed by the same graph in another runtime (C session vs Python eager
# function call): identical kernels, so differences are round-off; 1e-5 as the brief asks.
ATOL = 1e-5


def _committed_name(path):
    return f"savedmodels/{path.parent.name}/{path.name}"


# ---------------------------------------------------------------------------
# Exports
# ---------------------------------------------------------------------------


def _odenet():
    inputs = keras.Input((4,))
    h = keras.layers.Dense(8, activation="tanh")(inputs)
    h = tfode.ODELayer(tfode.layers.TimeMLP((16,)), t1=1.0, rtol=1e-3, atol=1e-3, adjoint=False)(h)
    # A wide head: cheap at batch 5, but at batch 1024 it keeps each request busy for a
    # while after its solve (the concurrency test needs that window).
    h = keras.layers.Dense(512, activation="tanh")(h)
    h = keras.layers.Dense(512, activation="tanh")(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h))


def _latent_ode():
    model = tfode.models.LatentODE(obs_dim=2, latent_dim=4, encoder_units=8, field_hidden=(16,),
                                   decoder_hidden=(16,), adjoint=False)  # fmt: skip
    model(_latent_inputs(2, 6, 3, seed=9))
    return model


def _cnf():
    model = tfode.models.ContinuousFlow(tfode.layers.TimeMLP((16,)), dim=2, rtol=1e-4, atol=1e-4, adjoint=False)
    model(tfode.datasets.toy_2d("8gaussians", 4))
    return model


def _latent_inputs(batch, length, queries, seed=0):
    """A valid irregular batch: sorted per-series times from 0, some entries missing."""
    rng = np.random.default_rng(seed)
    times = np.sort(rng.uniform(0.0, 3.0, (batch, length)), axis=1).astype(np.float32)
    times[:, 0] = 0.0
    values = rng.normal(size=(batch, length, 2)).astype(np.float32)
    mask = (rng.uniform(size=values.shape) > 0.2).astype(np.float32)
    mask[:, 0] = 1.0  # every series observed at least once
    query = np.sort(rng.uniform(0.0, 6.0, (batch, queries)), axis=1).astype(np.float32)  # inter- and extrapolation
    return {"times": times, "values": values, "mask": mask, "query_times": query}


def _signature_inputs(spec, batch=3, length=5, seed=0):
    """Valid float32/int32 arrays for a signature's input specs (``{name: TensorSpec}``).

    Unknown dimensions become ``batch`` (first) or ``length``; names ending in
    ``times`` get sorted non-negative times, ``*mask`` ones, ``rtol``/``atol`` 1e-3,
    ``num_samples`` 4 and ``seed`` a fixed pair.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, s in spec.items():
        shape = [(batch if i == 0 else length) if d is None else d for i, d in enumerate(s.shape.as_list())]
        if name in ("rtol", "atol"):
            arrays[name] = np.float32(1e-3)
        elif name == "num_samples":
            arrays[name] = np.int32(4)
        elif name == "seed":
            arrays[name] = np.array([1, 2], np.int32)
        elif name.endswith("times"):
            arrays[name] = np.sort(rng.uniform(0.0, 3.0, shape), axis=-1).astype(np.float32)
        elif name.endswith("mask"):
            arrays[name] = np.ones(shape, np.float32)
        else:
            arrays[name] = rng.normal(size=shape).astype(s.dtype.as_numpy_dtype)
    return arrays


class Export:
    """One SavedModel version directory, with (for fresh exports) the Keras model and a reference."""

    def __init__(self, name, path, model=None):
        self.name, self.path, self.model = name, Path(path), model

    def __repr__(self):
        return self.name

    def reference(self, inputs):
        """serving_default outputs computed by the Python model (fresh exports only), solved per sample
        without the adjoint as ``serving.export(per_sample=True)`` (the default) serves them."""
        if isinstance(self.model, tfode.models.LatentODE):
            outputs = self.model.serving_outputs(*(tf.constant(inputs[k]) for k in (
                "observed_times", "observed_values", "observed_mask", "query_times")))  # fmt: skip
            return {"mean": outputs["mean"].numpy(), "num_fn_evals": int(outputs["num_fn_evals"])}
        if isinstance(self.model, tfode.models.ContinuousFlow):
            served = self.model.solver.replace(adjoint=False, batch_axis=0)
            return {"log_prob": self.model(tf.constant(inputs["x"]), training=False, solver=served).numpy()}
        x = tf.constant(inputs["inputs"])
        nfe = 0
        for layer in self.model.layers:
            if isinstance(layer, tfode.ODELayer):
                x = layer(x, training=False, solver=layer.solver.replace(adjoint=False, batch_axis=0))
                nfe += int(np.max(layer.last_solve_stats.num_fn_evals))
            elif not isinstance(layer, keras.layers.InputLayer):
                x = layer(x)
        return {"outputs": x.numpy(), "num_fn_evals": nfe}


@pytest.fixture(scope="session")
def fresh(tmp_path_factory):
    """``{name: Export}``: three untrained models exported by ``tfode.serving.export``."""
    base = tmp_path_factory.mktemp("exports")
    keras.utils.set_random_seed(0)
    models = {"odenet": _odenet(), "latent_ode": _latent_ode(), "cnf": _cnf()}
    return {name: Export(name, serving.export(model, str(base / name)), model) for name, model in models.items()}


@pytest.fixture(scope="session")
def loaded():
    """``loaded(path)``: ``tf.saved_model.load`` once per path."""
    cache = {}

    def load(path):
        if str(path) not in cache:
            cache[str(path)] = tf.saved_model.load(str(path))
        return cache[str(path)]

    return load


def _meta_graph(path):
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    (meta_graph,) = saved.meta_graphs
    return meta_graph


def _structured_spec(loaded_model, key):
    return loaded_model.signatures[key].structured_input_signature[1]


def _signature_def_spec(path, key):
    """``{name: tf.TensorSpec}`` of a signature read from ``saved_model.pb`` (no loading)."""
    signature = _meta_graph(path).signature_def[key]
    return {
        name: tf.TensorSpec([None if d.size < 0 else d.size for d in info.tensor_shape.dim], tf.as_dtype(info.dtype))
        for name, info in signature.inputs.items()
    }


# ---------------------------------------------------------------------------
# C API loader
# ---------------------------------------------------------------------------

C_SOURCE = r"""
/* Load SavedModels with TensorFlow's C API (tag "serve") and run signature tensors.
 *
 * usage: tfode_loader JOBFILE. Each job in JOBFILE is a block of lines:
 *   model EXPORT_DIR
 *   in TENSOR_NAME DTYPE FILE NDIMS DIM...    (DTYPE float32 | int32; FILE raw bytes)
 *   out TENSOR_NAME FILE                      (int32 dtype, int32 ndims, int64 dims, data)
 *   run
 * and prints "RESULT <job> OK" or "RESULT <job> FAIL <message>" per job.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tensorflow/c/c_api.h"

#define MAX_IO 16
#define MAX_LINE 4096

typedef struct {
  char model[MAX_LINE];
  int num_inputs, num_outputs;
  char input_names[MAX_IO][512], input_paths[MAX_IO][MAX_LINE], output_names[MAX_IO][512];
  char output_paths[MAX_IO][MAX_LINE];
  TF_DataType input_types[MAX_IO];
  int input_ndims[MAX_IO];
  int64_t input_dims[MAX_IO][8];
} Job;

static void print_failure(int job, const char* what, const char* message) {
  printf("RESULT %d FAIL %s: ", job, what);
  for (const char* c = message; *c; ++c) putchar(*c == '\n' ? ' ' : *c);
  putchar('\n');
  fflush(stdout);
}

static int graph_output(TF_Graph* graph, const char* tensor_name, TF_Output* out) {
  char op_name[512];
  const char* colon = strrchr(tensor_name, ':');
  size_t len = colon ? (size_t)(colon - tensor_name) : strlen(tensor_name);
  if (len >= sizeof(op_name)) return 0;
  memcpy(op_name, tensor_name, len);
  op_name[len] = '\0';
  out->oper = TF_GraphOperationByName(graph, op_name);
  out->index = colon ? atoi(colon + 1) : 0;
  return out->oper != NULL;
}

static TF_Tensor* read_tensor(const char* path, TF_DataType dtype, const int64_t* dims, int ndims) {
  size_t count = 1;
  for (int i = 0; i < ndims; ++i) count *= (size_t)dims[i];
  size_t nbytes = count * TF_DataTypeSize(dtype);
  TF_Tensor* tensor = TF_AllocateTensor(dtype, dims, ndims, nbytes);
  FILE* fh = fopen(path, "rb");
  if (fh == NULL) return NULL;
  size_t got = nbytes > 0 ? fread(TF_TensorData(tensor), 1, nbytes, fh) : 0;
  fclose(fh);
  if (got != nbytes) {
    TF_DeleteTensor(tensor);
    return NULL;
  }
  return tensor;
}

static int write_tensor(const char* path, const TF_Tensor* tensor) {
  FILE* fh = fopen(path, "wb");
  if (fh == NULL) return 0;
  int32_t header[2] = {(int32_t)TF_TensorType(tensor), (int32_t)TF_NumDims(tensor)};
  fwrite(header, sizeof(int32_t), 2, fh);
  for (int i = 0; i < header[1]; ++i) {
    int64_t dim = TF_Dim(tensor, i);
    fwrite(&dim, sizeof(int64_t), 1, fh);
  }
  fwrite(TF_TensorData(tensor), 1, TF_TensorByteSize(tensor), fh);
  fclose(fh);
  return 1;
}

static void run_job(int index, const Job* job) {
  TF_Status* status = TF_NewStatus();
  TF_Graph* graph = TF_NewGraph();
  TF_SessionOptions* options = TF_NewSessionOptions();
  const char* tags[] = {"serve"};
  TF_Session* session = TF_LoadSessionFromSavedModel(options, NULL, job->model, tags, 1, graph, NULL, status);
  TF_Output inputs[MAX_IO], outputs[MAX_IO];
  TF_Tensor* input_values[MAX_IO] = {0};
  TF_Tensor* output_values[MAX_IO] = {0};
  if (TF_GetCode(status) != TF_OK) {
    print_failure(index, "TF_LoadSessionFromSavedModel", TF_Message(status));
    goto done;
  }
  for (int i = 0; i < job->num_inputs; ++i) {
    if (!graph_output(graph, job->input_names[i], &inputs[i])) {
      print_failure(index, "no input tensor", job->input_names[i]);
      goto close;
    }
    input_values[i] = read_tensor(job->input_paths[i], job->input_types[i], job->input_dims[i], job->input_ndims[i]);
    if (input_values[i] == NULL) {
      print_failure(index, "cannot read", job->input_paths[i]);
      goto close;
    }
  }
  for (int i = 0; i < job->num_outputs; ++i) {
    if (!graph_output(graph, job->output_names[i], &outputs[i])) {
      print_failure(index, "no output tensor", job->output_names[i]);
      goto close;
    }
  }
  TF_SessionRun(session, NULL, inputs, input_values, job->num_inputs, outputs, output_values, job->num_outputs,
                NULL, 0, NULL, status);
  if (TF_GetCode(status) != TF_OK) {
    print_failure(index, "TF_SessionRun", TF_Message(status));
    goto close;
  }
  for (int i = 0; i < job->num_outputs; ++i) {
    if (!write_tensor(job->output_paths[i], output_values[i])) {
      print_failure(index, "cannot write", job->output_paths[i]);
      goto close;
    }
  }
  printf("RESULT %d OK\n", index);
  fflush(stdout);
close:
  for (int i = 0; i < MAX_IO; ++i) {
    if (input_values[i]) TF_DeleteTensor(input_values[i]);
    if (output_values[i]) TF_DeleteTensor(output_values[i]);
  }
  TF_CloseSession(session, status);
  TF_DeleteSession(session, status);
done:
  TF_DeleteSessionOptions(options);
  TF_DeleteGraph(graph);
  TF_DeleteStatus(status);
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s JOBFILE\n", argv[0]);
    return 2;
  }
  FILE* fh = fopen(argv[1], "r");
  if (fh == NULL) {
    perror(argv[1]);
    return 2;
  }
  printf("TF_Version %s\n", TF_Version());
  static Job job;
  char line[MAX_LINE];
  int index = 0;
  memset(&job, 0, sizeof(job));
  while (fgets(line, sizeof(line), fh)) {
    char* word = strtok(line, " \n");
    if (word == NULL) continue;
    if (strcmp(word, "model") == 0) {
      memset(&job, 0, sizeof(job));
      snprintf(job.model, sizeof(job.model), "%s", strtok(NULL, "\n"));
    } else if (strcmp(word, "in") == 0 && job.num_inputs < MAX_IO) {
      int i = job.num_inputs++;
      snprintf(job.input_names[i], sizeof(job.input_names[i]), "%s", strtok(NULL, " "));
      job.input_types[i] = strcmp(strtok(NULL, " "), "int32") == 0 ? TF_INT32 : TF_FLOAT;
      snprintf(job.input_paths[i], sizeof(job.input_paths[i]), "%s", strtok(NULL, " "));
      job.input_ndims[i] = atoi(strtok(NULL, " \n"));
      for (int d = 0; d < job.input_ndims[i] && d < 8; ++d) job.input_dims[i][d] = atoll(strtok(NULL, " \n"));
    } else if (strcmp(word, "out") == 0 && job.num_outputs < MAX_IO) {
      int i = job.num_outputs++;
      snprintf(job.output_names[i], sizeof(job.output_names[i]), "%s", strtok(NULL, " "));
      snprintf(job.output_paths[i], sizeof(job.output_paths[i]), "%s", strtok(NULL, "\n"));
    } else if (strcmp(word, "run") == 0) {
      run_job(index++, &job);
    } else {
      fprintf(stderr, "bad job line starting with %s\n", word);
      return 2;
    }
  }
  fclose(fh);
  return 0;
}
"""


def _c_api_library(lib_dir):
    """The shared library in TensorFlow's wheel that exports the C API's saved-model loader."""
    candidates = sorted(Path(lib_dir).glob("libtensorflow*.so*")) + sorted(Path(lib_dir, "python").glob("*.so"))
    if shutil.which("nm"):
        for path in candidates:
            symbols = subprocess.run(["nm", "-D", "--defined-only", str(path)], capture_output=True, text=True).stdout
            if re.search(r"\sT TF_LoadSessionFromSavedModel\b", symbols):
                return path
        pytest.fail(f"no library under {lib_dir} exports TF_LoadSessionFromSavedModel (nm -D)")
    return Path(lib_dir) / "libtensorflow_cc.so.2"  # the wheel's C/C++ API library (TF 2.x)


@pytest.fixture(scope="session")
def c_loader(tmp_path_factory):
    """``(binary, library)``: the C program of ``C_SOURCE``, compiled once per session."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler (gcc or cc) on PATH: the C-API SavedModel loader test needs one")
    include, lib_dir = tf.sysconfig.get_include(), tf.sysconfig.get_lib()
    if not Path(include, "tensorflow", "c", "c_api.h").exists():
        pytest.fail(f"tensorflow/c/c_api.h missing under {include}: the wheel ships the C API headers")
    library = _c_api_library(lib_dir)
    work = tmp_path_factory.mktemp("c_loader")
    source, binary = work / "tfode_loader.c", work / "tfode_loader"
    source.write_text(C_SOURCE)
    command = [compiler, "-std=c11", "-O1", "-Wall", "-Werror", f"-I{include}", str(source), "-o", str(binary),
               f"-L{lib_dir}", f"-L{library.parent}", f"-l:{library.name}", "-l:libtensorflow_framework.so.2",
               f"-Wl,-rpath,{lib_dir}", f"-Wl,-rpath,{library.parent}"]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(command)}\n{proc.stderr}"
    return binary, library


def _c_job_lines(export, key, inputs, work, tag):
    """Job-file lines that run signature ``key`` of ``export`` on ``inputs``; returns (lines, outputs)."""
    signature = _meta_graph(export.path).signature_def[key]
    lines = [f"model {export.path}"]
    for name, array in inputs.items():
        path = work / f"{tag}_in_{name}.bin"
        np.ascontiguousarray(array).tofile(path)
        dtype = {np.dtype(np.float32): "float32", np.dtype(np.int32): "int32"}[array.dtype]
        lines.append(f"in {signature.inputs[name].name} {dtype} {path} {array.ndim} {' '.join(map(str, array.shape))}")
    outputs = {}
    for name, info in signature.outputs.items():
        outputs[name] = work / f"{tag}_out_{name}.bin"
        lines.append(f"out {info.name} {outputs[name]}")
    return lines + ["run"], outputs


def _read_c_tensor(path):
    raw = Path(path).read_bytes()
    dtype_code, ndims = np.frombuffer(raw[:8], np.int32)
    dims = np.frombuffer(raw[8 : 8 + 8 * ndims], np.int64)
    dtype = {1: np.float32, 3: np.int32}[int(dtype_code)]
    return np.frombuffer(raw[8 + 8 * ndims :], dtype).reshape(dims)


# ``predict_with_tolerance`` is also run by the C loader at this tolerance: tight enough that the
# runtimes' round-off cannot move the answer by more than ``ATOL``.
TIGHT_TOLERANCE = 1e-6


def _c_jobs(export, seed):
    """``[(key, inputs)]`` for the C loader: ``serving_default`` and, if exported, ``predict_with_tolerance`` on
    the same inputs at ``TIGHT_TOLERANCE``."""
    served = _signature_inputs(_signature_def_spec(export.path, "serving_default"), seed=seed)
    jobs = [("serving_default", served)]
    signatures = _meta_graph(export.path).signature_def
    if "predict_with_tolerance" in signatures:
        assert set(signatures["predict_with_tolerance"].inputs) == set(served) | {"rtol", "atol"}
        tight = np.float32(TIGHT_TOLERANCE)
        jobs.append(("predict_with_tolerance", dict(served, rtol=tight, atol=tight)))
    return jobs


@pytest.fixture(scope="session")
def c_runs(c_loader, fresh, tmp_path_factory):
    """Run the C loader once over every export; ``{name: {key: (export, inputs, result, outputs)}}``."""
    binary, _ = c_loader
    work = tmp_path_factory.mktemp("c_runs")
    exports = list(fresh.values())
    exports += [Export(_committed_name(p), p) for p in COMMITTED]
    jobs, lines = [], []
    for i, export in enumerate(exports):
        for key, inputs in _c_jobs(export, seed=i):
            job_lines, outputs = _c_job_lines(export, key, inputs, work, f"job{len(jobs)}")
            lines += job_lines
            jobs.append((export, key, inputs, outputs))
    (work / "jobs.txt").write_text("\n".join(lines) + "\n")
    proc = subprocess.run([str(binary), str(work / "jobs.txt")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = dict(re.findall(r"^RESULT (\d+) (.*)$", proc.stdout, re.MULTILINE))
    version = re.search(r"^TF_Version (\S+)", proc.stdout, re.MULTILINE).group(1)
    runs = {}
    for i, (export, key, inputs, outputs) in enumerate(jobs):
        runs.setdefault(export.name, {})[key] = (export, inputs, results.get(str(i), "missing"), outputs)
    return version, runs


def _python_outputs(run, key, loaded):
    export, inputs, _, _ = run
    if key == "serving_default" and export.model is not None:
        return export.reference(inputs)
    signature = loaded(export.path).signatures[key]
    return {k: v.numpy() for k, v in signature(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def _c_outputs(run):
    _, _, result, outputs = run
    if "Could not find variable" in result:
        raise UninitializedVariableError(result[:400])
    assert result == "OK", result[:2000]
    return {name: _read_c_tensor(path) for name, path in outputs.items()}


def _check_c_runs(runs, loaded):
    """The C loader's outputs equal Python's.

    At ``TIGHT_TOLERANCE`` to ``ATOL``. At the served tolerance the two runtimes' last-bit round-off
    (different kernels or fusions for the same graph) can flip one accept/reject decision, which the
    adaptive step control amplifies up to the tolerance: there ``serving_default``'s values must agree
    to ``ATOL`` plus twice the served answer's own error (against the tight answer).
    """
    slack = {}
    tight = runs.get("predict_with_tolerance")
    if tight is not None:
        c_tight, py_tight = _c_outputs(tight), _python_outputs(tight, "predict_with_tolerance", loaded)
        assert set(c_tight) == set(py_tight)
        for name, value in py_tight.items():
            if name != "num_fn_evals":
                np.testing.assert_allclose(c_tight[name], value, rtol=0, atol=ATOL, err_msg=f"tight:{name}")
    served = runs["serving_default"]
    c_served, py_served = _c_outputs(served), _python_outputs(served, "serving_default", loaded)
    assert set(c_served) == set(py_served)
    for name, value in py_served.items():
        assert c_served[name].shape == np.shape(value), name
        if name == "num_fn_evals":
            continue  # checked below: a flipped decision changes the count
        if tight is not None:
            slack[name] = 2 * float(np.max(np.abs(np.asarray(value) - py_tight[name])))
        bound = ATOL + slack.get(name, 0.0)
        np.testing.assert_allclose(c_served[name], value, rtol=0, atol=bound, err_msg=f"serving_default:{name}")
    if "num_fn_evals" in py_served and all(
        np.max(np.abs(c_served[k] - np.asarray(v)), initial=0.0) <= ATOL
        for k, v in py_served.items()
        if k != "num_fn_evals"
    ):
        np.testing.assert_array_equal(c_served["num_fn_evals"], py_served["num_fn_evals"])


class UninitializedVariableError(AssertionError):
    """The C++ loader restored the export but a signature read a variable nothing initialised."""


@pytest.mark.slow
def test_c_api_library_is_this_tensorflow(c_runs, c_loader):
    version, _ = c_runs
    assert version == tf.__version__, f"C API of {c_loader[1]} reports {version}"


C_LOADER_CASES = ["odenet", "latent_ode", "cnf"] + [_committed_name(p) for p in COMMITTED]


@pytest.mark.slow
@pytest.mark.parametrize("name", C_LOADER_CASES)
def test_c_loader_matches_python(name, c_runs, loaded):
    _, runs = c_runs
    _check_c_runs(runs[name], loaded)


# ---------------------------------------------------------------------------
# A process without tfode
# ---------------------------------------------------------------------------

NO_TFODE_SCRIPT = textwrap.dedent(
    r"""
    import importlib.abc, json, os, sys

    class BlockTfode(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "tfode" or name.startswith("tfode."):
                raise ImportError("tfode must not be imported to serve an export")

    sys.meta_path.insert(0, BlockTfode())
    import numpy as np
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    report = {}
    out_dir = sys.argv[1]
    for i, path in enumerate(sys.argv[2:]):
        saved = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as fh:
            saved.ParseFromString(fh.read())
        graph = saved.meta_graphs[0].graph_def
        ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
        xla_attrs = sorted(f.signature.name for f in graph.library.function if f.attr["_XlaMustCompile"].b)
        model = tf.saved_model.load(path)
        entry = {"ops": sorted(ops), "xla_must_compile": xla_attrs, "signatures": {}}
        for key in sorted(model.signatures):
            fn = model.signatures[key]
            arrays = dict(np.load(os.path.join(out_dir, f"{i}_{key}_in.npz")))  # written by the test process
            outputs = {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in arrays.items()}).items()}
            np.savez(os.path.join(out_dir, f"{i}_{key}.npz"),
                     **{"in_" + k: v for k, v in arrays.items()}, **{"out_" + k: v for k, v in outputs.items()})
            entry["signatures"][key] = {k: [list(v.shape), str(v.dtype), bool(np.all(np.isfinite(v)))]
                                        for k, v in outputs.items()}
        report[path] = entry
    report["tfode_imported"] = "tfode" in sys.modules
    with open(os.path.join(out_dir, "report.json"), "w") as fh:
        json.dump(report, fh)
    """
)


@pytest.fixture(scope="session")
def no_tfode_run(fresh, tmp_path_factory):
    """Run ``NO_TFODE_SCRIPT`` over every export in a fresh interpreter; ``(report, out_dir, paths)``."""
    out = tmp_path_factory.mktemp("no_tfode")
    paths = [str(e.path) for e in fresh.values()] + [str(p) for p in COMMITTED]
    for i, path in enumerate(paths):
        for key in _meta_graph(path).signature_def:
            if not key.startswith("__"):
                np.savez(out / f"{i}_{key}_in.npz", **_signature_inputs(_signature_def_spec(path, key), seed=i))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run([sys.executable, "-c", NO_TFODE_SCRIPT, str(out), *paths], cwd=out, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "report.json").read_text()), out, paths


@pytest.mark.slow
def test_exports_served_without_tfode(no_tfode_run):
    report, _, paths = no_tfode_run
    assert report.pop("tfode_imported") is False
    for path in paths:
        entry = report[path]
        assert not FORBIDDEN_OPS & set(entry["ops"]), (path, FORBIDDEN_OPS & set(entry["ops"]))
        assert entry["xla_must_compile"] == [], path
        expected = {"serving_default", "predict_with_tolerance"}
        if "log_prob" in entry["signatures"]["serving_default"]:  # a flow
            expected |= {"log_prob", "sample"}
        assert set(entry["signatures"]) == expected, path
        for key, outputs in entry["signatures"].items():
            for name, (_, dtype, finite) in outputs.items():
                assert finite, (path, key, name)
                assert dtype in ("float32", "int32"), (path, key, name, dtype)


@pytest.mark.slow
def test_no_tfode_outputs_match_python_models(no_tfode_run, fresh):
    """serving_default run in the tfode-free process equals the Python model to 1e-5."""
    _, out, paths = no_tfode_run
    for i, export in enumerate(fresh.values()):
        assert paths[i] == str(export.path)
        data = np.load(out / f"{i}_serving_default.npz")
        inputs = {k[3:]: data[k] for k in data.files if k.startswith("in_")}
        for name, value in export.reference(inputs).items():
            np.testing.assert_allclose(data["out_" + name], value, rtol=0, atol=ATOL, err_msg=f"{export}:{name}")


# ---------------------------------------------------------------------------
# Signatures in this process
# ---------------------------------------------------------------------------


TOLERANCE_CASES = ["odenet", "latent_ode"] + [_committed_name(p) for p in COMMITTED if "cnf" not in p.parent.name]


@pytest.mark.parametrize("case", TOLERANCE_CASES)
def test_predict_with_tolerance_changes_cost_without_reload(case, fresh, loaded):
    path = fresh[case].path if case in fresh else REPO / case
    model = loaded(path)
    fn = model.signatures["predict_with_tolerance"]
    inputs = _signature_inputs(_structured_spec(model, "predict_with_tolerance"), batch=4, length=8)
    nfe = {}
    for tol in (1e-1, 1e-6, 1e-1):  # loose again last: nothing is latched by the tight request
        args = {**{k: tf.constant(v) for k, v in inputs.items()}, "rtol": tf.constant(tol), "atol": tf.constant(tol)}
        nfe.setdefault(tol, []).append(int(fn(**args)["num_fn_evals"]))
    assert nfe[1e-1][0] == nfe[1e-1][1], nfe
    assert nfe[1e-1][0] < nfe[1e-6][0], nfe


def test_cnf_predict_with_tolerance_matches_log_prob(fresh, loaded):
    model = loaded(fresh["cnf"].path)
    x = tf.constant(tfode.datasets.toy_2d("8gaussians", 16, seed=3))
    default = model.signatures["log_prob"](x=x)["log_prob"].numpy()
    np.testing.assert_array_equal(model.signatures["serving_default"](x=x)["log_prob"].numpy(), default)

    def with_tolerance(tol):
        return model.signatures["predict_with_tolerance"](x=x, rtol=tf.constant(tol), atol=tf.constant(tol))

    # The export's own tolerance (1e-4) through the override: the same solve, to round-off.
    np.testing.assert_allclose(with_tolerance(1e-4)["log_prob"].numpy(), default, rtol=0, atol=1e-6)
    # A tight solve agrees with the default one to about its tolerance.
    np.testing.assert_allclose(with_tolerance(1e-7)["log_prob"].numpy(), default, rtol=0, atol=1e-3)
    samples = model.signatures["sample"](num_samples=tf.constant(5), seed=tf.constant([3, 4]))["samples"]
    again = model.signatures["sample"](num_samples=tf.constant(5), seed=tf.constant([3, 4]))["samples"]
    assert samples.shape == (5, 2)
    np.testing.assert_array_equal(samples.numpy(), again.numpy())  # stateless: the seed decides


_BAD_ERRORS = (ValueError, TypeError, tf.errors.InvalidArgumentError)


def _bad_inputs():
    """``(id, model, inputs)``: serving_default requests with a wrong shape, dtype or name."""
    lat = _latent_inputs(3, 6, 4)
    good = {"observed_times": lat["times"], "observed_values": lat["values"], "observed_mask": lat["mask"],
            "query_times": lat["query_times"]}  # fmt: skip
    return [
        ("odenet-features", "odenet", {"inputs": np.zeros((5, 3), np.float32)}),  # 3 features, not 4
        ("odenet-rank1", "odenet", {"inputs": np.zeros((5,), np.float32)}),
        ("odenet-float64", "odenet", {"inputs": np.zeros((5, 4), np.float64)}),
        ("odenet-int32", "odenet", {"inputs": np.zeros((5, 4), np.int32)}),
        ("odenet-name", "odenet", {"x": np.zeros((5, 4), np.float32)}),
        ("latent-dim", "latent_ode", {**good, "observed_values": np.zeros((3, 6, 3), np.float32)}),
        ("latent-times-rank1", "latent_ode", {**good, "observed_times": lat["times"][0]}),
        ("latent-times-length", "latent_ode", {**good, "observed_times": np.zeros((3, 7), np.float32)}),
        ("latent-float64", "latent_ode", {**good, "query_times": lat["query_times"].astype(np.float64)}),
        ("latent-missing", "latent_ode", {k: v for k, v in good.items() if k != "observed_mask"}),
        ("cnf-dim", "cnf", {"x": np.zeros((5, 3), np.float32)}),
        ("cnf-int32", "cnf", {"x": np.zeros((5, 2), np.int32)}),
    ]


@pytest.mark.parametrize("case, inputs", [c[1:] for c in _bad_inputs()], ids=[c[0] for c in _bad_inputs()])
def test_bad_inputs_raise_tensorflow_errors(case, inputs, fresh, loaded):
    fn = loaded(fresh[case].path).signatures["serving_default"]
    with pytest.raises(_BAD_ERRORS):
        fn(**{k: tf.constant(v) for k, v in inputs.items()})


def test_bad_scalar_arguments_raise(fresh, loaded):
    model = loaded(fresh["cnf"].path)
    x = tf.zeros([2, 2])
    with pytest.raises(_BAD_ERRORS):
        model.signatures["predict_with_tolerance"](x=x, rtol=tf.constant([1e-3, 1e-3]), atol=tf.constant(1e-3))
    with pytest.raises(_BAD_ERRORS):
        model.signatures["sample"](num_samples=tf.constant(-1), seed=tf.constant([1, 2]))
    with pytest.raises(_BAD_ERRORS):
        model.signatures["sample"](num_samples=tf.constant(2), seed=tf.constant([1, 2, 3]))


def test_empty_batch_odenet_and_cnf(fresh, loaded):
    """B = 0 works for the ODE-Net and the CNF: empty outputs, no error."""
    odenet = loaded(fresh["odenet"].path).signatures["serving_default"](inputs=tf.zeros([0, 4]))
    assert odenet["outputs"].shape == (0, 3)
    cnf = loaded(fresh["cnf"].path)
    assert cnf.signatures["log_prob"](x=tf.zeros([0, 2]))["log_prob"].shape == (0,)
    assert cnf.signatures["sample"](num_samples=tf.constant(0), seed=tf.constant([1, 2]))["samples"].shape == (0, 2)


def test_empty_batch_latent_ode(fresh, loaded):
    fn = loaded(fresh["latent_ode"].path).signatures["serving_default"]
    out = fn(observed_times=tf.zeros([0, 6]), observed_values=tf.zeros([0, 6, 2]),
             observed_mask=tf.zeros([0, 6, 2]), query_times=tf.zeros([0, 4]))  # fmt: skip
    assert out["mean"].shape == (0, 4, 2)


def test_odenet_num_fn_evals_is_per_request_under_concurrency(fresh, loaded):
    fn = loaded(fresh["odenet"].path).signatures["predict_with_tolerance"]
    x = tf.constant(np.random.default_rng(0).normal(size=(1024, 4)).astype(np.float32))

    def nfe(tol):
        return int(fn(inputs=x, rtol=tf.constant(tol), atol=tf.constant(tol))["num_fn_evals"])

    expected = {tol: nfe(tol) for tol in (1e-1, 1e-7)}
    assert expected[1e-1] != expected[1e-7]
    wrong = []

    def worker(tol):
        for _ in range(12):
            got = nfe(tol)
            if got != expected[tol]:
                wrong.append((tol, got))

    threads = [threading.Thread(target=worker, args=(tol,)) for tol in (1e-1, 1e-7, 1e-1, 1e-7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wrong, f"{len(wrong)} of 48 responses carried another request's NFE, e.g. {wrong[:4]}"


# ---------------------------------------------------------------------------
# Versioning and argument checks
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dense_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    return model


def test_export_next_free_version(dense_model, tmp_path):
    base = tmp_path / "model"
    assert serving.next_version(str(base)) == 1
    assert serving.export(dense_model, str(base)) == str(base / "1")
    assert serving.export(dense_model, str(base)) == str(base / "2")
    (base / "7").mkdir()
    (base / "tmp").mkdir()  # not a version: ignored
    (base / "8.bak").mkdir()
    assert serving.next_version(str(base)) == 8
    assert serving.export(dense_model, str(base)) == str(base / "8")
    assert serving.export(dense_model, str(base), version=4) == str(base / "4")
    assert sorted(os.listdir(base)) == ["1", "2", "4", "7", "8", "8.bak", "example_request.json", "tmp"]


def test_export_existing_version_raises(dense_model, tmp_path):
    serving.export(dense_model, str(tmp_path), version=3)
    before = sorted(os.listdir(tmp_path / "3"))
    with pytest.raises(ValueError, match="already exists"):
        serving.export(dense_model, str(tmp_path), version=3)
    assert sorted(os.listdir(tmp_path / "3")) == before


@pytest.mark.parametrize("version", [0, -1, True, 1.0, "2"])
def test_export_bad_version_raises(dense_model, tmp_path, version):
    with pytest.raises(ValueError, match="version"):
        serving.export(dense_model, str(tmp_path), version=version)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.Sequential([keras.layers.Dense(2)]),
        lambda: tfode.models.LatentODE(obs_dim=2),
        lambda: tfode.models.ContinuousFlow(tfode.layers.TimeMLP((4,)), dim=2),
    ],
    ids=["sequential", "latent_ode", "cnf"],
)
def test_export_unbuilt_model_raises(make, tmp_path):
    with pytest.raises(ValueError, match="build"):
        serving.export(make(), str(tmp_path))
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("obj", [tf.Module(), lambda x: x, "model"], ids=["tf_module", "function", "string"])
def test_export_non_keras_raises_type_error(obj, tmp_path):
    with pytest.raises(TypeError, match="keras.Model"):
        serving.export(obj, str(tmp_path))
    assert not os.listdir(tmp_path)


def test_latent_ode_with_ode_rnn_encoder_and_classifier(tmp_path):
    """Optional heads are served: logits next to the mean; the tolerance knob reaches the ODE-RNN encoder."""
    keras.utils.set_random_seed(3)
    model = tfode.models.LatentODE(obs_dim=2, latent_dim=3, encoder="ode_rnn", encoder_units=6, field_hidden=(8,),
                                   decoder_hidden=(8,), num_classes=3, poisson=True, adjoint=False)  # fmt: skip
    inputs = _latent_inputs(2, 5, 3, seed=4)
    model(inputs)
    signatures = tf.saved_model.load(serving.export(model, str(tmp_path / "lode"))).signatures
    request = {f"observed_{k}": tf.constant(inputs[k]) for k in ("times", "values", "mask")}
    request["query_times"] = tf.constant(inputs["query_times"])
    served = signatures["serving_default"](**request)
    assert set(served) == {"mean", "logits", "num_fn_evals"}
    expected = model(inputs, training=False)
    np.testing.assert_allclose(served["mean"], expected["mean"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(served["logits"], expected["logits"], rtol=0, atol=ATOL)
    loose = signatures["predict_with_tolerance"](**request, rtol=tf.constant(0.5), atol=tf.constant(0.5))
    assert int(loose["num_fn_evals"]) < int(served["num_fn_evals"])
    assert not np.allclose(loose["logits"], served["logits"], rtol=0, atol=1e-7)  # the encoder's solves too


@pytest.mark.parametrize("name", ["odenet", "latent_ode", "cnf"])
@pytest.mark.parametrize("tolerance", [1e-2, 1e-6])
def test_served_tolerance_matches_in_process_call(name, tolerance, fresh, loaded):
    """``predict_with_tolerance`` equals the Python model called with the same explicit SolverConfig."""
    export = fresh[name]
    signature = loaded(export.path).signatures["predict_with_tolerance"]
    inputs = _signature_inputs(_structured_spec(loaded(export.path), "predict_with_tolerance"), seed=3)
    inputs["rtol"] = inputs["atol"] = np.float32(tolerance)
    served = {k: v.numpy() for k, v in signature(**{k: tf.constant(v) for k, v in inputs.items()}).items()}
    model, rtol, atol = export.model, tf.constant(inputs["rtol"]), tf.constant(inputs["atol"])
    served_config = dict(rtol=rtol, atol=atol, adjoint=False, batch_axis=0)  # export(per_sample=True), the default
    if name == "latent_ode":
        args = [tf.constant(inputs[k]) for k in ("observed_times", "observed_values", "observed_mask", "query_times")]
        expected = model.serving_outputs(*args, solver=model.solver.replace(rtol=rtol, atol=atol))
        np.testing.assert_allclose(served["mean"], expected["mean"].numpy(), rtol=0, atol=1e-6)
        assert int(served["num_fn_evals"]) == int(expected["num_fn_evals"])
    elif name == "cnf":
        expected = model(tf.constant(inputs["x"]), training=False, solver=model.solver.replace(**served_config))
        np.testing.assert_allclose(served["log_prob"], expected.numpy(), rtol=0, atol=1e-6)
    else:
        layer = next(layer for layer in model.layers if isinstance(layer, tfode.ODELayer))
        x = tf.constant(inputs["inputs"])
        for other in model.layers[: model.layers.index(layer)]:
            x = other(x) if not isinstance(other, keras.layers.InputLayer) else x
        layer(x, training=False, solver=layer.solver.replace(**served_config))
        assert int(served["num_fn_evals"]) == int(np.max(layer.last_solve_stats.num_fn_evals))


# ---------------------------------------------------------------------------
# Malformed requests: rejected in the graph, naming the input and the rule
# ---------------------------------------------------------------------------


def _malformed_requests():
    """``(id, model, signature, inputs, message regex)``: each breaks one rule of a valid request."""
    lat = _latent_inputs(3, 6, 4, seed=5)
    good = {"observed_times": lat["times"], "observed_values": lat["values"], "observed_mask": lat["mask"],
            "query_times": lat["query_times"]}  # fmt: skip

    def latent(**changes):
        inputs = {k: v.copy() for k, v in good.items()}
        for key, edit in changes.items():
            inputs[key] = edit(inputs[key])
        return inputs

    def at(index, value):
        def edit(a):
            a[index] = value
            return a

        return edit

    x, vectors = np.zeros((4, 2), np.float32), np.zeros((5, 4), np.float32)
    tol = {"rtol": np.float32(1e-3), "atol": np.float32(1e-3)}
    return [
        ("latent-unsorted", "latent_ode", "serving_default",
         latent(observed_times=at((0, 2), 10.0)), r"observed_times must be non-decreasing within each series"),
        ("latent-negative", "latent_ode", "serving_default",
         latent(observed_times=at((1, 0), -1.0)), r"observed_times must be >= 0"),
        ("latent-mask-zero", "latent_ode", "serving_default",
         latent(observed_mask=lambda m: np.zeros_like(m)), r"observed_mask must observe at least one value of every"),
        ("latent-one-series-unobserved", "latent_ode", "serving_default",
         latent(observed_mask=at(1, 0.0)), r"observed_mask must observe at least one value of every series"),
        ("latent-query-batch", "latent_ode", "serving_default",
         latent(query_times=lambda q: q[:2]), r"query_times must have the batch size of observed_values"),
        ("latent-features", "latent_ode", "serving_default",
         latent(observed_values=lambda v: np.zeros((3, 6, 3), np.float32)),
         r"observed_values must have shape \[batch, time, 2\]"),
        ("latent-mask-shape", "latent_ode", "serving_default",
         latent(observed_mask=lambda m: m[:, :5]), r"observed_mask must have the shape of observed_values"),
        ("latent-times-shape", "latent_ode", "serving_default",
         latent(observed_times=lambda t: t[:, :5]), r"observed_times must have shape \[batch, time\]"),
        ("latent-nan-value", "latent_ode", "serving_default",
         latent(observed_values=at((0, 1, 0), np.nan), observed_mask=at((0, 1, 0), 1.0)),
         r"observed_values must be finite where observed_mask is nonzero"),
        ("latent-nan-time", "latent_ode", "serving_default",
         latent(observed_times=at((2, 3), np.nan)), r"observed_times must be finite"),
        ("latent-nan-query", "latent_ode", "predict_with_tolerance",
         {**latent(query_times=at((0, 0), np.nan)), **tol}, r"query_times must be finite"),
        ("latent-unsorted-query", "latent_ode", "serving_default",
         latent(query_times=at((0, 0), 10.0)), r"query_times must be non-decreasing"),
        ("latent-negative-rtol", "latent_ode", "predict_with_tolerance",
         {**good, **tol, "rtol": np.float32(-1.0)}, r"rtol must be positive and finite"),
        ("cnf-features", "cnf", "log_prob", {"x": np.zeros((4, 3), np.float32)}, r"x must have shape \[batch, 2\]"),
        ("cnf-nan", "cnf", "serving_default", {"x": np.array([[0.0, np.nan]], np.float32)}, r"x must be finite"),
        ("cnf-tolerance-features", "cnf", "predict_with_tolerance", {"x": np.zeros((4, 1), np.float32), **tol},
         r"x must have shape \[batch, 2\]"),
        ("cnf-nan-atol", "cnf", "predict_with_tolerance", {"x": x, **tol, "atol": np.float32(np.nan)},
         r"atol must be positive and finite"),
        ("cnf-negative-samples", "cnf", "sample", {"num_samples": np.int32(-1), "seed": np.array([1, 2], np.int32)},
         r"num_samples must be >= 0"),
        ("odenet-features", "odenet", "serving_default", {"inputs": np.zeros((5, 3), np.float32)},
         r"inputs must have shape \[batch, 4\]"),
        ("odenet-nan", "odenet", "predict_with_tolerance", {"inputs": vectors + np.inf, **tol},
         r"inputs must be finite"),
        ("odenet-zero-rtol", "odenet", "predict_with_tolerance", {"inputs": vectors, **tol, "rtol": np.float32(0)},
         r"rtol must be positive and finite"),
    ]  # fmt: skip


@pytest.mark.parametrize("case", _malformed_requests(), ids=[c[0] for c in _malformed_requests()])
def test_malformed_requests_rejected_naming_the_input(case, fresh, loaded):
    _, name, signature, inputs, message = case
    fn = loaded(fresh[name].path).signatures[signature]
    with pytest.raises(tf.errors.InvalidArgumentError, match="Invalid request: " + message):
        fn(**{k: tf.constant(v) for k, v in inputs.items()})


def test_checked_requests_still_served(fresh, loaded):
    """NaN at masked entries, repeated times, an empty batch: valid, and the answer is unchanged."""
    lat = _latent_inputs(3, 6, 4, seed=5)
    lat["times"][:, 2] = lat["times"][:, 1]  # a repeated time
    values = lat["values"].copy()
    values[lat["mask"] == 0] = np.nan
    fn = loaded(fresh["latent_ode"].path).signatures["serving_default"]
    args = {"observed_times": lat["times"], "observed_mask": lat["mask"], "query_times": lat["query_times"]}
    with_nan = fn(**{k: tf.constant(v) for k, v in {**args, "observed_values": values}.items()})["mean"].numpy()
    finite = fn(**{k: tf.constant(v) for k, v in {**args, "observed_values": lat["values"]}.items()})["mean"].numpy()
    np.testing.assert_array_equal(with_nan, finite)
    reference = fresh["latent_ode"].reference(
        {
            "observed_times": lat["times"],
            "observed_values": lat["values"],
            "observed_mask": lat["mask"],
            "query_times": lat["query_times"],
        }
    )
    np.testing.assert_allclose(finite, reference["mean"], atol=ATOL)


@pytest.mark.slow
def test_c_loader_rejects_malformed_requests(c_loader, fresh, tmp_path):
    """TF Serving's loader (C API session, Grappler on) keeps the checks: a feed shaped unlike the
    signature's TensorSpec is not rejected by the session, and the size check still names the input."""
    binary, _ = c_loader
    lat = _latent_inputs(3, 6, 4, seed=5)
    good = {"observed_times": lat["times"], "observed_values": lat["values"], "observed_mask": lat["mask"],
            "query_times": lat["query_times"]}  # fmt: skip
    requests = [
        ("latent_ode", {**good, "observed_values": np.zeros((3, 6, 3), np.float32),
                        "observed_mask": np.ones((3, 6, 3), np.float32)}, r"observed_values must have shape"),
        ("latent_ode", {**good, "observed_mask": np.zeros_like(lat["mask"])}, r"observed_mask must observe"),
        ("latent_ode", {**good, "query_times": lat["query_times"][:2]}, r"query_times must have the batch size"),
        ("cnf", {"x": np.zeros((4, 3), np.float32)}, r"x must have shape \[batch, 2\]"),
        ("odenet", {"inputs": np.zeros((5, 3), np.float32)}, r"inputs must have shape \[batch, 4\]"),
    ]  # fmt: skip
    lines = []
    for i, (name, inputs, _) in enumerate(requests):
        lines += _c_job_lines(fresh[name], "serving_default", inputs, tmp_path, f"bad{i}")[0]
    (tmp_path / "jobs.txt").write_text("\n".join(lines) + "\n")
    proc = subprocess.run([str(binary), str(tmp_path / "jobs.txt")], capture_output=True, text=True, timeout=600)
    results = dict(re.findall(r"^RESULT (\d+) (.*)$", proc.stdout, re.MULTILINE))
    for i, (name, _, message) in enumerate(requests):
        assert re.search("FAIL .*Invalid request: " + message, results.get(str(i), "missing")), (name, results)


# ---------------------------------------------------------------------------
# TF Serving conventions: warm-up records, padding of series of different lengths
# ---------------------------------------------------------------------------


def _fields(message):
    """``[(field number, bytes)]`` of a protobuf message holding only length-delimited fields."""
    out, i = [], 0

    def varint():
        nonlocal i
        value = shift = 0
        while True:
            byte = message[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while i < len(message):
        tag = varint()
        assert tag & 7 == 2, tag  # only length-delimited fields in these records
        length = varint()
        out.append((tag >> 3, message[i : i + length]))
        i += length
    return out


def _warmup_requests(path):
    """``[(model name, signature, {alias: array})]`` decoded from the warm-up TFRecord (no serving API)."""
    requests = []
    for record in tf.data.TFRecordDataset(str(Path(path) / "assets.extra" / "tf_serving_warmup_requests")):
        ((number, predict_log),) = _fields(record.numpy())
        assert number == 6  # PredictionLog.predict_log
        ((number, request),) = _fields(predict_log)
        assert number == 1  # PredictLog.request
        spec, inputs = {}, {}
        for number, payload in _fields(request):
            if number == 1:  # ModelSpec: name = 1, signature_name = 3
                spec = {n: v.decode() for n, v in _fields(payload)}
            else:  # inputs: map entry key = 1, value = 2 (TensorProto)
                assert number == 2
                entry = dict(_fields(payload))
                inputs[entry[1].decode()] = tf.make_ndarray(tf.make_tensor_proto(0).FromString(entry[2]))
        requests.append((spec[1], spec[3], inputs))
    return requests


def test_warmup_requests_cover_every_signature_and_run(fresh, loaded):
    for name, export in fresh.items():
        model = loaded(export.path)
        requests = _warmup_requests(export.path)
        assert sorted(r[1] for r in requests) == sorted(model.signatures.keys()), name
        for model_name, signature, inputs in requests:
            assert model_name == name  # the export's base directory name
            outputs = model.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
            assert all(np.all(np.isfinite(v.numpy())) for v in outputs.values()), (name, signature)
        example = json.loads((export.path.parent / "example_request.json").read_text())
        assert example["signature_name"] == "serving_default"
        feeds = {k: tf.constant(np.asarray(v, np.float32)) for k, v in example["inputs"].items()}
        assert model.signatures["serving_default"](**feeds)


def test_warmup_records_parse_with_tensorflow_serving_api(fresh):
    prediction_log_pb2 = pytest.importorskip("tensorflow_serving.apis.prediction_log_pb2")
    path = fresh["latent_ode"].path
    ours = _warmup_requests(path)
    records = tf.data.TFRecordDataset(str(path / "assets.extra" / "tf_serving_warmup_requests"))
    for record, (model_name, signature, inputs) in zip(records, ours):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        assert (request.model_spec.name, request.model_spec.signature_name) == (model_name, signature)
        assert sorted(request.inputs) == sorted(inputs)
        for alias, array in inputs.items():
            np.testing.assert_array_equal(tf.make_ndarray(request.inputs[alias]), array)


def test_batching_parameters_file_is_a_batching_text_proto():
    """BatchingParameters' fields (session_bundle_config.proto; not shipped by tensorflow-serving-api)."""
    fields = {}
    for line in (REPO / "savedmodels" / "batching_parameters.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"(\w+) \{ value: (\d+) \}|(\w+): (true|false)", line)
            assert match, line
            fields[match[1] or match[3]] = match[2] or match[4]
    wrapped = {"max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"}
    assert set(fields) == wrapped | {"pad_variable_length_inputs"}
    assert fields["pad_variable_length_inputs"] == "true" and int(fields["max_batch_size"]) >= 1


def test_padded_latent_request_returns_the_unpadded_answer(fresh, loaded):
    """The padding rule: repeat the last time with mask 0 (values ignored); pad queries by repeating the last."""
    fn = loaded(fresh["latent_ode"].path).signatures["serving_default"]
    short = _latent_inputs(1, 4, 3, seed=3)

    def serve(times, values, mask, query):
        args = {"observed_times": times, "observed_values": values, "observed_mask": mask, "query_times": query}
        return fn(**{k: tf.constant(v) for k, v in args.items()})["mean"].numpy()

    unpadded = serve(short["times"], short["values"], short["mask"], short["query_times"])
    times = np.concatenate([short["times"], np.repeat(short["times"][:, -1:], 2, axis=1)], axis=1)
    values = np.concatenate([short["values"], np.full((1, 2, 2), np.nan, np.float32)], axis=1)
    mask = np.concatenate([short["mask"], np.zeros((1, 2, 2), np.float32)], axis=1)
    query = np.concatenate([short["query_times"], np.repeat(short["query_times"][:, -1:], 2, axis=1)], axis=1)
    padded = serve(times, values, mask, query)
    # Masked steps are skipped by the encoder and repeated query times add zero-length segments:
    # the same arithmetic up to float32 round-off (measured 7e-9).
    np.testing.assert_allclose(padded[:, :3], unpadded, rtol=0, atol=1e-6)
    np.testing.assert_allclose(padded[:, 3:], np.repeat(unpadded[:, -1:], 2, axis=1), rtol=0, atol=1e-6)
    # The rule needs the mask: the same padded steps observed (mask 1) change the answer (measured 0.23).
    observed = serve(times, np.nan_to_num(values, nan=1.0), np.ones_like(mask), query)
    assert np.abs(observed[:, :3] - unpadded).max() > 1e-2


# ---------------------------------------------------------------------------
# examples/serving_client.py on any export
# ---------------------------------------------------------------------------


def _client(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, str(REPO / "examples" / "serving_client.py"), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", ["odenet", "latent_ode", "cnf"])
def test_serving_client_runs_on_any_export(name, fresh):
    done = _client("--model-base", fresh[name].path.parent, "--local")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"/v1/models/{name}:predict" in done.stdout
    assert re.search(r"rtol = atol = 1e-06: .*first values", done.stdout), done.stdout[-2000:]


@pytest.mark.slow
def test_serving_client_fails_in_one_line_without_a_server(fresh, tmp_path):
    """No server (or no tensorflow-serving-api), no example: one 'error:' line, exit status 1, no traceback."""
    no_example = tmp_path / "no_example"
    shutil.copytree(fresh["cnf"].path, no_example / "1")
    cases = [
        ("--model-base", fresh["cnf"].path.parent, "--server", "127.0.0.1:1", "--timeout", "5"),
        ("--model-base", tmp_path / "nothing"),
        ("--model-base", no_example),
    ]
    for args in cases:
        done = _client(*args)
        assert done.returncode == 1, (args, done.stderr[-3000:])
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, done.stderr[-3000:]


@pytest.mark.parametrize("name", ["odenet", "latent_ode", "cnf"])
@pytest.mark.parametrize("tolerance", [1e-3, 1e-6])
def test_served_outputs_do_not_depend_on_the_batch(name, tolerance, fresh, loaded):
    """A request's answer for one input alone equals its answer inside a batch of 15 others
    (per-sample serving): float32 round-off of batched matmuls only."""
    signature = loaded(fresh[name].path).signatures["predict_with_tolerance"]
    spec = _structured_spec(loaded(fresh[name].path), "predict_with_tolerance")
    batch = _signature_inputs(spec, batch=16, seed=11)
    if name == "latent_ode":
        batch["observed_times"][:, 0] = 0.0
    batch["rtol"] = batch["atol"] = np.float32(tolerance)
    alone = {k: (v[:1] if np.ndim(v) and k not in ("rtol", "atol") else v) for k, v in batch.items()}
    key = {"odenet": "outputs", "latent_ode": "mean", "cnf": "log_prob"}[name]
    together = signature(**{k: tf.constant(v) for k, v in batch.items()})[key].numpy()[0]
    single = signature(**{k: tf.constant(v) for k, v in alone.items()})[key].numpy()[0]
    scale = max(1.0, float(np.max(np.abs(single))))
    assert np.max(np.abs(together - single)) / scale < 1e-5
