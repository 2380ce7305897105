"""Error norms for step-size control.

The local error estimate ``err`` of a step from ``y0`` to ``y1`` is scaled
element-wise by ``atol + rtol * max(|y0|, |y1|)``; a step is accepted when the
scaled error has norm ``<= 1``. The norm is the root mean square over the
elements of each leaf of the state, and the maximum over leaves, so a small
leaf (e.g. the log-density channel of a normalizing flow, one number per
sample) is not drowned by a large one.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["norm_dtype", "rms_norm", "scaled_error_ratio"]


def norm_dtype(dtype: tf.DType) -> tf.DType:
    """The dtype error norms are computed in: never below float32."""
    return tf.float64 if dtype == tf.float64 else tf.float32


def _rms(leaf, per_sample):
    if not per_sample:
        # sum / max(size, 1): an empty leaf (e.g. a zero-size batch) has norm 0, not NaN.
        return tf.sqrt(tf.reduce_sum(tf.square(leaf)) / tf.cast(tf.maximum(tf.size(leaf), 1), leaf.dtype))
    axes = list(range(1, leaf.shape.rank))
    count = tf.reduce_prod(tf.shape(leaf)[1:])
    return tf.sqrt(tf.reduce_sum(tf.square(leaf), axis=axes) / tf.cast(tf.maximum(count, 1), leaf.dtype))


def rms_norm(leaves, mask=None, per_sample=False):
    """Max over leaves of the RMS of each leaf.

    Args:
        leaves: list of tensors of any shape (already scaled, in norm dtype).
        mask: optional list of bools; leaves with ``False`` are ignored (seminorm).
        per_sample: one norm per entry of the leading (batch) axis, over the other axes.

    Returns:
        A scalar tensor (``[B]`` per sample); 0 when every leaf is masked out.
    """
    parts = [_rms(leaf, per_sample) for i, leaf in enumerate(leaves) if mask is None or mask[i]]
    if not parts:
        return tf.zeros(tf.shape(leaves[0])[:1] if per_sample else [], leaves[0].dtype)
    return parts[0] if len(parts) == 1 else tf.reduce_max(tf.stack(parts), axis=0)


def scaled_error_ratio(error, y0, y1, rtol, atol, mask=None, per_sample=False):
    """Norm of the error scaled by the mixed tolerance.

    ``ratio = max_leaf RMS(err / (atol + rtol * max(|y0|, |y1|)))``

    Args:
        error, y0, y1: lists of tensors with matching shapes (state dtype).
        rtol, atol: lists of tensors (norm dtype) broadcastable to each leaf.
        mask: optional list of bools selecting the leaves that count.
        per_sample: one ratio per entry of the leading (batch) axis.

    Returns:
        Scalar tensor (``[B]`` per sample) in norm dtype; ``<= 1`` means the step is acceptable.
    """
    scaled = []
    for e, a, b, r, t in zip(error, y0, y1, rtol, atol):
        dtype = r.dtype
        magnitude = tf.maximum(tf.abs(tf.cast(a, dtype)), tf.abs(tf.cast(b, dtype)))
        scaled.append(tf.cast(e, dtype) / (t + r * magnitude))
    return rms_norm(scaled, mask, per_sample)
