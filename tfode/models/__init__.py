"""Keras models built on the solver: continuous normalizing flows, latent ODEs, ODE-RNNs.

Irregular batches (latent models): ``times`` ``[T]`` or ``[B, T]`` (>= 0,
non-decreasing per series; the latent state starts at t = 0), ``values``
``[B, T, D]``, optional ``mask`` ``[B, T, D]`` (0 = missing, value ignored),
optional ``query_times`` ``[Q]`` or ``[B, Q]``. See ``check_batch``.
"""

from tfode.models._encoders import ODERNNEncoder, RNNEncoder
from tfode.models._flow_model import ContinuousFlow
from tfode.models._irregular import check_batch, solve_at_series_times
from tfode.models._latent_ode import (
    LatentODE,
    gaussian_kl,
    masked_gaussian_log_likelihood,
    poisson_process_log_likelihood,
    predictive_rmse,
)
from tfode.models._sequence_models import ODERNN, GRUBaseline

__all__ = [
    "ContinuousFlow",
    "GRUBaseline",
    "ODERNN",
    "LatentODE",
    "ODERNNEncoder",
    "RNNEncoder",
    "check_batch",
    "gaussian_kl",
    "masked_gaussian_log_likelihood",
    "poisson_process_log_likelihood",
    "predictive_rmse",
    "solve_at_series_times",
]
