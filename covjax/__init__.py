"""covjax: weighting many losses in JAX, with CoV-Weighting at its heart."""

from covjax.base import (
    LossStructure,
    Weighting,
    WeightingState,
    flatten_losses,
    loss_names,
    make_weighting,
    named,
    step_accepted,
    weighted_sum,
)
from covjax.cov import CovState, cov_weighting
from covjax.gradients import per_loss_gramian, per_loss_jacobian
from covjax.gradnorm import GradNormState, gradnorm
from covjax.mgda import MgdaState, mgda, min_norm_solver
from covjax.step import WeightedLosses, value_and_grad

__version__ = "0.1.0"

__all__ = [
    "CovState",
    "GradNormState",
    "LossStructure",
    "MgdaState",
    "WeightedLosses",
    "Weighting",
    "WeightingState",
    "cov_weighting",
    "flatten_losses",
    "gradnorm",
    "loss_names",
    "make_weighting",
    "mgda",
    "min_norm_solver",
    "named",
    "per_loss_gramian",
    "per_loss_jacobian",
    "step_accepted",
    "value_and_grad",
    "weighted_sum",
]
