"""Export tfode models as SavedModels for TF Serving.

``export(model, export_dir)`` writes ``export_dir/<version>/`` with named
signatures traced WITHOUT XLA (TF Serving's GPU build cannot run
XLA-clustered graphs), float32, and no Python-bound ops, so TensorFlow's C++
loader serves it without Python or tfode.

Signatures:
    LatentODE:
        ``serving_default(observed_times [B, T], observed_values [B, T, D],
        observed_mask [B, T, D], query_times [B, Q])`` ->
        ``{"mean": [B, Q, D], "num_fn_evals": []}`` (+ ``"logits"`` ``[B, C]``
        for a model with a classifier);
        ``predict_with_tolerance``: the same plus scalar ``rtol``, ``atol``.
    ContinuousFlow:
        ``serving_default``/``log_prob(x [B, D])`` -> ``{"log_prob": [B]}``;
        ``predict_with_tolerance(x, rtol, atol)``;
        ``sample(num_samples [], seed [2] int32)`` -> ``{"samples": [N, D]}``.
    Any other Keras model (e.g. with ``ODELayer``s), one input:
        ``serving_default(inputs)`` -> ``{"outputs": ..., "num_fn_evals": []}``;
        ``predict_with_tolerance(inputs, rtol, atol)`` (a ``keras.Sequential``, or a
        functional model whose layers are each called once, or a model with a
        ``serving_outputs(inputs, tolerances=None)`` method).

The request's tolerances reach every solve as an explicit ``SolverConfig``
(``solver.replace(rtol=rtol, atol=atol)`` with the request's tensors); each
response carries its own request's NFE, read from the solves traced for it.
        ``predict_with_tolerance(inputs, rtol, atol)``.

Every signature validates its request in the graph (``tfode/_serving_checks.py``):
a malformed one (shapes unlike the signature's, unsorted or negative times, a
series with an all-zero mask, NaN/Inf in an observed value, a time or an input,
non-positive tolerances) fails with an ``InvalidArgumentError`` whose message
starts ``Invalid request:`` and names the input and the rule.
"""

from __future__ import annotations

import os
import re

import keras
import tensorflow as tf

from tfode import _serving_checks as checks
from tfode._keras_utils import walk_layers
from tfode._serving_assets import write_assets
from tfode.layers import ODELayer
from tfode.models._flow_model import ContinuousFlow
from tfode.models._latent_ode import LatentODE
from tfode.stats import batch_fn_evals

__all__ = ["export", "next_version"]

_SCALAR = tf.TensorSpec([], tf.float32)


def next_version(export_dir):
    """The next free integer version under ``export_dir`` (1 when empty)."""
    if not os.path.isdir(export_dir):
        return 1
    versions = [int(name) for name in os.listdir(export_dir) if re.fullmatch(r"\d+", name)]
    return max(versions, default=0) + 1


def _variables_module(model):
    """A ``tf.Module`` holding the model's state as plain ``tf.Variable``s.

    Tracking the Keras model itself would not do: a Keras 3 variable saves a
    second ``tf.Variable`` for the checkpoint while the signatures capture the
    original handle, so TensorFlow's C++ loader (TF Serving) restores nothing
    into the captured variables ("Could not find variable ..."; keras-team/keras
    #20095). Keras' own ``ExportArchive`` tracks the underlying variables too.
    """
    module = tf.Module()
    module.serving_variables = [getattr(v, "value", v) for v in model.variables]
    # A flow's Hutchinson-noise generator holds a state variable outside Keras.
    module.random_generator = getattr(getattr(model, "bijector", None), "_noise_generator", None)
    return module


def _latent_module(model):
    module = _variables_module(model)
    dim = model.obs_dim
    specs = [
        tf.TensorSpec([None, None], tf.float32, name="observed_times"),
        tf.TensorSpec([None, None, dim], tf.float32, name="observed_values"),
        tf.TensorSpec([None, None, dim], tf.float32, name="observed_mask"),
        tf.TensorSpec([None, None], tf.float32, name="query_times"),
    ]

    @tf.function(input_signature=specs, jit_compile=False, autograph=False)
    def serving_default(observed_times, observed_values, observed_mask, query_times):
        request = checks.check_latent_request(observed_times, observed_values, observed_mask, query_times, dim)
        return model.serving_outputs(*request)

    tol_specs = specs + [tf.TensorSpec([], tf.float32, name="rtol"), tf.TensorSpec([], tf.float32, name="atol")]

    @tf.function(input_signature=tol_specs, jit_compile=False, autograph=False)
    def predict_with_tolerance(observed_times, observed_values, observed_mask, query_times, rtol, atol):
        rtol, atol = checks.check_tolerances(rtol, atol)
        request = checks.check_latent_request(observed_times, observed_values, observed_mask, query_times, dim)
        return model.serving_outputs(*request, solver=model.solver.replace(rtol=rtol, atol=atol))

    return module, {"serving_default": serving_default, "predict_with_tolerance": predict_with_tolerance}


def _flow_module(model, per_sample):
    module = _variables_module(model)
    x_spec = tf.TensorSpec([None, model.dim], tf.float32, name="x")

    @tf.function(input_signature=[x_spec], jit_compile=False, autograph=False)
    def log_prob(x):
        x = checks.check_vectors("x", x, model.dim)
        return {"log_prob": model(x, training=False, solver=_served(model.solver, per_sample))}

    @tf.function(
        input_signature=[
            x_spec,
            tf.TensorSpec([], tf.float32, name="rtol"),
            tf.TensorSpec([], tf.float32, name="atol"),
        ],
        jit_compile=False,
        autograph=False,
    )
    def predict_with_tolerance(x, rtol, atol):
        x, (rtol, atol) = checks.check_vectors("x", x, model.dim), checks.check_tolerances(rtol, atol)
        return {"log_prob": model(x, training=False, solver=_served(model.solver, per_sample, rtol, atol))}

    @tf.function(
        input_signature=[tf.TensorSpec([], tf.int32, name="num_samples"), tf.TensorSpec([2], tf.int32, name="seed")],
        jit_compile=False,
        autograph=False,
    )
    def sample(num_samples, seed):
        num_samples = checks.check_sample_request(num_samples)
        z = tf.random.stateless_normal(tf.stack([num_samples, model.dim]), seed)
        return {"samples": model.bijector.forward_and_log_det(z, solver=_served(model.solver, per_sample))[0]}

    return module, {
        "serving_default": log_prob,
        "log_prob": log_prob,
        "predict_with_tolerance": predict_with_tolerance,
        "sample": sample,
    }


def _served(config, per_sample, rtol=None, atol=None):
    """A model's ``SolverConfig`` as a signature solves with it: no adjoint, per sample if asked,
    the request's tolerances if given."""
    config = config.replace(adjoint=False, batch_axis=0 if per_sample else None)
    return config if rtol is None else config.replace(rtol=rtol, atol=atol)


def _call_layer(layer, x, tolerances, fn_evals, per_sample):
    """Call one layer for serving: an ``ODELayer`` with the request's tolerances, recording its NFE."""
    if not isinstance(layer, ODELayer):
        return layer(x, training=False)
    config = _served(layer.solver, per_sample, *(tolerances or ()))
    out = layer(x, training=False, solver=config)
    fn_evals.append(tf.cast(batch_fn_evals(layer.last_solve_stats), tf.int32))
    return out


def _replay(model, inputs, tolerances=None, per_sample=True):
    """Run a single-input Keras model layer by layer, handing each ``ODELayer`` the request's tolerances.

    A ``keras.Sequential`` runs its ``layers`` in order; a functional model replays its graph
    from the public ``operations`` and each layer's ``input``/``output``.

    Returns ``{"outputs": ..., "num_fn_evals": []}``: the NFE summed over this call's ODE solves.
    """
    fn_evals = []
    if isinstance(model, keras.Sequential):
        x = inputs
        for layer in model.layers:
            x = _call_layer(layer, x, tolerances, fn_evals, per_sample)
    else:
        values = {id(model.inputs[0]): inputs}
        for layer in model.operations:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            args = tf.nest.map_structure(lambda k: values[id(k)], layer.input)
            out = _call_layer(layer, args, tolerances, fn_evals, per_sample)
            for symbolic, value in zip(tf.nest.flatten(layer.output), tf.nest.flatten(out)):
                values[id(symbolic)] = value
        x = tf.nest.map_structure(lambda k: values[id(k)], model.outputs)
        x = x[0] if len(model.outputs) == 1 else x
    nfe = tf.add_n(fn_evals) if fn_evals else tf.constant(0, tf.int32)
    return {"outputs": x, "num_fn_evals": nfe}


def _replayable(model):
    """Whether ``_replay`` can run ``model``: a Sequential, or a functional model whose layers are each used once."""
    if isinstance(model, keras.Sequential):
        return True
    operations = getattr(model, "operations", None)
    if operations is None or not hasattr(model, "outputs"):
        return False
    try:
        for layer in operations:
            layer.input, layer.output  # noqa: B018 -- raises for a layer called more than once
    except (AttributeError, ValueError):
        return False
    return True


def _keras_outputs(model, per_sample):
    """``outputs(inputs, tolerances=None) -> dict`` for a single-input Keras model: its ``serving_outputs``
    hook, or a layer-by-layer replay that hands every ``ODELayer`` the request's tolerances."""
    if hasattr(model, "serving_outputs"):
        return lambda inputs, tolerances=None: model.serving_outputs(inputs, tolerances=tolerances)
    if _replayable(model):
        return lambda inputs, tolerances=None: _replay(model, inputs, tolerances, per_sample)
    if any(isinstance(layer, ODELayer) for layer in walk_layers(model)):
        raise TypeError(
            f"export passes per-request tolerances to the ODELayers of a keras.Sequential or functional model "
            f"(each layer called once), or of a model with a serving_outputs(inputs, tolerances=None) method; "
            f"{type(model).__name__} is none of these."
        )

    def plain(inputs, tolerances=None):
        return {"outputs": model(inputs, training=False), "num_fn_evals": tf.constant(0, tf.int32)}

    return plain


def _keras_module(model, per_sample):
    if len(model.inputs) != 1:
        raise ValueError(f"export supports Keras models with one input, got {len(model.inputs)}.")
    module = _variables_module(model)
    spec = tf.TensorSpec(model.inputs[0].shape, tf.float32, name="inputs")
    outputs = _keras_outputs(model, per_sample)

    def checked(inputs):
        return checks.check_inputs("inputs", inputs, spec.shape.as_list())

    @tf.function(input_signature=[spec], jit_compile=False, autograph=False)
    def serving_default(inputs):
        return outputs(checked(inputs))

    @tf.function(
        input_signature=[spec, tf.TensorSpec([], tf.float32, name="rtol"), tf.TensorSpec([], tf.float32, name="atol")],
        jit_compile=False,
        autograph=False,
    )
    def predict_with_tolerance(inputs, rtol, atol):
        rtol, atol = checks.check_tolerances(rtol, atol)
        return outputs(checked(inputs), tolerances=(rtol, atol))

    return module, {"serving_default": serving_default, "predict_with_tolerance": predict_with_tolerance}


def export(model, export_dir, *, version=None, per_sample=True):
    """Write ``model`` as a TF Serving SavedModel ``export_dir/<version>/``.

    Args:
        model: a ``tfode.models.LatentODE``, ``tfode.models.ContinuousFlow`` or
            a built single-input Keras model (e.g. containing ``tfode.ODELayer``).
        export_dir: the model's base path (what ``--model_base_path`` points to).
        version: positive int; default the next free version.
        per_sample: solve every sample of a request on its own (``batch_axis=0``), so a
            response does not depend on the other inputs batched with it (TF Serving's
            request batching); the vector fields must then take ``t`` of shape ``[B]``, as
            tfode's ``TimeMLP``/``TimeConv2D`` do. ``False`` solves each request jointly.
            Latent ODEs are always per sample (per-series times; ODE-RNN gaps).

    Besides the SavedModel, writes ``<version>/assets.extra/tf_serving_warmup_requests``
    (one synthetic ``PredictRequest`` per signature, replayed by TF Serving at load) and
    ``export_dir/example_request.json`` (a REST ``:predict`` body for ``serving_default``,
    used by ``examples/serving_client.py``); see ``tfode/_serving_assets.py``.

    Returns:
        The path written.

    Raises:
        ValueError: unbuilt model, bad version, or an existing version directory.
        TypeError: unsupported model type.
    """
    if version is None:
        version = next_version(export_dir)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be a positive int, got {version!r}.")
    path = os.path.join(export_dir, str(version))
    if os.path.exists(path):
        raise ValueError(f"{path} already exists; pass another version or remove it.")
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, got {type(model).__name__}.")
    if not model.built:
        raise ValueError("build the model (call it once or fit it) before exporting.")
    if isinstance(model, LatentODE):
        module, signatures = _latent_module(model)
    elif isinstance(model, ContinuousFlow):
        module, signatures = _flow_module(model, per_sample)
    else:
        module, signatures = _keras_module(model, per_sample)
    # Serving needs no gradients: skip saving the adjoint's custom-gradient functions.
    options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
    tf.saved_model.save(module, path, signatures=signatures, options=options)
    write_assets(path, os.path.basename(os.path.normpath(export_dir)))
    return path
