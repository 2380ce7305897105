"""Keras models built on the solver: continuous normalizing flows (latent ODEs to come)."""

from tfode.models._flow_model import ContinuousFlow

__all__ = ["ContinuousFlow"]
