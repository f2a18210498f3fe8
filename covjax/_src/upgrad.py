"""UPGrad: unconflicting projection of gradients (Quinton & Rey, 2024)."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import Array

from covjax._src.base import GRAMIAN, AggregatorPromises, Weighting, make_weighting
from covjax._src.gramian import normalized_gramian, positive_preference, uniform_weights
from covjax._src.solvers import dual_cone_projections


class UPGradState(NamedTuple):
    """Passive (non-zero) sets of the K projections' multipliers, (K, K) bool (warm start)."""

    passive: Array


def upgrad(task_weights: Array | None = None) -> Weighting:
    """UPGrad, "Jacobian Descent for Multi-Objective Optimization" (Quinton & Rey, 2024).

    Project every gradient onto the dual cone of the gradients,
    C = {v : ⟨g_j, v⟩ ≥ 0 ∀j}, and average the projections::

        π_i = argmin_{v ∈ C} ‖v − g_i‖²,     d = Σ_i t_i π_i   (t_i = 1/K)

    By duality π_i = Σ_j u_ij g_j with u_i = argmin_{u ≥ e_i} uᵀGu (the
    paper's Prop. 1, TorchJD's form), a QP on the Gramian; the weights are
    w = Σ_i t_i u_i. Every d is non-conflicting: J d = G w ≥ 0.

    Solver: :func:`dual_cone_projections` (all K projections at once, exact
    primal–dual active set warm-started from the previous step, Lawson–Hanson
    as the fallback, then iterative refinement). It solves the projections
    for G + diag(δ) with
    δ_j = 4·K·eps(float32)·‖g_j‖², a ridge at the Gramian's own round-off
    that keeps every float32 Cholesky regular on rank-deficient or parallel
    gradients and makes the answer independent of the order of the losses;
    the price is a conflict of at most δ_j w_j: ⟨g_j, d⟩ ≥ −4K·eps·‖g_j‖² w_j
    (the refinement then brings it down to round-off on well-conditioned
    faces).
    TorchJD regularizes too, with 1e-4·I on G/tr(G) (a ridge of 1e-4·K times
    the mean ‖g_j‖², far above round-off), and solves in float64 (quadprog).

    Args:
      task_weights: optional (K,) preference t (default 1/K each, the mean).

    A dead gradient is its own projection (0); with G = 0, w = t. Should a
    solve still fail (non-finite weights, never observed), the weights are 0:
    no step, rather than a conflicting one.

    References:
      Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization",
      2024, https://arxiv.org/abs/2406.16232; TorchJD,
      https://github.com/TorchJD/torchjd; Hintermüller, Ito & Kunisch, "The
      primal-dual active set strategy as a semismooth Newton method", SIAM J.
      Optim. 13 (2002), https://doi.org/10.1137/S1052623401383558.
    """

    def init_fn(losses: Array) -> UPGradState:
        if task_weights is not None and jnp.shape(task_weights) != losses.shape:
            raise ValueError(
                f"covjax.upgrad: task_weights has shape {jnp.shape(task_weights)}, "
                f"expected {losses.shape}."
            )
        k = losses.shape[0]
        return UPGradState(jnp.zeros((k, k), bool))

    def update_fn(
        losses: Array, state: UPGradState, count: Array, gramian: Array | None
    ) -> tuple[Array, UPGradState]:
        k = losses.shape[0]
        preference = (
            uniform_weights(k) if task_weights is None else jnp.asarray(task_weights, jnp.float32)
        )
        g = normalized_gramian(gramian)
        eye = jnp.eye(k, dtype=g.gramian.dtype)
        # The active constraints change little from one step to the next:
        # warm-start every projection from its previous passive set; on the
        # first step, guess the gradients that conflict with g_i.
        guess = jnp.where(count == 0, (g.gramian < 0) & ~eye.astype(bool), state.passive)
        multipliers, passive = dual_cone_projections(g.gramian, eye, guess)
        weights = preference @ (eye + multipliers)
        ok = jnp.all(jnp.isfinite(weights))
        return jnp.where(ok, weights, 0.0), UPGradState(passive & ok)

    return make_weighting(
        init_fn,
        update_fn,
        name="upgrad",
        requires={GRAMIAN},
        weights_sum="free",
        loss_scale="no",
        # Quinton & Rey's Theorem 1; a preference other than the mean is tied to the
        # losses' order, and one with a zero entry can ignore a loss.
        promises=AggregatorPromises(
            non_conflicting=True,
            permutation_invariant=task_weights is None,
            linear_under_scaling=True,
            strongly_stationary=positive_preference(task_weights),
        ),
    )
