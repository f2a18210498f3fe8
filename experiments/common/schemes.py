"""Weighting schemes by name: the registry the experiments' configs refer to.

Each name maps to a covjax constructor, the hyper-parameters the paper's
experiments use by default, and what the gradient-based schemes differentiate:

* ``"none"``: loss-statistics schemes, one backward pass;
* ``"layer"``: per-loss gradients at the task's shared layer (GradNorm uses
  the decoder's ``iconv4`` kernel in the reference code);
* ``"representation"``: per-loss gradients w.r.t. the shared representation
  z (MGDA-UB, Sener & Koltun 2018; the reference uses ``iconv4``'s output);
* ``"parameters"``: per-loss gradients w.r.t. all parameters (plain MGDA and
  the aggregators of SPEC §5, as LibMTL does).

Hyper-parameters come from ``config.scheme_kwargs[name]`` (a dict of keyword
arguments passed to the constructor, overriding the defaults here), and the
gradient target from ``config.scheme_gradient_target[name]`` if given.
Constructors are looked up in :mod:`covjax` when a scheme is built, so a
missing one is a clear error naming it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import optax

import covjax
from experiments.common.task import Task, has_representation, has_shared_layer

GradientTarget = Literal["none", "parameters", "layer", "representation"]
GRADIENT_TARGETS: tuple[str, ...] = ("none", "parameters", "layer", "representation")


@dataclasses.dataclass(frozen=True)
class SchemeContext:
    """What a scheme may take from the experiment besides its own keyword arguments.

    Attributes:
      task: the task (for its hand-tuned weights).
      optimizer: the network's optimiser; uncertainty weighting trains its
        log-variances with the same optimiser and learning rate (SPEC §2.2).
      steps_per_epoch: the period of LSB, DWA and multi-loss rebalancing.
    """

    task: Task
    optimizer: optax.GradientTransformation
    steps_per_epoch: int


@dataclasses.dataclass(frozen=True)
class SchemeEntry:
    """How to build one named scheme.

    Attributes:
      constructor: name of the :mod:`covjax` function.
      gradient_target: default gradient target (see the module docstring).
      defaults: ``context -> kwargs`` for the constructor (before overrides).
      description: one line for the docs and ``--help``.
    """

    constructor: str
    gradient_target: GradientTarget
    defaults: Callable[[SchemeContext], dict[str, Any]]
    description: str


def _none(_: SchemeContext) -> dict[str, Any]:
    return {}


def _same_optimizer(context: SchemeContext) -> dict[str, Any]:
    return {"optimizer": context.optimizer}


def _epoch_period(context: SchemeContext) -> dict[str, Any]:
    return {"period": context.steps_per_epoch}


def _hand_tuned(context: SchemeContext) -> dict[str, Any]:
    return {"weights": dict(context.task.hand_tuned_weights())}


def _with(**fixed: Any) -> Callable[[SchemeContext], dict[str, Any]]:
    return lambda _: dict(fixed)


def _epoch_period_with(**fixed: Any) -> Callable[[SchemeContext], dict[str, Any]]:
    return lambda context: {"period": context.steps_per_epoch, **fixed}


SCHEMES: dict[str, SchemeEntry] = {
    # Static baselines (SPEC §2.1).
    "equal": SchemeEntry("equal_weighting", "none", _none, "α_i = 1/K"),
    "hand_tuned": SchemeEntry(
        "static_weighting", "none", _hand_tuned, "the task's hand-tuned static weights"
    ),
    "static": SchemeEntry(
        "static_weighting", "none", _none, "static weights given as scheme_kwargs.static.weights"
    ),
    # CoV-Weighting and its variants (SPEC §1, paper Tables 2 and 7).
    "cov": SchemeEntry("cov_weighting", "none", _none, "CoV-Weighting, full history"),
    "cov_decay": SchemeEntry(
        "cov_weighting", "none", _with(decay=0.99), "CoV-Weighting, EW statistics (t = 100)"
    ),
    "cov_reference_decay": SchemeEntry(
        "cov_weighting",
        "none",
        _with(decay=0.99, reference_decay=True),
        "CoV-Weighting, the released code's decayed means with undecayed S",
    ),
    "cov_loss": SchemeEntry(
        "cov_weighting", "none", _with(statistic="loss"), "CoV of L instead of L/μ_L"
    ),
    "cov_inverse": SchemeEntry(
        "cov_weighting", "none", _with(inverse=True), "α ∝ μ/σ (paper Table 7)"
    ),
    # Learned and loss-statistics baselines (SPEC §§2.2, 3, 4).
    "uncertainty": SchemeEntry(
        "uncertainty_weighting", "none", _same_optimizer, "Kendall et al. 2018, learned log σ²"
    ),
    "lsb": SchemeEntry("lsb", "none", _epoch_period, "loss scale balancing with difficulty"),
    "lsb_no_difficulty": SchemeEntry(
        "lsb", "none", _epoch_period_with(difficulty=False), "loss scale balancing only"
    ),
    "multi_loss_rebalancing": SchemeEntry(
        "multi_loss_rebalancing",
        "none",
        lambda context: {"steps_per_epoch": context.steps_per_epoch},
        "Lee & Kim 2020, 4 rebalances per epoch",
    ),
    "dwa": SchemeEntry("dwa", "none", _epoch_period, "dynamic weight average, T = 2"),
    "rlw": SchemeEntry("rlw", "none", _none, "random loss weighting"),
    "gls": SchemeEntry("gls", "none", _none, "geometric loss strategy"),
    "imtl_l": SchemeEntry("imtl_l", "none", _same_optimizer, "IMTL-L, learned loss scales"),
    "famo": SchemeEntry("famo", "none", _none, "fast adaptive multitask optimisation"),
    "softadapt": SchemeEntry("softadapt", "none", _none, "SoftAdapt"),
    "relobralo": SchemeEntry("relobralo", "none", _none, "ReLoBRaLo"),
    # Gradient-based schemes (SPEC §§2.3, 2.4, 5).
    "gradnorm": SchemeEntry("gradnorm", "layer", _none, "GradNorm at the shared layer"),
    "mgda_ub": SchemeEntry("mgda", "representation", _none, "MGDA-UB on the representation"),
    "mgda": SchemeEntry("mgda", "parameters", _none, "MGDA on all parameters"),
    "pcgrad": SchemeEntry("pcgrad", "parameters", _none, "PCGrad"),
    "cagrad": SchemeEntry("cagrad", "parameters", _none, "CAGrad, c = 0.4"),
    "imtl_g": SchemeEntry("imtl_g", "parameters", _none, "IMTL-G"),
    "nash_mtl": SchemeEntry("nash_mtl", "parameters", _none, "Nash-MTL"),
    "aligned_mtl": SchemeEntry("aligned_mtl", "parameters", _none, "Aligned-MTL"),
    "upgrad": SchemeEntry("upgrad", "parameters", _none, "UPGrad"),
    "gradvac": SchemeEntry("gradvac", "parameters", _none, "GradVac"),
    "db_mtl": SchemeEntry("db_mtl", "parameters", _none, "DB-MTL"),
}


def register_scheme(name: str, entry: SchemeEntry, *, overwrite: bool = False) -> None:
    """Add a named scheme (e.g. an experiment's single-loss baselines) to :data:`SCHEMES`."""
    if name in SCHEMES and not overwrite:
        raise ValueError(f"Scheme {name!r} is already registered; pass overwrite=True.")
    if entry.gradient_target not in GRADIENT_TARGETS:
        raise ValueError(f"Scheme {name!r}: unknown gradient target {entry.gradient_target!r}.")
    SCHEMES[name] = entry


@dataclasses.dataclass(frozen=True)
class Scheme:
    """A built scheme: the covjax weighting and what its gradients are taken of."""

    name: str
    weighting: covjax.Weighting
    gradient_target: GradientTarget

    @property
    def needs_gradients(self) -> bool:
        return covjax.GRAMIAN in self.weighting.requires


def available_schemes() -> tuple[str, ...]:
    """Registered names whose covjax constructor exists in this installation."""
    return tuple(name for name, entry in SCHEMES.items() if hasattr(covjax, entry.constructor))


def build_scheme(
    name: str,
    context: SchemeContext,
    kwargs: Mapping[str, Any] | None = None,
    gradient_target: str | None = None,
) -> Scheme:
    """Build the scheme registered as ``name``.

    Args:
      name: a key of :data:`SCHEMES`.
      context: the task, optimiser and epoch length.
      kwargs: keyword arguments for the covjax constructor, overriding the
        registry's defaults (e.g. ``{"decay": 0.95}`` for ``"cov_decay"``).
      gradient_target: override of the registry's target for gradient-based
        schemes (e.g. ``"representation"`` to run PCGrad on z).

    Raises:
      ValueError: unknown name, bad gradient target, or a target the task
        cannot provide.
      NotImplementedError: the covjax constructor does not exist.
    """
    if name not in SCHEMES:
        raise ValueError(f"Unknown weighting scheme {name!r}; known schemes: {sorted(SCHEMES)}.")
    entry = SCHEMES[name]
    constructor = getattr(covjax, entry.constructor, None)
    if constructor is None:
        raise NotImplementedError(
            f"Scheme {name!r} needs covjax.{entry.constructor}, which this covjax lacks."
        )
    arguments = {**entry.defaults(context), **dict(kwargs or {})}
    if isinstance(arguments.get("weights"), list | tuple):
        # A config list of K weights, in the order of the task's losses.
        arguments["weights"] = np.asarray(arguments["weights"], np.float32)
    try:
        weighting = constructor(**arguments)
    except TypeError as error:
        raise ValueError(
            f"Scheme {name!r}: covjax.{entry.constructor} rejected the arguments "
            f"{sorted(arguments)}: {error}"
        ) from error
    needs_gradients = covjax.GRAMIAN in weighting.requires
    target = gradient_target or entry.gradient_target
    if target not in GRADIENT_TARGETS:
        raise ValueError(
            f"Scheme {name!r}: gradient target {target!r} is not one of {GRADIENT_TARGETS}."
        )
    if not needs_gradients:
        target = "none"
    elif target == "none":
        raise ValueError(f"Scheme {name!r} needs per-loss gradients; pick a gradient target.")
    if target == "representation" and not has_representation(context.task):
        raise ValueError(
            f"Scheme {name!r} takes gradients w.r.t. the shared representation, but task "
            f"{context.task.name!r} defines no representation()/losses_from_representation()."
        )
    if target == "layer" and not has_shared_layer(context.task):
        raise ValueError(
            f"Scheme {name!r} takes gradients at a shared layer, but task "
            f"{context.task.name!r} defines no shared_layer()."
        )
    return Scheme(name=name, weighting=weighting, gradient_target=target)  # type: ignore[arg-type]


def with_static_weights(config: Any, weights: Mapping[str, float]) -> Any:
    """A copy of ``config`` (an ml_collections ConfigDict) trained with fixed ``weights``.

    Single-loss and single-task baselines are static weightings with one-hot
    weights; they go through the ``hand_tuned`` entry with these weights.
    """
    import ml_collections  # local: the registry itself does not need configs

    config = ml_collections.ConfigDict(config.to_dict())
    config.scheme = "hand_tuned"
    if "hand_tuned" not in config.scheme_kwargs:
        config.scheme_kwargs.hand_tuned = ml_collections.ConfigDict()
    config.scheme_kwargs.hand_tuned.weights = dict(weights)
    return config
