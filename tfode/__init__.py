"""tfode: neural ordinary differential equations for TensorFlow and Keras.

Public API:
    odeint, solve: adaptive and fixed-step Runge–Kutta solvers.
    Solution, SolverStats, Status, IntegrationError: what a solve returns or raises.
    BackwardStats: counters of the adjoint's backward pass.
    ContinuousFlowBijector: a continuous normalizing flow as a TFP bijector.
    serving.export, solver_tolerances: TF Serving exports with a per-request tolerance knob.
    ODELayer, layers: Keras ODE-Net layer and vector-field blocks (tfode.layers.TimeMLP, ...).
    ButcherTableau, method_names: the methods, as data.
"""

from tfode import datasets, layers, models, serving
from tfode._overrides import solver_tolerances
from tfode.adjoint import BackwardStats
from tfode.bijectors import ContinuousFlowBijector
from tfode.layers import ODELayer
from tfode.solution import IntegrationError, Solution, SolverStats, Status
from tfode.solvers import odeint, solve
from tfode.tableaus import ButcherTableau, method_names

__version__ = "0.1.0"

__all__ = [
    "ContinuousFlowBijector",
    "ODELayer",
    "datasets",
    "layers",
    "models",
    "serving",
    "solver_tolerances",
    "BackwardStats",
    "ButcherTableau",
    "IntegrationError",
    "Solution",
    "SolverStats",
    "Status",
    "method_names",
    "odeint",
    "solve",
]
