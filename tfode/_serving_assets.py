"""Files that TF Serving and its clients read next to an export.

* ``<version>/assets.extra/tf_serving_warmup_requests``: a TFRecord of
  ``tensorflow.serving.PredictionLog`` records, one ``PredictRequest`` per
  signature, which TF Serving replays when it loads the version, so the first
  real request does not pay the session's warm-up.
* ``<base>/example_request.json``: a REST ``:predict`` body for ``serving_default``
  (``{"signature_name", "inputs"}``, columnar), read by ``examples/serving_client.py``.

The requests are synthetic but valid (sorted times from 0, a full mask, zeros),
built from the signatures written in ``saved_model.pb``. The PredictionLog records
are encoded here without ``tensorflow-serving-api``: the messages involved are small
(field numbers from tensorflow/serving's ``prediction_log.proto``, ``predict.proto``
and ``model.proto``), and the tensors are TensorFlow's own ``TensorProto``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

__all__ = ["example_inputs", "prediction_log", "read_signatures", "write_assets"]

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
EXAMPLE_FILE = "example_request.json"
_BATCH, _LENGTH = 2, 4  # sizes given to unknown dimensions of the synthetic requests

# Field numbers (wire type 2, length-delimited, for every field used here).
_PREDICTION_LOG_PREDICT_LOG = 6  # PredictionLog.predict_log (oneof log_type)
_PREDICT_LOG_REQUEST = 1  # PredictLog.request
_REQUEST_MODEL_SPEC, _REQUEST_INPUTS = 1, 2  # PredictRequest.model_spec, .inputs (map<string, TensorProto>)
_MODEL_SPEC_NAME, _MODEL_SPEC_SIGNATURE = 1, 3  # ModelSpec.name, .signature_name
_MAP_KEY, _MAP_VALUE = 1, 2  # a map entry's key and value


def _varint(value):
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number, payload):
    """One length-delimited field: tag, length, bytes."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def prediction_log(model_name, signature_name, arrays):
    """A serialized ``PredictionLog`` holding one ``PredictRequest``.

    Args:
        model_name: ``ModelSpec.name`` (TF Serving's model name).
        signature_name: ``ModelSpec.signature_name``.
        arrays: ``{input alias: numpy array}``.

    Returns:
        ``bytes``.
    """
    spec = _field(_MODEL_SPEC_NAME, model_name.encode()) + _field(_MODEL_SPEC_SIGNATURE, signature_name.encode())
    request = _field(_REQUEST_MODEL_SPEC, spec)
    for name in sorted(arrays):
        tensor = tf.make_tensor_proto(arrays[name]).SerializeToString()
        request += _field(_REQUEST_INPUTS, _field(_MAP_KEY, name.encode()) + _field(_MAP_VALUE, tensor))
    return _field(_PREDICTION_LOG_PREDICT_LOG, _field(_PREDICT_LOG_REQUEST, request))


def read_signatures(version_dir):
    """``{signature name: {input alias: (numpy dtype, shape with None for unknown)}}`` from ``saved_model.pb``."""
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as fh:
        saved.ParseFromString(fh.read())
    signatures = {}
    for name, signature in saved.meta_graphs[0].signature_def.items():
        if name.startswith("__"):
            continue
        inputs = {}
        for alias, info in signature.inputs.items():
            shape = [None if d.size < 0 else d.size for d in info.tensor_shape.dim]
            inputs[alias] = (tf.as_dtype(info.dtype).as_numpy_dtype, shape)
        signatures[name] = inputs
    return signatures


def example_inputs(spec):
    """A small valid request for a signature ``{alias: (dtype, shape)}``: ``{alias: array}``.

    Unknown dimensions take 2 (the first, the batch) or 4; times are sorted from 0,
    masks ones, ``rtol``/``atol`` 1e-3, ``num_samples`` 2, ``seed`` ``[1, 2]``, others zeros.
    """
    arrays = {}
    for alias, (dtype, shape) in spec.items():
        shape = [(_BATCH if i == 0 else _LENGTH) if d is None else d for i, d in enumerate(shape)]
        if alias in ("rtol", "atol"):
            value = np.full(shape, 1e-3)
        elif alias == "num_samples":
            value = np.full(shape, _BATCH)
        elif alias == "seed":
            value = np.arange(1, 1 + int(np.prod(shape))).reshape(shape)
        elif alias.endswith("times"):
            value = np.broadcast_to(np.linspace(0.0, 1.0, shape[-1]) if shape else 0.0, shape)
        elif alias.endswith("mask"):
            value = np.ones(shape)
        else:
            value = np.zeros(shape)
        arrays[alias] = np.asarray(value, dtype)
    return arrays


def write_assets(version_dir, model_name):
    """Writes the warm-up records into ``version_dir`` and ``example_request.json`` beside it.

    Args:
        version_dir: ``<base>/<version>``, a written SavedModel.
        model_name: the name TF Serving serves it under (the records' ``ModelSpec.name``).

    Returns:
        ``(warmup path, example path)``.
    """
    signatures = read_signatures(version_dir)
    warmup = os.path.join(version_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(warmup), exist_ok=True)
    with tf.io.TFRecordWriter(warmup) as writer:
        for name in sorted(signatures):
            writer.write(prediction_log(model_name, name, example_inputs(signatures[name])))
    example = os.path.join(os.path.dirname(os.path.abspath(version_dir)), EXAMPLE_FILE)
    inputs = example_inputs(signatures["serving_default"])
    with open(example, "w") as fh:
        body = {"signature_name": "serving_default", "inputs": {k: v.tolist() for k, v in inputs.items()}}
        json.dump(body, fh, indent=1)
        fh.write("\n")
    return warmup, example
