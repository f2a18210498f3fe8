"""MoDo: multi-objective gradient with double sampling (Chen, Fernando, Ying & Chen, 2023)."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import Array

from covjax._src.base import CROSS_GRAMIAN, Weighting, make_weighting
from covjax._src.gramian import uniform_weights
from covjax._src.sdmgrad import check_non_negative, with_three_batch_example
from covjax._src.solvers import simplex_projection


class MoDoState(NamedTuple):
    """The simplex weights λ (K,), carried from step to step."""

    simplex: Array


def modo(gamma: float | Array = 1e-3, rho: float | Array = 0.1) -> Weighting:
    """MoDo, "Three-Way Trade-Off in Multi-Objective Learning" (Chen et al., NeurIPS 2023).

    Stochastic MGDA with one projected-gradient step on the simplex weights
    per training step, the gradient of ½‖g_λ‖² + (ρ/2)‖λ‖² estimated
    without bias by double sampling (the paper's Algorithm 1)::

        λ ← Π_Δ(λ − γ (C λ + ρ λ)),     C = J(ξ) J(ξ')ᵀ,

    where C is the cross-Gramian of the per-loss gradients of two
    independent batches ξ, ξ' (:func:`covjax.cross_gramian`, passed as
    ``gramian=``; ``requires`` holds :data:`covjax.CROSS_GRAMIAN`) and Π_Δ
    the Euclidean projection onto the simplex; the weights λ (≥ 0, summing
    to 1) then multiply the losses of a third batch ζ.
    :func:`covjax.value_and_grad` takes ξ and ξ' as the two halves of the
    step's batch (an even size) and weighs the whole batch's losses: the
    halves are part of the weighted batch, not independent of it as ζ is in
    the paper (the example below feeds three independent batches). λ
    starts uniform and is kept in the state. The Gramian of one batch
    instead of C gives the deterministic method (biased with
    stochastic gradients: its diagonal carries their variance).

    C is used raw, as in the paper and the authors' code: γ acts on
    γ‖g‖², so it must be chosen for the gradients' scale (λ barely moves
    when γ‖g_i‖² ≪ 1/K).

    Example (a training step fed by three independent batches)::

        {example}

    Args:
      gamma: γ ≥ 0, the step size of λ (default 1e-3, LibMTL's
        ``MoDo_gamma``). May be traced (``jax.vmap`` over γ).
      rho: ρ ≥ 0, the ℓ2 regularization of λ (default 0.1, LibMTL's
        ``MoDo_rho`` and the authors'). May be traced.

    Deviations: none in the weights. TorchJD's ``MoDoWeighting`` defaults
    to γ = 0.1 (covjax: LibMTL's 1e-3). LibMTL additionally divides the task
    heads' gradients by 3 (it back-propagates all three batches into them);
    here the heads get the third batch's weighted gradient only. The
    authors' first code (Trade-Off-MOL) applied λ to the sum of the two
    sampled batches' gradients instead of a third batch.

    References:
      Chen, Fernando, Ying & Chen, "Three-Way Trade-Off in Multi-Objective
      Learning: Optimization, Generalization and Conflict-Avoidance",
      NeurIPS 2023, https://arxiv.org/abs/2305.20057; authors' code
      https://github.com/heshandevaka/Trade-Off-MOL; LibMTL's ``MoDo``,
      https://github.com/median-research-group/LibMTL.
    """
    check_non_negative(gamma, "gamma", "modo")
    check_non_negative(rho, "rho", "modo")

    def init_fn(losses: Array) -> MoDoState:
        return MoDoState(uniform_weights(losses.shape[0]))

    def update_fn(
        losses: Array, state: MoDoState, count: Array, gramian: Array | None
    ) -> tuple[Array, MoDoState]:
        del losses, count
        simplex = state.simplex.astype(gramian.dtype)
        step = jnp.asarray(gamma, gramian.dtype) * (
            gramian @ simplex + jnp.asarray(rho, gramian.dtype) * simplex
        )
        simplex = simplex_projection(simplex - step)
        return simplex, MoDoState(simplex.astype(state.simplex.dtype))

    return make_weighting(
        init_fn,
        update_fn,
        name="modo",
        requires={CROSS_GRAMIAN},
        weights_sum="1",
        loss_scale="no",
    )


with_three_batch_example(modo, "covjax.modo(gamma=0.1)", 2)
