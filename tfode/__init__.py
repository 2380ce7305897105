"""tfode: neural ordinary differential equations for TensorFlow and Keras.

Public API:
    odeint, solve: adaptive and fixed-step Runge–Kutta solvers.
    SolverConfig: every setting of a solve as one frozen, serialisable value.
    PIController, ConstantStepSize, StepToOutputTimes: step-size controllers.
    Solution, SolverStats, Status, IntegrationError: what a solve returns or raises.
    SolveStats: variables recording a solve's counters (e.g. the adjoint's backward pass).
    ContinuousFlowBijector: a continuous normalizing flow as a TFP bijector.
    ODELayer, layers: Keras ODE-Net layer and vector-field blocks (tfode.layers.TimeMLP, ...).
    models, datasets, serving: latent ODEs and flows, data, TF Serving export.
    ButcherTableau, method_names: the methods, as data.
"""

from tfode import datasets, layers, models, serving
from tfode.bijectors import ContinuousFlowBijector
from tfode.config import SolverConfig
from tfode.controllers import ConstantStepSize, PIController, StepSizeController, StepToOutputTimes
from tfode.layers import ODELayer
from tfode.solution import IntegrationError, Solution, SolverStats, Status
from tfode.solvers import odeint, solve
from tfode.stats import SolveStats
from tfode.tableaus import ButcherTableau, method_names

__version__ = "0.2.0"

__all__ = [
    "ButcherTableau",
    "ConstantStepSize",
    "ContinuousFlowBijector",
    "IntegrationError",
    "ODELayer",
    "PIController",
    "Solution",
    "SolveStats",
    "SolverConfig",
    "SolverStats",
    "StepSizeController",
    "StepToOutputTimes",
    "Status",
    "datasets",
    "layers",
    "method_names",
    "models",
    "odeint",
    "serving",
    "solve",
]
