"""covjax: weighting many losses in JAX, with CoV-Weighting at its heart.

Every scheme lives in its own module under ``covjax._src`` (one module per
scheme, as optax); this package re-exports the public API.
"""

from covjax._src.aligned_mtl import aligned_mtl
from covjax._src.base import (
    DIRECTION,
    GRAMIAN,
    JACOBIAN,
    Aggregation,
    AggregatorPromises,
    LossStructure,
    Weighting,
    WeightingProperties,
    WeightingState,
    flatten_losses,
    loss_names,
    make_weighting,
    named,
    stateless,
    step_accepted,
    weighted_sum,
)
from covjax._src.cagrad import CAGradState, cagrad
from covjax._src.cov import CovState, cov_weighting
from covjax._src.db_mtl import DBMTLState, db_mtl
from covjax._src.dwa import DwaState, dwa
from covjax._src.famo import FamoState, famo
from covjax._src.gls import gls
from covjax._src.gradients import per_loss_gramian, per_loss_jacobian
from covjax._src.gradnorm import GradNormState, gradnorm
from covjax._src.gradvac import GradVacState, gradvac
from covjax._src.imtl import imtl_g, imtl_l, imtl_l_regularizer
from covjax._src.lsb import LsbState, RebalancingState, lsb, multi_loss_rebalancing
from covjax._src.mgda import mgda
from covjax._src.nash_mtl import NashMTLState, nash_mtl
from covjax._src.pcgrad import PCGradState, pcgrad
from covjax._src.relobralo import RelobraloState, relobralo
from covjax._src.rlw import RandomState, rlw
from covjax._src.softadapt import SoftAdaptState, softadapt
from covjax._src.solvers import min_norm_solver
from covjax._src.static import equal_weighting, static_weighting
from covjax._src.step import WeightedLosses, value_and_grad
from covjax._src.uncertainty import LearnedLogState, uncertainty_regularizer, uncertainty_weighting
from covjax._src.upgrad import UPGradState, upgrad
from covjax._src.wrappers import apply_if_accepted

__version__ = "0.1.0"

__all__ = [
    "DIRECTION",
    "GRAMIAN",
    "JACOBIAN",
    "Aggregation",
    "AggregatorPromises",
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
    "WeightingProperties",
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
    "stateless",
    "static_weighting",
    "step_accepted",
    "uncertainty_regularizer",
    "uncertainty_weighting",
    "upgrad",
    "value_and_grad",
    "weighted_sum",
]
