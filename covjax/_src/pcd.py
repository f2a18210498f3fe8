"""PCD: Priority-Constrained Descent, the first loss primary (Varam & AlHajri, TMLR 2026)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from covjax._src.base import GRAMIAN, Weighting, make_weighting
from covjax._src.solvers import priority_constrained_qp

#: ‖d̃‖² below this many eps of its terms' size counts as d̃ = 0 (cancellation, not a direction).
ZERO_DIRECTION = 10.0


class PCDState(NamedTuple):
    """The exponential moving average of each ‖g_i‖² (K,), not bias-corrected (0 at init),
    and the active constraints (K,) bool (entry 0, the primary loss, always False; a warm start)."""

    squared_norms: Array
    active: Array


def _concrete(value: float | Array) -> bool:
    return not isinstance(value, jax.core.Tracer)


def pcd(
    tau: float | Array = 0.02, beta: float | Array = 0.999, eps: float | Array = 1e-8
) -> Weighting:
    """PCD, "Not All Objectives Are Born Equal: Priority-Constrained Descent for Hierarchical
    Multi-Objective Optimization" (TMLR 2026).

    The first loss is the primary objective, the others are secondary. PCD
    follows the primary gradient as closely as possible while guaranteeing
    every secondary loss a fraction τ of the first-order progress a step
    along its own normalized gradient would make::

        d̃ = argmin_d ½‖d − g̃_1‖²   s.t.   ⟨g̃_j, d⟩ ≥ τ_j ‖g̃_j‖²,  j = 2 … K,
        g̃_i = s_i g_i,   s_i = 1/√(v̂_i + eps),
        v_i ← β v_i + (1 − β) ‖g_i‖²,   v̂_i = v_i / (1 − β^t)  (t: this step's number),

        d = (‖g_1‖ / ‖d̃‖) d̃.

    The update is d̃ rescaled to the primary gradient's norm. The
    normalization makes τ a scale-free fraction: a loss multiplied by c > 0
    at every step gets the same normalized gradient (up to eps), so its
    weight is divided by c (``loss_scale="compensated"``).

    Weights: from the constraints' KKT conditions, d̃ = g̃_1 + Σ_{j≥2} μ_j g̃_j
    with μ ≥ 0 (μ_j > 0 only for a constraint met with equality), so
    d = Σ_i w_i g_i with w = [1, μ_2, …, μ_K] ∘ s · ‖g_1‖/‖d̃‖. The weights are
    ≥ 0 and not normalized (``weights_sum="free"``): w_1 = s_1‖g_1‖/‖d̃‖ and a
    secondary weight is non-zero only where its constraint is active. μ is
    the solution of the dual QP ``min_{μ≥0} ½ μᵀG̃_s μ − bᵀμ`` (G̃_s the
    secondary block of the normalized Gramian G̃ = diag(s) G diag(s),
    b_j = τ_j G̃_jj − G̃_j1), solved exactly on the Gramian by Goldfarb &
    Idnani's dual active-set method (:func:`priority_constrained_qp`, on G̃
    divided by its largest diagonal entry, which leaves μ unchanged),
    warm-started from the previous step's active constraints.

    Special cases:

    * g_1 = 0: the weights are 0 (no step).
    * Infeasible constraints (e.g. two exactly opposing secondary gradients
      with τ > 0; needs K ≥ 3): they are dropped and d = g_1 (w = e_1).
    * d̃ = 0 up to the Gramian's rounding (‖d̃‖² below 10·eps of
      (Σ_i w̃_i‖g̃_i‖)²; e.g. τ = 0 and g_2 = −g_1): the weights are 0.
    * A single loss: d = g_1.
    * A non-finite loss or Gramian entry: the step is rejected like in
      every covjax scheme (state and moving average unchanged, the previous
      weights returned).

    The update is not symmetric in the losses (the first is primary), nor
    linear in the gradients' scales, nor always non-conflicting (the primary
    loss may be traded off against the constraints, and infeasible ones are
    dropped): ``properties.promises`` promises none of TorchJD's properties.

    Args:
      tau: τ ∈ [0, 1], the fraction of normalized first-order progress
        guaranteed to each secondary loss: one value for all, or a
        (K − 1,) vector, one per secondary loss in order (default 0.02, the
        paper's and TorchJD's). May be traced (``jax.vmap`` over τ).
      beta: β ∈ [0, 1), the decay of the moving average of the squared
        gradient norms (default 0.999). May be traced.
      eps: ≥ 0, added to v̂ before the inverse square root (default 1e-8). A
        loss whose gradient has always been 0 gets s_i = 0 when eps = 0.
        May be traced.

    Concrete values are checked at construction (and τ's length against K
    when ``init`` or ``update`` is traced).

    State: the moving average v (K,) of ‖g_i‖² and the last active set (a
    warm start, which changes the cost, not the solution); the bias
    correction uses the count of accepted steps, so a rejected step leaves
    all of them unchanged.

    Deviations: TorchJD's ``PCD`` (0.18) returns NaN weights on a
    non-finite input (and leaves its moving average unchanged); covjax
    rejects the step instead (the previous weights). TorchJD solves the QP
    in float64 on the CPU; covjax solves it in the Gramian's dtype, in-graph
    (float32 in training, float64 under ``jax.enable_x64``), with the same
    method and the dependence threshold scaled to that dtype. The authors'
    reference code enumerates the active sets (Appendix B.2 of the paper,
    exponential in K); the dual active-set method finds the same minimizer
    in about K solves.

    References:
      Varam & AlHajri, "Not All Objectives Are Born Equal: Priority-Constrained
      Descent for Hierarchical Multi-Objective Optimization", TMLR 2026,
      https://openreview.net/forum?id=HT01yGHLEt, https://arxiv.org/abs/2606.29521;
      reference code https://github.com/DaraVaram/priority-constrained-descent;
      TorchJD's ``PCD``, https://github.com/TorchJD/torchjd; Goldfarb &
      Idnani, "A numerically stable dual method for solving strictly convex
      quadratic programs", Math. Program. 27 (1983),
      https://doi.org/10.1007/BF02591962.
    """
    if _concrete(tau):
        given = np.asarray(tau, np.float64)
        if given.ndim > 1:
            raise ValueError(
                f"covjax.pcd: tau must be a number or a 1-D vector (one per secondary loss), "
                f"got shape {given.shape}."
            )
        if not np.all((given >= 0.0) & (given <= 1.0)):
            raise ValueError(f"covjax.pcd: tau must lie in [0, 1], got {tau!r}.")
    elif jnp.ndim(tau) > 1:
        raise ValueError(
            f"covjax.pcd: tau must be a number or a 1-D vector, got shape {jnp.shape(tau)}."
        )
    if _concrete(beta) and not 0.0 <= float(beta) < 1.0:
        raise ValueError(f"covjax.pcd: beta must lie in [0, 1), got {beta!r}.")
    if _concrete(eps) and not float(eps) >= 0.0:
        raise ValueError(f"covjax.pcd: eps must be ≥ 0, got {eps!r}.")

    def check_tau(k: int) -> None:
        if jnp.ndim(tau) == 1 and jnp.shape(tau)[0] != k - 1:
            raise ValueError(
                f"covjax.pcd: tau has {jnp.shape(tau)[0]} values, expected one per secondary "
                f"loss: {k - 1} for {k} losses."
            )

    def init_fn(losses: Array) -> PCDState:
        check_tau(losses.shape[0])
        return PCDState(jnp.zeros_like(losses), jnp.zeros(losses.shape, bool))

    def update_fn(
        losses: Array, state: PCDState, count: Array, gramian: Array | None
    ) -> tuple[Array, PCDState]:
        k = losses.shape[0]
        check_tau(k)
        dtype = gramian.dtype
        gramian = 0.5 * (gramian + gramian.T)
        squared_norms = jnp.maximum(jnp.diagonal(gramian), 0.0)
        decay = jnp.asarray(beta, dtype)
        average = decay * state.squared_norms.astype(dtype) + (1.0 - decay) * squared_norms
        debiased = average / (1.0 - decay ** (count + 1).astype(dtype))
        denominators = jnp.sqrt(debiased + jnp.asarray(eps, dtype))
        # v̂ = 0 (a gradient always 0, with eps = 0): its scale does not matter.
        scales = jnp.where(
            denominators > 0, 1.0 / jnp.where(denominators > 0, denominators, 1.0), 0.0
        )
        average = average.astype(state.squared_norms.dtype)
        primary_norm = jnp.sqrt(squared_norms[0])
        if k == 1:
            weight = jnp.where(primary_norm > 0, 1.0, 0.0)[None].astype(dtype)
            return weight, PCDState(average, state.active)

        normalized = gramian * scales[:, None] * scales[None, :]
        top = jnp.max(jnp.diagonal(normalized))
        live = (primary_norm > 0) & (top > 0)
        unit = normalized / jnp.where(live, top, 1.0)
        taus = jnp.broadcast_to(jnp.asarray(tau, dtype), (k - 1,))
        multipliers, _, active = priority_constrained_qp(unit, taus, state.active[1:])
        solved = jnp.concatenate([jnp.ones((1,), dtype), multipliers])
        # A failed solve (never observed) falls back like infeasible constraints: d = g_1.
        solved = jnp.where(
            jnp.all(jnp.isfinite(solved)), solved, jnp.zeros_like(solved).at[0].set(1.0)
        )
        direction_sq = solved @ unit @ solved
        terms = (jnp.abs(solved) @ jnp.sqrt(jnp.maximum(jnp.diagonal(unit), 0.0))) ** 2
        nonzero = direction_sq > ZERO_DIRECTION * jnp.finfo(dtype).eps * terms
        # ‖d̃‖ = √(top · direction_sq): d = Σ solved_i s_i g_i · ‖g_1‖/‖d̃‖.
        factor = primary_norm / (jnp.sqrt(top) * jnp.sqrt(jnp.where(nonzero, direction_sq, 1.0)))
        weights = jnp.where(live & nonzero, solved * scales * factor, 0.0)
        active = jnp.concatenate([jnp.zeros((1,), bool), active & live])
        return weights, PCDState(average, active)

    return make_weighting(
        init_fn,
        update_fn,
        name="pcd",
        requires={GRAMIAN},
        weights_sum="free",
        loss_scale="compensated",
    )
