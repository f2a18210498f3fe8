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
from covjax.step import WeightedLosses, value_and_grad

__version__ = "0.1.0"

__all__ = [
    "CovState",
    "LossStructure",
    "WeightedLosses",
    "Weighting",
    "WeightingState",
    "cov_weighting",
    "flatten_losses",
    "loss_names",
    "make_weighting",
    "named",
    "step_accepted",
    "value_and_grad",
    "weighted_sum",
]
