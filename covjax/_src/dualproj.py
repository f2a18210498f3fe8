"""DualProj: the mean gradient projected onto the dual cone of the gradients (TorchJD)."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import Array

from covjax._src.base import GRAMIAN, AggregatorPromises, Weighting, make_weighting
from covjax._src.gramian import normalized_gramian, uniform_weights
from covjax._src.solvers import dual_cone_projections


class DualProjState(NamedTuple):
    """Passive (non-zero) set of the projection's multipliers, (K,) bool (warm start)."""

    passive: Array


def dualproj(pref_vector: Array | None = None) -> Weighting:
    """DualProj: project the (preference-weighted) mean gradient onto the dual cone.

    With g_u = Σ_i u_i g_i (u_i = 1/K by default), the update is its
    Euclidean projection onto the dual cone of the gradients
    C = {v : ⟨g_j, v⟩ ≥ 0 ∀j}, the closest direction to g_u that conflicts
    with no loss (the quadratic program of Lopez-Paz & Ranzato's Gradient
    Episodic Memory, Eq. 11)::

        d = argmin_{v ∈ C} ‖v − g_u‖²  = Σ_i w_i g_i,   w = argmin_{w ≥ u} wᵀGw

    (Quinton & Rey, 2024, Prop. 1), a QP on the Gramian G only. When g_u
    already conflicts with no gradient, w = u; otherwise some w_i > u_i.
    J d = G w ≥ 0 (up to the ridge below). The weights are not normalized
    (``weights_sum="free"``), w ≥ u.

    Solver: :func:`dual_cone_projections` (exact primal–dual active set,
    warm-started from the previous step's active set, Lawson–Hanson
    fallback), on G divided by its mean diagonal, with its ridge at the
    Gramian's own round-off (δ_j = 4·K·eps·G_jj). TorchJD solves the same
    QP with quadprog in float64 after dividing G by its trace and adding
    1e-4·I, a ridge of 1e-4·K times the mean ‖g_j‖² relative: its weights
    differ from the exact projection by up to ~1e-4 relative (covjax
    reproduces TorchJD's published test values to that tolerance).

    Args:
      pref_vector: optional (K,) preference u ≥ 0 (default 1/K each, the
        mean; TorchJD's ``pref_vector``).

    A zero Gramian gives w = u (the direction is 0 anyway). Should the solve
    fail (non-finite weights, never observed), the weights are 0: no step,
    rather than a conflicting one.

    References:
      Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization",
      2024, https://arxiv.org/abs/2406.16232 (Prop. 1); TorchJD's
      ``DualProj``, https://github.com/TorchJD/torchjd; Lopez-Paz & Ranzato,
      "Gradient Episodic Memory for Continual Learning", NeurIPS 2017,
      https://arxiv.org/abs/1706.08840.
    """

    def init_fn(losses: Array) -> DualProjState:
        if pref_vector is not None and jnp.shape(pref_vector) != losses.shape:
            raise ValueError(
                f"covjax.dualproj: pref_vector has shape {jnp.shape(pref_vector)}, "
                f"expected {losses.shape}."
            )
        return DualProjState(jnp.zeros(losses.shape, bool))

    def update_fn(
        losses: Array, state: DualProjState, count: Array, gramian: Array | None
    ) -> tuple[Array, DualProjState]:
        k = losses.shape[0]
        g = normalized_gramian(gramian)
        preference = (
            uniform_weights(k) if pref_vector is None else jnp.asarray(pref_vector, jnp.float32)
        ).astype(g.gramian.dtype)
        # First step: guess that the gradients g_u conflicts with are active.
        guess = jnp.where(count == 0, g.gramian @ preference < 0, state.passive)
        multipliers, passive = dual_cone_projections(g.gramian, preference[None, :], guess[None, :])
        weights = preference + multipliers[0]
        ok = jnp.all(jnp.isfinite(weights))
        return jnp.where(ok, weights, 0.0), DualProjState(passive[0] & ok)

    return make_weighting(
        init_fn,
        update_fn,
        name="dualproj",
        requires={GRAMIAN},
        weights_sum="free",
        loss_scale="no",
        # A projection onto the dual cone {d : J d ≥ 0} (TorchJD's DualProj); the
        # mean preference is symmetric in the losses, another one is tied to their order.
        promises=AggregatorPromises(
            non_conflicting=True, permutation_invariant=pref_vector is None
        ),
    )
