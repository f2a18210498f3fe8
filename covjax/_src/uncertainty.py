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

from typing import Literal, NamedTuple

import jax.numpy as jnp
import optax
from jax import Array

from covjax._src.base import Weighting, WeightingState, make_weighting

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
    optimizer = optax.adam(1e-4) if optimizer is None else optimizer
    half = 0.5 if form == "kendall" else 1.0

    def init_fn(losses: Array) -> LearnedLogState:
        log_variance = jnp.broadcast_to(
            jnp.asarray(init_log_variance, jnp.float32), losses.shape
        ).astype(jnp.float32)
        return LearnedLogState(log_variance, optimizer.init(log_variance))

    def update_fn(
        losses: Array, state: LearnedLogState, count: Array, gramian: Array | None
    ) -> tuple[Array, LearnedLogState]:
        del count, gramian
        s = state.log_weights
        precision = jnp.exp(-s)
        weights = half * precision
        gradient = half * (1.0 - precision * losses)
        updates, optimizer_state = optimizer.update(gradient, state.optimizer_state, s)
        new_s = optax.apply_updates(s, updates)
        return weights, LearnedLogState(new_s.astype(s.dtype), optimizer_state)

    return make_weighting(
        init_fn,
        update_fn,
        name="uncertainty_weighting",
        positive_losses=True,
        weights_sum="free",
        loss_scale="learned",
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
