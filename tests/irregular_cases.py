"""Shared test data for the models that take irregular batches (LatentODE, ODERNN, GRUBaseline)."""

from __future__ import annotations

import numpy as np


def random_batch(batch=3, length=6, seed=0, per_series=True):
    """Random increasing per-series ``[B, T]`` (or shared ``[T]``) times in [0, 2] and values ``[B, T, 2]``."""
    rng = np.random.default_rng(seed)
    shape = (batch, length) if per_series else (length,)
    times = np.sort(rng.uniform(0.0, 2.0, size=shape), axis=-1).astype("float32")
    values = rng.normal(size=(batch, length, 2)).astype("float32")
    return times, values


# (case, regex the ValueError must match): each names the offending argument.
BAD_INPUT_CASES = [
    ("times_length", "times"),
    ("times_batch", "times has batch"),
    ("times_rank", "times"),
    ("values_rank", "values"),
    ("mask_shape", "mask"),
    ("decreasing_times", "times must be non-decreasing"),
    ("negative_times", "times must be finite and >= 0"),
    ("empty_series", r"series \[1\] have no observed point"),
    ("nan_observed", "NaN.*observed"),
    ("query_batch", "query_times has batch 2"),
    ("query_rank", "query_times must be"),
    ("query_negative", "query_times must be finite and >= 0"),
    ("obs_dim", "obs_dim = 2"),
    ("not_a_dict", "inputs must be a dict"),
]


def bad_inputs(case):
    """A batch of 3 series x 4 times (2 features) broken in the way ``case`` names."""
    times, values = random_batch(3, 4, seed=8)
    inputs = {"times": times, "values": values}
    if case == "times_length":
        inputs["times"] = times[:, :3]
    elif case == "times_batch":
        inputs["times"] = times[:2]
    elif case == "times_rank":
        inputs["times"] = times[..., None]
    elif case == "values_rank":
        inputs["values"] = values[0]
    elif case == "mask_shape":
        inputs["mask"] = np.ones((3, 4, 1), "float32")
    elif case == "decreasing_times":
        inputs["times"] = times[:, ::-1].copy()
    elif case == "negative_times":
        inputs["times"] = times - 1.0
    elif case == "empty_series":
        mask = np.ones_like(values)
        mask[1] = 0.0
        inputs["mask"] = mask
    elif case == "nan_observed":
        inputs["values"] = values.copy()
        inputs["values"][2, 3, 0] = np.nan
    elif case == "query_batch":
        inputs["query_times"] = np.tile(np.linspace(0, 1, 4, dtype="float32"), (2, 1))
    elif case == "query_rank":
        inputs["query_times"] = np.zeros((3, 2, 1), "float32")
    elif case == "query_negative":
        inputs["query_times"] = np.array([-0.5, 1.0], "float32")
    elif case == "obs_dim":
        inputs["values"] = np.concatenate([values, values[..., :1]], axis=-1)  # D = 3, the models have 2
    elif case == "not_a_dict":
        inputs = values
    else:
        raise ValueError(f"unknown case {case!r}")
    return inputs


def ragged_batch(series_times, query, seed=3):
    """Series of different lengths padded into one batch (repeat the last time, mask 0).

    Args:
        series_times: list of ``[T_i]`` float32 arrays.
        query: ``[B, Q]`` query times.

    Returns:
        ``(series_times, series_values, times [B, T], values [B, T, 2], mask [B, T, 2], query)``.
    """
    rng = np.random.default_rng(seed)
    series_values = [rng.normal(size=(len(t), 2)).astype("float32") for t in series_times]
    length = max(len(t) for t in series_times)
    times = np.stack([np.pad(t, (0, length - len(t)), mode="edge") for t in series_times])
    values = np.stack([np.pad(v, ((0, length - len(v)), (0, 0))) for v in series_values])
    mask = np.stack([(np.arange(length) < len(t)).astype("float32") for t in series_times])
    mask = np.repeat(mask[:, :, None], 2, axis=2)
    return series_times, series_values, times, values, mask, np.asarray(query, "float32")
