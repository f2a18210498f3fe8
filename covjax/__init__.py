"""covjax: weighting many losses in JAX, with CoV-Weighting at its heart.

Every scheme lives in its own module under ``covjax._src`` (one module per
scheme, as optax); this package re-exports the public API.
"""

from covjax._src.aligned_mtl import aligned_mtl
from covjax._src.base import (
    CROSS_GRAMIAN,
    DIRECTION,
    FEATURE_MAPS,
    GRADIENT_REQUIREMENTS,
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
from covjax._src.conflict_free import MConFIGState, conflict_free
from covjax._src.cosmos import cosmos
from covjax._src.cov import CovState, cov_weighting
from covjax._src.cr_mogm import CRMOGMState, cr_mogm
from covjax._src.db_mtl import DBMTLState, db_mtl
from covjax._src.dualproj import DualProjState, dualproj
from covjax._src.dwa import DwaState, dwa
from covjax._src.excess_mtl import ExcessMTLState, excess_mtl
from covjax._src.fairgrad import FairGradState, fairgrad
from covjax._src.famo import FamoState, famo
from covjax._src.gls import gls
from covjax._src.graddrop import GradDropState, graddrop
from covjax._src.gradients import per_loss_gramian, per_loss_jacobian
from covjax._src.gradnorm import GradNormState, gradnorm
from covjax._src.gradvac import GradVacState, gradvac
from covjax._src.gramian import cross_gramian
from covjax._src.imtl import imtl_g, imtl_l, imtl_l_regularizer
from covjax._src.krum import krum
from covjax._src.lbpinn import lbpinn, lbpinn_regularizer
from covjax._src.lr_annealing import AnnealingState, lr_annealing
from covjax._src.lsb import LsbState, RebalancingState, lsb, multi_loss_rebalancing
from covjax._src.mgda import mgda
from covjax._src.moco import MoCoState, moco
from covjax._src.modo import MoDoState, modo
from covjax._src.nash_mtl import NashMTLState, nash_mtl
from covjax._src.ntk_weighting import ntk_weighting
from covjax._src.pbi import pbi
from covjax._src.pcd import PCDState, pcd
from covjax._src.pcgrad import PCGradState, pcgrad
from covjax._src.relobralo import RelobraloState, relobralo
from covjax._src.rlw import RandomState, rlw
from covjax._src.sdmgrad import SDMGradState, sdmgrad
from covjax._src.softadapt import SoftAdaptState, softadapt
from covjax._src.solvers import min_norm_solver
from covjax._src.static import equal_weighting, static_weighting
from covjax._src.stch import StchState, stch
from covjax._src.step import WeightedLosses, value_and_grad
from covjax._src.trimmed_mean import trimmed_mean
from covjax._src.uncertainty import LearnedLogState, uncertainty_regularizer, uncertainty_weighting
from covjax._src.upgrad import UPGradState, upgrad
from covjax._src.wrappers import apply_if_accepted

__version__ = "0.1.0"

__all__ = [
    "CROSS_GRAMIAN",
    "DIRECTION",
    "FEATURE_MAPS",
    "GRADIENT_REQUIREMENTS",
    "GRAMIAN",
    "JACOBIAN",
    "Aggregation",
    "AggregatorPromises",
    "AnnealingState",
    "CAGradState",
    "CRMOGMState",
    "CovState",
    "DBMTLState",
    "DualProjState",
    "DwaState",
    "ExcessMTLState",
    "FairGradState",
    "FamoState",
    "GradDropState",
    "GradNormState",
    "GradVacState",
    "LearnedLogState",
    "LossStructure",
    "LsbState",
    "MConFIGState",
    "MoCoState",
    "MoDoState",
    "NashMTLState",
    "PCDState",
    "PCGradState",
    "RandomState",
    "RebalancingState",
    "RelobraloState",
    "SDMGradState",
    "SoftAdaptState",
    "StchState",
    "UPGradState",
    "WeightedLosses",
    "Weighting",
    "WeightingProperties",
    "WeightingState",
    "aligned_mtl",
    "apply_if_accepted",
    "cagrad",
    "conflict_free",
    "cosmos",
    "cov_weighting",
    "cr_mogm",
    "cross_gramian",
    "db_mtl",
    "dualproj",
    "dwa",
    "equal_weighting",
    "excess_mtl",
    "fairgrad",
    "famo",
    "flatten_losses",
    "gls",
    "graddrop",
    "gradnorm",
    "gradvac",
    "imtl_g",
    "imtl_l",
    "imtl_l_regularizer",
    "krum",
    "lbpinn",
    "lbpinn_regularizer",
    "loss_names",
    "lr_annealing",
    "lsb",
    "make_weighting",
    "mgda",
    "min_norm_solver",
    "moco",
    "modo",
    "multi_loss_rebalancing",
    "named",
    "nash_mtl",
    "ntk_weighting",
    "pbi",
    "pcd",
    "pcgrad",
    "per_loss_gramian",
    "per_loss_jacobian",
    "relobralo",
    "rlw",
    "sdmgrad",
    "softadapt",
    "stateless",
    "static_weighting",
    "stch",
    "step_accepted",
    "trimmed_mean",
    "uncertainty_regularizer",
    "uncertainty_weighting",
    "upgrad",
    "value_and_grad",
    "weighted_sum",
]
