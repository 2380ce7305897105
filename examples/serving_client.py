#!/usr/bin/env python
"""A TF Serving client for a tfode export (default: ``savedmodels/latent_ode_spiral``).

Builds a ``PredictRequest`` for the ``predict_with_tolerance`` signature (or
``serving_default`` for an export without it) from the model's
``example_request.json`` (written by ``tfode.serving.export`` next to the version
directories; for the latent ODE here: two spirals, 15 irregular observations
each, 10 query times) and prints the equivalent REST ``:predict`` JSON body.
Works on any export of ``tfode.serving.export`` (``--model-base``): input dtypes
and signatures are read from the export's ``saved_model.pb``.

* ``--local``: feeds the tensors of that same request (``tf.make_ndarray`` on
  its ``TensorProto``s) into the SavedModel loaded from disk
  (``<model base>/<latest version>``, ``tf.saved_model.load``) and prints the
  outputs and the number of function evaluations (NFE) at two tolerances.
  Needs TensorFlow only, not tfode.
* ``--server HOST:PORT``: sends the request over gRPC to a running
  ``tensorflow_model_server`` (see ``savedmodels/README.md``); the model name is
  the base directory's name. An unreachable server ends the script with one
  line on stderr (exit status 1). Not tested against a real server here: no
  model server was available where this was written.

The request is a ``tensorflow_serving.apis.predict_pb2.PredictRequest`` when
the optional ``tensorflow-serving-api`` package is installed (needed for
``--server``). Without it the script builds the same content as a plain dict
``{"model_spec": ..., "inputs": {name: TensorProto}}`` (``tf.make_tensor_proto``)
and says so; ``--local`` and the REST body work either way.

Run from the repository root::

    python examples/serving_client.py                 # print the REST body
    python examples/serving_client.py --local         # run the request on the local export
    python examples/serving_client.py --server localhost:8500
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_NAME = "latent_ode_spiral"
SIGNATURE = "predict_with_tolerance"

try:
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
except ImportError:  # optional dependency
    predict_pb2 = prediction_service_pb2_grpc = None


def latest_version(base):
    """Path of the highest integer version directory under ``base``."""
    if not os.path.isdir(base):
        raise SystemExit(f"error: --model-base {base} is not a directory (the folder holding the version directories)")
    versions = [int(name) for name in os.listdir(base) if re.fullmatch(r"\d+", name)]
    if not versions:
        raise SystemExit(f"error: no version directory under {base}: export with tfode.serving.export")
    return os.path.join(base, str(max(versions)))


def signature_inputs(export_dir):
    """``{signature name: {input alias: numpy dtype}}`` read from ``export_dir/saved_model.pb``."""
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as fh:
        saved.ParseFromString(fh.read())
    return {
        name: {alias: tf.as_dtype(info.dtype).as_numpy_dtype for alias, info in signature.inputs.items()}
        for name, signature in saved.meta_graphs[0].signature_def.items()
        if not name.startswith("__")
    }


def load_example(base, dtypes=None):
    """``{input name: array}`` from ``example_request.json`` next to the versions (dtypes: ``{alias: dtype}``)."""
    path = os.path.join(base, "example_request.json")
    if not os.path.exists(path):
        raise SystemExit(f"error: no example_request.json in {base} (tfode.serving.export writes one; "
                         "export the model again or write one: a REST :predict body with \"inputs\")")  # fmt: skip
    with open(path) as fh:
        inputs = json.load(fh)["inputs"]
    dtypes = dtypes or {}
    return {name: np.asarray(value, dtypes.get(name, np.float32)) for name, value in inputs.items()}


def build_request(arrays, rtol, atol, model_name=MODEL_NAME, signature=SIGNATURE):
    """A PredictRequest (or, without tensorflow-serving-api, an equivalent dict) for ``signature``.

    ``rtol``/``atol`` are added for ``predict_with_tolerance`` only.
    """
    tensors = {name: tf.make_tensor_proto(value) for name, value in arrays.items()}
    if signature == "predict_with_tolerance":
        tensors["rtol"] = tf.make_tensor_proto(np.float32(rtol))
        tensors["atol"] = tf.make_tensor_proto(np.float32(atol))
    if predict_pb2 is None:
        return {"model_spec": {"name": model_name, "signature_name": signature}, "inputs": tensors}
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    for name, proto in tensors.items():
        request.inputs[name].CopyFrom(proto)
    return request


def request_tensors(request):
    """``{name: TensorProto}`` of either request form."""
    return request["inputs"] if isinstance(request, dict) else dict(request.inputs)


def rest_body(request):
    """The TF Serving REST ``:predict`` body (columnar ``inputs`` format) of ``request``."""
    if isinstance(request, dict):
        signature = request["model_spec"]["signature_name"]
    else:
        signature = request.model_spec.signature_name
    inputs = {name: _json_values(tf.make_ndarray(proto)) for name, proto in request_tensors(request).items()}
    return {"signature_name": signature, "inputs": inputs}


def _json_values(array):
    """Nested lists with each float32 written in its shortest form (0.01, not 0.009999999776)."""
    if array.dtype != np.float32:
        return array.tolist()
    shortest = [float(str(value)) for value in array.ravel()]  # str of a np.float32: its shortest repr
    return np.array(shortest, np.float64).reshape(array.shape).tolist()


def run_local(requests, export_dir, signature=SIGNATURE):
    """Feed each request's tensors to the SavedModel's signature (loaded once); ``[{output: array}]``."""
    signature = tf.saved_model.load(export_dir).signatures[signature]
    results = []
    for request in requests:
        feeds = {name: tf.constant(tf.make_ndarray(proto)) for name, proto in request_tensors(request).items()}
        results.append({name: value.numpy() for name, value in signature(**feeds).items()})
    return results


def run_server(request, address, timeout):
    """Send ``request`` to ``tensorflow_model_server`` over gRPC; returns ``{output name: array}``."""
    if prediction_service_pb2_grpc is None:
        raise SystemExit('error: --server needs the tensorflow-serving-api package (pip install ".[serving]")')
    import grpc

    try:
        with grpc.insecure_channel(address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            response = stub.Predict(request, timeout=timeout)
    except grpc.RpcError as error:
        details = (error.details() or "").splitlines()[0] if hasattr(error, "details") else str(error)
        code = error.code().name if hasattr(error, "code") else "UNKNOWN"
        raise SystemExit(f"error: the model server at {address} answered {code}: {details}") from None
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def print_prediction(label, outputs):
    """One line: NFE if reported, then each output's shape and first values."""
    parts = [f"NFE {int(outputs['num_fn_evals'])}"] if "num_fn_evals" in outputs else []
    for name in sorted(set(outputs) - {"num_fn_evals"}):
        value = np.asarray(outputs[name])
        first = value.reshape(-1)[:4].astype(np.float64).round(4).tolist()
        parts.append(f"{name} {list(value.shape)} first values {first}")
    print(f"{label}: " + ", ".join(parts))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-base", default=os.path.join(REPO, "savedmodels", MODEL_NAME),
                        help="the model's base path (version directories + example_request.json)")  # fmt: skip
    parser.add_argument("--local", action="store_true", help="run the request on the latest local export")
    parser.add_argument("--server", metavar="HOST:PORT", help="send the request to a model server over gRPC")
    parser.add_argument("--tolerances", default="1e-2,1e-6", help="two rtol=atol values to compare")
    parser.add_argument("--timeout", type=float, default=30.0, help="gRPC deadline in seconds")
    args = parser.parse_args(argv)
    tolerances = [float(t) for t in args.tolerances.split(",")]
    model_name = os.path.basename(os.path.normpath(args.model_base))
    signatures = signature_inputs(latest_version(args.model_base))
    signature = SIGNATURE if SIGNATURE in signatures else "serving_default"
    arrays = load_example(args.model_base, signatures.get(signature))
    requests = [build_request(arrays, tol, tol, model_name, signature) for tol in tolerances]

    if predict_pb2 is None:
        print("tensorflow-serving-api is not installed: the request is a dict of TensorProtos "
              "(tf.make_tensor_proto), not a PredictRequest; --server is unavailable.", file=sys.stderr)  # fmt: skip
    else:
        spec = requests[0].model_spec
        print(f"PredictRequest: model {spec.name!r}, signature {spec.signature_name!r}, "
              f"inputs {sorted(requests[0].inputs)}", file=sys.stderr)  # fmt: skip
    print(f"REST body for POST http://HOST:8501/v1/models/{model_name}:predict (rtol = atol = {tolerances[0]:g}):")
    print(json.dumps(rest_body(requests[0])))

    if args.local:
        export_dir = latest_version(args.model_base)
        print(f"\nlocal SavedModel {os.path.relpath(export_dir, REPO)}:")
        for tol, outputs in zip(tolerances, run_local(requests, export_dir, signature)):
            print_prediction(f"  rtol = atol = {tol:g}", outputs)
    if args.server:
        print(f"\ngRPC server {args.server}:")
        for tol, request in zip(tolerances, requests):
            print_prediction(f"  rtol = atol = {tol:g}", run_server(request, args.server, args.timeout))


if __name__ == "__main__":
    main()
