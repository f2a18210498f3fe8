"""Uncertainty weighting: learned homoscedastic-uncertainty weights.

Kendall, Gal, Cipolla. "Multi-Task Learning Using Uncertainty to Weigh Losses
for Scene Geometry and Semantics", CVPR 2018 (a baseline of Groenendijk et al.,
WACV 2021, https://arxiv.org/abs/2009.01717).

Each loss gets a learned log-variance s_i = log σ_i² (initialised 0). The joint
objective of the paper's Eq. 1 is, in the two forms offered::

    reference (released code):  Σ_i exp(−s_i) L_i + s_i           α_i = exp(−s_i)
    kendall (regression form):  Σ_i ½ exp(−s_i) L_i + ½ s_i       α_i = ½ exp(−s_i)

The network's gradient is ∇ Σ α_i L_i with α held constant; the s_i follow
their closed-form gradient::

    reference:  ∂/∂s_i = 1 − exp(−s_i) L_i
    kendall:    ∂/∂s_i = ½ (1 − exp(−s_i) L_i)

Every update returns the weights from the current s, then takes one step of
``optimizer`` on s — with the network's optimiser (Adam 1e-4 in the paper)
this is exactly joint training of s and the network. The weights are NOT
normalized, so they scale the effective learning rate (a point the CoV paper
makes). The regularizer R = Σ s_i (or ½ Σ s_i) only enters the objective's
value: :func:`uncertainty_regularizer` gives it for logging.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import jax.numpy as jnp
import optax
from jax import Array

from covjax._src.base import LossScale, Weighting, WeightingState, make_weighting

UncertaintyForm = Literal["reference", "kendall"]


class LearnedLogState(NamedTuple):
    """A learned per-loss vector and its own optimiser state.

    Attributes:
      log_weights: (K,) float32, the learned s_i (log-variances for uncertainty
        weighting, log-weights for IMTL-L).
      optimizer_state: the optax state of the optimiser that trains them.
    """

    log_weights: Array
    optimizer_state: optax.OptState


def _check_form(form: str, name: str) -> None:
    if form not in ("reference", "kendall"):
        raise ValueError(f"covjax.{name}: form must be 'reference' or 'kendall', got {form!r}")


def uncertainty_weighting(
    optimizer: optax.GradientTransformation | None = None,
    form: UncertaintyForm = "reference",
    init_log_variance: float | Array = 0.0,
) -> Weighting:
    """Uncertainty weighting (Kendall et al., CVPR 2018).

    Args:
      optimizer: trains the log-variances s; default ``optax.adam(1e-4)``, the
        network optimiser of the paper. Its hyper-parameters may be traced
        arrays (a learning-rate sweep is one ``jax.vmap``).
      form: ``"reference"`` (released code: exp(−s) L + s, the default) or
        ``"kendall"`` (½ exp(−s) L + ½ s).
      init_log_variance: initial s, a scalar or (K,) array.

    Returns:
      A :class:`~covjax.Weighting` with positive, unnormalized weights.

    Losses must be positive: a step with a loss ≤ 0 (or a non-finite one) is
    rejected — state unchanged, previous weights returned (uniform before the
    first accepted step), the step reported as not accepted. (For L ≤ 0 the
    objective exp(−s) L + s has no minimum in s: the weight exp(−s) would
    grow without bound.)

    References:
      Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
      Losses for Scene Geometry and Semantics", CVPR 2018,
      https://arxiv.org/abs/1705.07115.
    """
    _check_form(form, "uncertainty_weighting")
    half = 0.5 if form == "kendall" else 1.0
    return learned_log_weighting(
        name="uncertainty_weighting",
        optimizer=optimizer,
        init_log_weights=init_log_variance,
        # weight half·exp(−s); ∂/∂s of half (exp(−s) L + s) = half (1 − exp(−s) L)
        weights_of=lambda s: half * jnp.exp(-s),
        gradient_of=lambda s, losses: half * (1.0 - jnp.exp(-s) * losses),
        loss_scale="learned",
    )


def learned_log_weighting(
    *,
    name: str,
    optimizer: optax.GradientTransformation | None,
    init_log_weights: float | Array,
    weights_of: Callable[[Array], Array],
    gradient_of: Callable[[Array, Array], Array],
    loss_scale: LossScale,
) -> Weighting:
    """A scheme of learned per-loss log-parameters s trained jointly with the network.

    Each update returns ``weights_of(s)`` for this step's loss, then takes one
    step of ``optimizer`` (default ``optax.adam(1e-4)``) on s along
    ``gradient_of(s, losses)``, the closed-form ∂/∂s of the scheme's joint
    objective. Uncertainty weighting, IMTL-L and LB-PINN are this with their
    own objective. Losses must be positive (the objectives have no minimum in
    s otherwise); the weights are not normalized.
    """
    optimizer = optax.adam(1e-4) if optimizer is None else optimizer

    def init_fn(losses: Array) -> LearnedLogState:
        s = jnp.broadcast_to(jnp.asarray(init_log_weights, jnp.float32), losses.shape)
        s = s.astype(jnp.float32)
        return LearnedLogState(s, optimizer.init(s))

    def update_fn(
        losses: Array, state: LearnedLogState, count: Array, gramian: Array | None
    ) -> tuple[Array, LearnedLogState]:
        del count, gramian
        s = state.log_weights
        updates, optimizer_state = optimizer.update(
            gradient_of(s, losses), state.optimizer_state, s
        )
        new_s = optax.apply_updates(s, updates)
        return weights_of(s), LearnedLogState(new_s.astype(s.dtype), optimizer_state)

    return make_weighting(
        init_fn,
        update_fn,
        name=name,
        positive_losses=True,
        weights_sum="free",
        loss_scale=loss_scale,
    )


def uncertainty_regularizer(state: WeightingState, form: UncertaintyForm = "reference") -> Array:
    """R(s) = Σ s_i (reference) or ½ Σ s_i (kendall), the regularizer of Eq. 1.

    The full objective of the step whose weights came from ``state`` is
    ``weighted_sum(losses, weights) + uncertainty_regularizer(state)``; pass
    the state *before* that update (the update already steps s).
    """
    _check_form(form, "uncertainty_regularizer")
    if not isinstance(state.inner, LearnedLogState):
        raise TypeError(
            "covjax.uncertainty_regularizer: expects the state of uncertainty_weighting, got "
            f"inner state {type(state.inner).__name__}."
        )
    total = jnp.sum(state.inner.log_weights)
    return 0.5 * total if form == "kendall" else total
