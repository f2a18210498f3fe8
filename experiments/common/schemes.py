"""Weighting schemes by name: the registry the experiments' configs refer to.

Each name maps to a covjax constructor, the hyper-parameters the paper's
experiments use by default, and what the gradient-based schemes differentiate:

* ``"none"``: loss-statistics schemes, one backward pass;
* ``"layer"``: per-loss gradients at the task's shared layer (GradNorm uses
  the decoder's ``iconv4`` kernel in the reference code);
* ``"representation"``: per-loss gradients w.r.t. the shared representation
  z (MGDA-UB, Sener & Koltun 2018; the reference uses ``iconv4``'s output);
* ``"parameters"``: per-loss gradients w.r.t. all parameters (plain MGDA and
  the gradient aggregators, as LibMTL does).

Hyper-parameters come from ``config.scheme_kwargs.<name>``: every registered
scheme has a section there with the constructor's settable hyper-parameters
and their defaults (:func:`hyperparameters`), so a run sets them with dotted
flags, e.g. ``--config.scheme=cov_decay --config.scheme_kwargs.cov_decay.decay=0.95``
(``python -m experiments.depth.main --list_schemes`` lists them). The
gradient target comes from ``config.scheme_gradient_target.<name>`` if given.
An entry names its covjax constructor itself, so a new covjax method joins
the registry with one line.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import optax

import covjax
from experiments.common.task import Task

GradientTarget = Literal["none", "parameters", "layer", "representation"]
GRADIENT_TARGETS: tuple[str, ...] = ("none", "parameters", "layer", "representation")


#: The members of :class:`~experiments.common.task.Task` the gradient targets use.
_GRADIENT_MEMBERS = ("representation", "losses_from_representation", "shared_layer")


@dataclasses.dataclass(frozen=True)
class SchemeContext:
    """What a scheme may take from the experiment besides its own keyword arguments.

    Attributes:
      task: the task (for its hand-tuned weights).
      optimizer: the network's optimiser; uncertainty weighting trains its
        log-variances with the same optimiser and learning rate (as the CoV paper's reference code).
      steps_per_epoch: the period of LSB, DWA and multi-loss rebalancing.
      parameter_count: ``target -> P``, how many numbers the per-loss gradients
        of a gradient target have (the per-loss Jacobian's columns): the size of
        the state of the schemes that keep a vector over the parameters per loss
        (MoCo, M-ConFIG, ExcessMTL: the constructors that take ``num_params``).
        ``None`` where no model is built; those schemes then need ``num_params``
        given.
    """

    task: Task
    optimizer: optax.GradientTransformation
    steps_per_epoch: int
    parameter_count: Callable[[GradientTarget], int] | None = None


@dataclasses.dataclass(frozen=True)
class SchemeEntry:
    """How to build one named scheme.

    Attributes:
      constructor: the :mod:`covjax` function that builds the weighting.
      gradient_target: default gradient target (see the module docstring).
      defaults: ``context -> kwargs`` for the constructor taken from the
        experiment (the optimiser, the epoch length, the hand-tuned weights).
      description: one line for the docs and ``--list_schemes``.
      fixed: hyper-parameters that make this entry differ from the
        constructor's defaults (e.g. ``decay=0.99`` for ``"cov_decay"``).
    """

    constructor: Callable[..., covjax.Weighting]
    gradient_target: GradientTarget
    defaults: Callable[[SchemeContext], dict[str, Any]]
    description: str
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _none(_: SchemeContext) -> dict[str, Any]:
    return {}


def _same_optimizer(context: SchemeContext) -> dict[str, Any]:
    return {"optimizer": context.optimizer}


def _epoch_period(context: SchemeContext) -> dict[str, Any]:
    return {"period": context.steps_per_epoch}


def _hand_tuned(context: SchemeContext) -> dict[str, Any]:
    return {"weights": dict(context.task.hand_tuned_weights())}


SCHEMES: dict[str, SchemeEntry] = {
    # Static baselines.
    "equal": SchemeEntry(covjax.equal_weighting, "none", _none, "α_i = 1/K"),
    "hand_tuned": SchemeEntry(
        covjax.static_weighting, "none", _hand_tuned, "the task's hand-tuned static weights"
    ),
    "static": SchemeEntry(
        covjax.static_weighting,
        "none",
        _none,
        "static weights given as scheme_kwargs.static.weights",
    ),
    # CoV-Weighting and its variants (paper Tables 2 and 7).
    "cov": SchemeEntry(covjax.cov_weighting, "none", _none, "CoV-Weighting, full history"),
    "cov_decay": SchemeEntry(
        covjax.cov_weighting,
        "none",
        _none,
        "CoV-Weighting, EW statistics (t = 100)",
        fixed={"decay": 0.99},
    ),
    "cov_reference_decay": SchemeEntry(
        covjax.cov_weighting,
        "none",
        _none,
        "CoV-Weighting, the released code's decayed means with undecayed S",
        fixed={"decay": 0.99, "reference_decay": True},
    ),
    "cov_loss": SchemeEntry(
        covjax.cov_weighting,
        "none",
        _none,
        "CoV of L instead of L/μ_L",
        fixed={"statistic": "loss"},
    ),
    "cov_inverse": SchemeEntry(
        covjax.cov_weighting, "none", _none, "α ∝ μ/σ (paper Table 7)", fixed={"inverse": True}
    ),
    # Learned and loss-statistics baselines.
    "uncertainty": SchemeEntry(
        covjax.uncertainty_weighting, "none", _same_optimizer, "Kendall et al. 2018, learned log σ²"
    ),
    "lsb": SchemeEntry(covjax.lsb, "none", _epoch_period, "loss scale balancing with difficulty"),
    "lsb_no_difficulty": SchemeEntry(
        covjax.lsb,
        "none",
        _epoch_period,
        "loss scale balancing only",
        fixed={"difficulty": False},
    ),
    "multi_loss_rebalancing": SchemeEntry(
        covjax.multi_loss_rebalancing,
        "none",
        lambda context: {"steps_per_epoch": context.steps_per_epoch},
        "Lee & Kim 2020, 4 rebalances per epoch",
    ),
    "dwa": SchemeEntry(covjax.dwa, "none", _epoch_period, "dynamic weight average, T = 2"),
    "rlw": SchemeEntry(covjax.rlw, "none", _none, "random loss weighting"),
    "gls": SchemeEntry(covjax.gls, "none", _none, "geometric loss strategy"),
    "imtl_l": SchemeEntry(covjax.imtl_l, "none", _same_optimizer, "IMTL-L, learned loss scales"),
    "famo": SchemeEntry(covjax.famo, "none", _none, "fast adaptive multitask optimisation"),
    "softadapt": SchemeEntry(covjax.softadapt, "none", _none, "SoftAdapt"),
    "relobralo": SchemeEntry(covjax.relobralo, "none", _none, "ReLoBRaLo"),
    # Gradient-based schemes.
    "gradnorm": SchemeEntry(covjax.gradnorm, "layer", _none, "GradNorm at the shared layer"),
    "mgda_ub": SchemeEntry(covjax.mgda, "representation", _none, "MGDA-UB on the representation"),
    "mgda": SchemeEntry(covjax.mgda, "parameters", _none, "MGDA on all parameters"),
    "pcgrad": SchemeEntry(covjax.pcgrad, "parameters", _none, "PCGrad"),
    "cagrad": SchemeEntry(covjax.cagrad, "parameters", _none, "CAGrad, c = 0.4"),
    "imtl_g": SchemeEntry(covjax.imtl_g, "parameters", _none, "IMTL-G"),
    "nash_mtl": SchemeEntry(covjax.nash_mtl, "parameters", _none, "Nash-MTL"),
    "aligned_mtl": SchemeEntry(covjax.aligned_mtl, "parameters", _none, "Aligned-MTL"),
    "upgrad": SchemeEntry(covjax.upgrad, "parameters", _none, "UPGrad"),
    "gradvac": SchemeEntry(covjax.gradvac, "parameters", _none, "GradVac"),
    "db_mtl": SchemeEntry(covjax.db_mtl, "parameters", _none, "DB-MTL"),
    "fairgrad": SchemeEntry(covjax.fairgrad, "parameters", _none, "FairGrad, α = 1"),
    "dualproj": SchemeEntry(covjax.dualproj, "parameters", _none, "DualProj"),
    "krum": SchemeEntry(
        covjax.krum, "parameters", _none, "Krum, one Byzantine loss", fixed={"n_byzantine": 1}
    ),
    "cr_mogm": SchemeEntry(
        covjax.cr_mogm,
        "parameters",
        _none,
        "CR-MOGM, moving average of UPGrad's weights",
        fixed={"weighting": covjax.upgrad()},
    ),
    "pcd": SchemeEntry(
        covjax.pcd, "parameters", _none, "priority-constrained descent, the first loss primary"
    ),
    "conflict_free": SchemeEntry(covjax.conflict_free, "parameters", _none, "ConFIG"),
    "m_config": SchemeEntry(
        covjax.conflict_free,
        "parameters",
        _none,
        "M-ConFIG, per-loss momenta",
        fixed={"momentum": True},
    ),
    "moco": SchemeEntry(covjax.moco, "parameters", _none, "MoCo, tracked gradient estimates"),
    "excess_mtl": SchemeEntry(
        covjax.excess_mtl, "parameters", _none, "ExcessMTL, excess-risk weights"
    ),
    # Stochastic MGDA: the cross-Gramian of the two halves of the step's batch.
    "sdmgrad": SchemeEntry(
        covjax.sdmgrad,
        "parameters",
        _none,
        "SDMGrad, the cross-Gramian of the batch's halves",
    ),
    "modo": SchemeEntry(
        covjax.modo,
        "parameters",
        _none,
        "MoDo, the cross-Gramian of the batch's halves",
    ),
    "graddrop": SchemeEntry(covjax.graddrop, "parameters", _none, "GradDrop"),
    "trimmed_mean": SchemeEntry(
        covjax.trimmed_mean, "parameters", _none, "coordinate-wise trimmed mean", fixed={"trim": 1}
    ),
    "lr_annealing": SchemeEntry(
        covjax.lr_annealing, "parameters", _none, "learning-rate annealing (PINN balancer)"
    ),
    "ntk_weighting": SchemeEntry(
        covjax.ntk_weighting, "parameters", _none, "NTK-trace weighting (PINN balancer)"
    ),
    # Loss scalarizations and learned weights: loss values only.
    "stch": SchemeEntry(covjax.stch, "none", _none, "smooth Tchebycheff scalarization"),
    "pbi": SchemeEntry(covjax.pbi, "none", _none, "penalty-based boundary intersection"),
    "cosmos": SchemeEntry(covjax.cosmos, "none", _none, "COSMOS scalarization"),
    "lbpinn": SchemeEntry(covjax.lbpinn, "none", _same_optimizer, "LB-PINN, learned weights"),
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
    """A built scheme: the covjax weighting and what its gradients are taken of.

    A ``covjax.CROSS_GRAMIAN`` scheme (SDMGrad, MoDo) gets the cross-Gramian
    C = J(ξ) J(ξ')ᵀ of the per-loss gradients on the first and second half
    ξ, ξ' of the step's batch (their examples are independent draws) from
    :func:`covjax.value_and_grad`, and its weights multiply the whole batch's
    losses. (The papers weigh a third independent batch; these halves are
    part of it, as in a step of the usual size.)
    """

    name: str
    weighting: covjax.Weighting
    gradient_target: GradientTarget

    @property
    def needs_gradients(self) -> bool:
        return needs_gradients(self.weighting)


def needs_gradients(weighting: covjax.Weighting) -> bool:
    """Whether ``weighting`` needs per-loss gradients (a Gramian, cross-Gramian or Jacobian)."""
    return bool(weighting.requires & covjax.GRADIENT_REQUIREMENTS)


def available_schemes() -> tuple[str, ...]:
    """The registered scheme names, in the registry's order."""
    return tuple(SCHEMES)


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
        registry's defaults (e.g. ``{"decay": 0.95}`` for ``"cov_decay"``);
        ``None`` values keep the default (the config's unset fields).
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
    constructor = entry.constructor
    target = gradient_target or entry.gradient_target
    if target not in GRADIENT_TARGETS:
        raise ValueError(
            f"Scheme {name!r}: gradient target {target!r} is not one of {GRADIENT_TARGETS}."
        )
    given = {key: value for key, value in dict(kwargs or {}).items() if value is not None}
    for key, value in given.items():
        if type(value) in (list, tuple):
            # A config tuple of K values (weights, priors), in the order of the task's losses.
            given[key] = np.asarray(value, np.float32)
    arguments = {**entry.defaults(context), **entry.fixed, **given}
    # A constructor that takes ``num_params`` keeps a vector over the parameters per
    # loss (MoCo, M-ConFIG, ExcessMTL): P is that of the scheme's gradient target.
    # Plain ConFIG takes it too but ignores it, so only a required one must be found.
    size = inspect.signature(constructor).parameters.get("num_params")
    if size is not None and "num_params" not in given:
        if context.parameter_count is not None:
            arguments["num_params"] = context.parameter_count(target)  # type: ignore[arg-type]
        elif size.default is inspect.Parameter.empty:
            raise ValueError(
                f"Scheme {name!r} keeps a vector over the parameters per loss: give "
                f"scheme_kwargs.{name}.num_params, or a context with the model's parameter_count."
            )
    try:
        weighting = constructor(**arguments)
    except TypeError as error:
        raise ValueError(
            f"Scheme {name!r}: covjax.{constructor.__name__} rejected the arguments "
            f"{sorted(arguments)}: {error}"
        ) from error
    if not needs_gradients(weighting):
        target = "none"
    elif target == "none":
        raise ValueError(f"Scheme {name!r} needs per-loss gradients; pick a gradient target.")
    if target != "none" and not isinstance(context.task, Task):
        missing = [member for member in _GRADIENT_MEMBERS if not hasattr(context.task, member)]
        raise ValueError(
            f"Scheme {name!r} takes per-loss gradients, but task {context.task.name!r} defines no "
            f"{', '.join(missing)}: it does not implement experiments.common.task.Task."
        )
    if covjax.CROSS_GRAMIAN in weighting.requires and target == "representation":
        raise ValueError(
            f"Scheme {name!r} takes the cross-Gramian of two half batches, whose representations "
            "are different variables: use the 'parameters' or 'layer' target."
        )
    return Scheme(
        name=name,
        weighting=weighting,
        gradient_target=target,  # type: ignore[arg-type]
    )


#: Constructor arguments the experiment supplies (:class:`SchemeContext`), and what
#: leaving them unset in ``config.scheme_kwargs.<name>`` means.
FROM_EXPERIMENT: dict[str, str] = {
    "period": "config.steps_per_epoch",
    "steps_per_epoch": "config.steps_per_epoch",
    "weights": "the task's hand-tuned weights",
    "num_params": "the size of the gradient target",
}
#: Not settable from a config: the network's optimiser is passed in.
NOT_CONFIGURABLE = frozenset({"optimizer"})


@dataclasses.dataclass(frozen=True)
class Hyperparameter:
    """One settable keyword argument of a scheme's covjax constructor.

    Attributes:
      name: the keyword.
      type: the config field's type (``tuple`` for per-loss arrays, ``object``
        for a dict of weights by loss name).
      default: the entry's value (``None``: the constructor's or the experiment's).
      choices: the accepted strings, for a ``Literal`` argument.
      unset: what leaving it ``None`` means.
    """

    name: str
    type: type
    default: Any
    choices: tuple[str, ...] = ()
    unset: str = "None"


def _field_type(annotation: Any, default: Any) -> tuple[type | None, tuple[str, ...]]:
    """The config type of a constructor argument (None: not settable from a config)."""
    options = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    choices = tuple(
        value
        for option in options
        if typing.get_origin(option) is Literal
        for value in typing.get_args(option)
        if isinstance(value, str)
    )
    if choices:
        return str, choices
    for candidate in (bool, int, float, str):
        if candidate in options:
            return candidate, ()
    if isinstance(default, bool | int | float | str):
        return type(default), ()
    if annotation is Any:  # a pytree of weights: a tuple or a dict by loss name
        return object, ()
    if any("Array" in getattr(option, "__name__", "") for option in options):
        return tuple, ()  # per-loss values, given as a tuple in the task's loss order
    return None, ()


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def hyperparameters(name: str) -> tuple[Hyperparameter, ...]:
    """The hyper-parameters of the scheme registered as ``name`` that a config can set.

    They are the keyword arguments of its covjax constructor, with this
    entry's defaults (the constructor's, overridden by :attr:`SchemeEntry.fixed`;
    ``None`` for those the experiment supplies, see :data:`FROM_EXPERIMENT`).
    """
    entry = SCHEMES[name]
    constructor = entry.constructor
    hints = typing.get_type_hints(constructor)
    settable = []
    for parameter in inspect.signature(constructor).parameters.values():
        if parameter.name in NOT_CONFIGURABLE:
            continue
        required = parameter.default is inspect.Parameter.empty
        default = entry.fixed.get(parameter.name, None if required else parameter.default)
        field_type, choices = _field_type(hints.get(parameter.name, Any), default)
        if field_type is None:
            continue
        unset = "None"
        if required:
            unset = "required" if entry.defaults is _none else FROM_EXPERIMENT[parameter.name]
        if parameter.name == "num_params":
            unset = FROM_EXPERIMENT[parameter.name]
        settable.append(Hyperparameter(parameter.name, field_type, default, choices, unset))
    return tuple(settable)


def describe_schemes() -> str:
    """Every registered scheme with its hyper-parameters and defaults (``--list_schemes``)."""
    lines = [
        "Weighting schemes (--config.scheme=NAME); hyper-parameters are set with "
        "--config.scheme_kwargs.NAME.PARAMETER=VALUE:",
    ]
    for name in available_schemes():
        entry = SCHEMES[name]
        lines.append(
            f"\n{name}: {entry.description} (covjax.{entry.constructor.__name__}; "
            f"per-loss gradients: {entry.gradient_target})"
        )
        for parameter in hyperparameters(name):
            default = repr(parameter.default)
            if parameter.default is None and parameter.unset != "None":
                default = f"unset ({parameter.unset})"
            choices = f", one of {list(parameter.choices)}" if parameter.choices else ""
            lines.append(f"    {parameter.name} ({parameter.type.__name__}{choices}) = {default}")
    return "\n".join(lines)


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


def single_weights(name: str, loss_names: Sequence[str]) -> dict[str, float]:
    """One-hot static weights that train on loss ``name`` alone (a single-loss baseline)."""
    if name not in loss_names:
        raise ValueError(f"unknown loss {name!r}; choose one of {tuple(loss_names)}.")
    return {other: float(other == name) for other in loss_names}


def resolve_single(config: Any, field: str, loss_names: Sequence[str]) -> Any:
    """``config`` with ``config.<field>`` (a loss name, or unset) turned into the static
    one-hot weighting it stands for (:func:`single_weights`); unset: ``config`` itself."""
    name = config.get(field, None)
    if not name:
        return config
    return with_static_weights(config, single_weights(name, loss_names))


class SingleLossBaselines:
    """``resolve_config`` of a task whose ``config.<single_field>`` names one of its
    ``loss_names`` to train alone (:func:`resolve_single`): the single-loss baselines.

    Attributes:
      single_field: the config field (e.g. ``"single_loss"``).
      loss_names: the task's losses.
    """

    single_field: str
    loss_names: tuple[str, ...]

    def resolve_config(self, config: Any) -> Any:
        return resolve_single(config, self.single_field, self.loss_names)
