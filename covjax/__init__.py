"""covjax: weighting many losses in JAX, with CoV-Weighting at its heart."""

from covjax.aggregators import (
    CAGradState,
    DBMTLState,
    GradVacState,
    NashMTLState,
    PCGradState,
    UPGradState,
    aligned_mtl,
    cagrad,
    db_mtl,
    gradvac,
    imtl_g,
    nash_mtl,
    pcgrad,
    upgrad,
)
from covjax.base import (
    GRAMIAN,
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
from covjax.famo import FamoState, famo
from covjax.gls import gls
from covjax.gradients import per_loss_gramian, per_loss_jacobian
from covjax.gradnorm import GradNormState, gradnorm
from covjax.imtl import imtl_l, imtl_l_regularizer
from covjax.loss_trends import (
    DwaState,
    RelobraloState,
    SoftAdaptState,
    dwa,
    relobralo,
    softadapt,
)
from covjax.lsb import LsbState, RebalancingState, lsb, multi_loss_rebalancing
from covjax.mgda import mgda, min_norm_solver
from covjax.rlw import RandomState, rlw
from covjax.static import equal_weighting, static_weighting
from covjax.step import WeightedLosses, value_and_grad
from covjax.uncertainty import LearnedLogState, uncertainty_regularizer, uncertainty_weighting
from covjax.wrappers import apply_if_accepted

__version__ = "0.1.0"

__all__ = [
    "GRAMIAN",
    "CAGradState",
    "CovState",
    "DBMTLState",
    "DwaState",
    "FamoState",
    "GradNormState",
    "GradVacState",
    "LearnedLogState",
    "LossStructure",
    "LsbState",
    "NashMTLState",
    "PCGradState",
    "RandomState",
    "RebalancingState",
    "RelobraloState",
    "SoftAdaptState",
    "UPGradState",
    "WeightedLosses",
    "Weighting",
    "WeightingState",
    "aligned_mtl",
    "apply_if_accepted",
    "cagrad",
    "cov_weighting",
    "db_mtl",
    "dwa",
    "equal_weighting",
    "famo",
    "flatten_losses",
    "gls",
    "gradnorm",
    "gradvac",
    "imtl_g",
    "imtl_l",
    "imtl_l_regularizer",
    "loss_names",
    "lsb",
    "make_weighting",
    "mgda",
    "min_norm_solver",
    "multi_loss_rebalancing",
    "named",
    "nash_mtl",
    "pcgrad",
    "per_loss_gramian",
    "per_loss_jacobian",
    "relobralo",
    "rlw",
    "softadapt",
    "static_weighting",
    "step_accepted",
    "uncertainty_regularizer",
    "uncertainty_weighting",
    "upgrad",
    "value_and_grad",
    "weighted_sum",
]
