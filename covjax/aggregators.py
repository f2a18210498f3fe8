"""Gradient aggregators as weightings: losses + Gramian (+ state) → weights.

PCGrad, CAGrad, IMTL-G, Nash-MTL, Aligned-MTL, UPGrad, GradVac and DB-MTL
each turn the K per-loss gradients g_i (rows of the Jacobian J) into one
update direction d. Every one of them is a linear combination d = Σ_i w_i g_i
whose coefficients depend on the gradients only through their inner products,
so it is computed here from the K×K Gramian G = J Jᵀ alone: a modified
gradient is tracked as its coefficient vector c over the original gradients
(⟨Σ c_i g_i, g_j⟩ = (cᵀG)_j, ‖Σ c_i g_i‖² = cᵀGc). The returned weights are w,
and :func:`covjax.value_and_grad` then forms d with ONE weighted backward pass.

All schemes are built with ``requires={covjax.GRAMIAN}``. Conventions shared by all:

* The Gramian is symmetrised and divided by its mean diagonal before solving.
  Every aggregator here is invariant to that scale (or, for Nash-MTL, scales
  back explicitly), and float32 solvers behave much better on O(1) numbers.
* A loss whose gradient norm is below ``DEAD_GRADIENT`` (1e-5) times the
  largest is "dead": it cannot be projected on, normalized or bargained with.
  Each scheme says in its docstring what it does with dead losses; when every
  gradient is zero (G = 0) the direction is 0 whatever the weights, and the
  schemes return their documented neutral weights (never NaN).
* Randomness (PCGrad, GradVac) comes from a PRNG key in the state, split every
  step: the same seed and inputs give the same weights, jitted or not.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from covjax import numerics
from covjax.base import GRAMIAN, Weighting, make_weighting, stateless

#: A gradient whose norm is below this fraction of the largest one is treated as zero:
#: 1e-5 ≈ 84·eps32, above what float32 leaves of a gradient that is zero in exact
#: arithmetic (n cancelling terms leave ≈ √n·eps32 of their scale; 84² ≈ 7000 terms),
#: and far below any gradient that carries signal next to the largest one.
DEAD_GRADIENT = 1e-5


# ---------------------------------------------------------------------------
# Shared helpers.


class Normalized(NamedTuple):
    """A Gramian divided by its mean diagonal, with what is needed to undo it."""

    gramian: Array  # (K, K) symmetric, mean diagonal 1 (or all zero)
    scale: Array  # the mean diagonal of the original Gramian (0 when G = 0)
    live: Array  # (K,) bool: gradient norm ≥ DEAD_GRADIENT · the largest one


def _normalize(gramian: Array) -> Normalized:
    symmetric = 0.5 * (gramian + gramian.T)
    diagonal = jnp.maximum(jnp.diagonal(symmetric), 0.0)
    scale = jnp.mean(diagonal)
    ok = scale > 0
    normalized = jnp.where(ok, symmetric / jnp.where(ok, scale, 1.0), 0.0)
    return Normalized(normalized, scale, live_gradients(normalized) & ok)


def live_gradients(gramian: Array) -> Array:
    """(K,) bool: ‖g_i‖ > ``DEAD_GRADIENT``·max_j ‖g_j‖; the others count as zero.

    All False when every gradient is zero or a diagonal entry is NaN or ±Inf.
    """
    norms_sq = jnp.maximum(jnp.diagonal(gramian), 0.0)
    return norms_sq > DEAD_GRADIENT**2 * jnp.max(norms_sq)


def _uniform(k: int) -> Array:
    return jnp.full((k,), 1.0 / k, jnp.float32)


def _shuffled_orders(key: Array, k: int) -> tuple[Array, Array]:
    """A fresh key and one random permutation of range(K) per loss: (K, K) int32."""
    next_key, order_key = jax.random.split(key)
    keys = jax.random.split(order_key, k)
    orders = jax.vmap(lambda kk: jax.random.permutation(kk, k))(keys)
    return next_key, orders.astype(jnp.int32)


class _LawsonHanson(NamedTuple):
    x: Array
    passive: Array
    iteration: Array


def nonnegative_qp(
    gramian: Array, linear: Array, max_iters: int | None = None, tol: float = 1e-7
) -> Array:
    """``argmin_{x ≥ 0} ½ xᵀGx + linearᵀx`` for a PSD ``gramian`` (small K).

    Lawson & Hanson's active-set NNLS algorithm (1974) in normal-equation form:
    it is exact after finitely many steps (at most a few K in practice), which
    projected-gradient methods are not. ``tol`` is the threshold on the
    negative gradient for adding a variable to the passive set (G is assumed
    normalized to an O(1) diagonal). A 1e-7 ridge on the passive block keeps
    the masked solves regular for rank-deficient Gramians.
    """
    k = linear.shape[0]
    return _lawson_hanson(gramian, linear, jnp.zeros((k,), bool), max_iters, tol)[0]


def _lawson_hanson(
    gramian: Array, linear: Array, passive: Array, max_iters: int | None, tol: float
) -> tuple[Array, Array]:
    """:func:`nonnegative_qp` warm-started from a guess of the passive set; (x, passive)."""
    k = linear.shape[0]
    max_iters = 3 * k if max_iters is None else max_iters
    eye = jnp.eye(k, dtype=gramian.dtype)
    indices = jnp.arange(k)

    def solve_on(passive: Array) -> Array:
        both = passive[:, None] & passive[None, :]
        system = jnp.where(both, gramian + 1e-7 * eye, eye)
        rhs = jnp.where(passive, -linear, 0.0)
        return jnp.where(passive, jnp.linalg.solve(system, rhs), 0.0)

    def negative_gradient(x: Array) -> Array:
        return -(gramian @ x + linear)

    def outer_cond(state: _LawsonHanson) -> Array:
        w = negative_gradient(state.x)
        return (state.iteration < max_iters) & jnp.any(~state.passive & (w > tol))

    def outer_body(state: _LawsonHanson) -> _LawsonHanson:
        w = negative_gradient(state.x)
        entering = jnp.argmax(jnp.where(state.passive, -jnp.inf, w))
        passive = state.passive | (indices == entering)

        def inner_cond(carry: tuple[Array, Array, Array, Array]) -> Array:
            _, passive, s, count = carry
            return jnp.any(passive & (s <= 0)) & (count < k)

        def inner_body(carry: tuple[Array, Array, Array, Array]):
            x, passive, s, count = carry
            blocking = passive & (s <= 0)
            gap = x - s
            ratio = jnp.where(blocking & (gap > 0), x / jnp.where(gap > 0, gap, 1.0), jnp.inf)
            ratio = jnp.where(blocking & (gap <= 0), 0.0, ratio)
            leaving = jnp.argmin(ratio)
            step = jnp.clip(ratio[leaving], 0.0, 1.0)
            x = jnp.where(passive, x + step * (s - x), 0.0)
            passive = passive & (x > 1e-12) & (indices != leaving)
            x = jnp.where(passive, x, 0.0)
            return x, passive, solve_on(passive), count + 1

        x, passive, s, _ = jax.lax.while_loop(
            inner_cond, inner_body, (state.x, passive, solve_on(passive), jnp.zeros((), jnp.int32))
        )
        x = jnp.where(passive, jnp.maximum(s, 0.0), 0.0)
        return _LawsonHanson(x, passive, state.iteration + 1)

    # Warm start: shrink the guessed passive set until its solution is
    # positive, which gives the feasible start (x_P > 0, x_Z = 0) LH needs.
    def infeasible(carry: tuple[Array, Array, Array]) -> Array:
        passive, s, count = carry
        return jnp.any(passive & (s <= 0)) & (count < k)

    def shrink(carry: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        passive, s, count = carry
        passive = passive & (s > 0)
        return passive, solve_on(passive), count + 1

    passive, s, _ = jax.lax.while_loop(
        infeasible, shrink, (passive, solve_on(passive), jnp.zeros((), jnp.int32))
    )
    passive = passive & (s > 0)
    start = _LawsonHanson(jnp.where(passive, s, 0.0), passive, jnp.zeros((), jnp.int32))
    result = jax.lax.while_loop(outer_cond, outer_body, start)
    return result.x, result.passive


#: Ridge of the dual-cone projections in units of K·eps·G_jj (see
#: :func:`dual_cone_projections`): Cholesky is safe on a PSD matrix whose
#: diagonally scaled form has its smallest eigenvalue above about K·eps.
CONE_RIDGE = 4.0


#: Iterative-refinement steps of the dual-cone projections on their final face.
REFINEMENT_STEPS = 2


class _PrimalDualActiveSet(NamedTuple):
    passive: Array
    multipliers: Array
    iteration: Array
    done: Array


def dual_cone_projections(
    gramian: Array, lower: Array, passive: Array, max_iters: int | None = None
) -> tuple[Array, Array]:
    """Weights of the projections onto the dual cone: ``u_r = argmin_{u ≥ l_r} uᵀ(G + δI)u``.

    For the rows g_j of J (G = J Jᵀ), the projection of Jᵀl onto the dual cone
    C = {v : J v ≥ 0} is Jᵀu with u = argmin_{u ≥ l} uᵀGu (Quinton & Rey,
    2024, Prop. 1). Written u = l + λ, each is the non-negative QP
    min_{λ ≥ 0} ½λᵀSλ + λᵀSl with S = G + δI.

    The ridge S = G + diag(δ), δ_j = ``CONE_RIDGE``·K·eps·G_jj (eps of G's
    dtype; floored at eps·max G_ii for zero gradients), keeps S numerically
    positive definite, so the QP has one solution (the answer does not
    depend on the order of the rows) and every sub-solve is a regular
    Cholesky, also for rank-deficient or parallel gradients; it sits at the
    Gramian's own round-off. Its effect is bounded: S u ≥ 0 at the optimum,
    so ⟨g_j, Jᵀu⟩ = (Gu)_j ≥ −δ_j u_j.

    Solver: the primal–dual active-set method (Hintermüller, Ito & Kunisch,
    2002), one masked Cholesky solve per iteration and exact once the
    passive set (λ_j > 0) repeats, warm-started from ``passive``. It usually
    ends in 1–2 iterations when warm (4–6 cold at K = 32), but may cycle on
    some problems: if any row has not converged after ``max_iters`` (default
    K + 8), or a solve is not finite, all rows are re-solved by
    Lawson–Hanson, which always ends. Finally ``REFINEMENT_STEPS`` steps of
    iterative refinement on the found face remove most of the ridge's bias
    (the result is the projection for G itself on that face, to round-off,
    where the face is well conditioned).

    Args:
      gramian: (K, K) symmetric PSD, ideally scaled to an O(1) diagonal.
      lower: (R, K) the lower bounds l_r (one projection per row).
      passive: (R, K) bool guesses of the passive sets (warm start).
      max_iters: iteration cap of the active-set method.

    Returns:
      (R, K) the multipliers λ_r = u_r − l_r ≥ 0, and (R, K) their supports.
    """
    k = gramian.shape[0]
    dtype = gramian.dtype
    eps = jnp.finfo(dtype).eps
    max_iters = k + 8 if max_iters is None else max_iters
    eye = jnp.eye(k, dtype=dtype)
    diagonal = jnp.maximum(jnp.diagonal(gramian), 0.0)
    # Relative to each gradient's own norm (floored for zero gradients), so
    # that small gradients beside large ones are not swamped by the ridge.
    ridge = CONE_RIDGE * k * eps * jnp.maximum(diagonal, eps * jnp.max(diagonal))
    system = gramian + jnp.diag(ridge)
    linear = lower @ system  # row r: S l_r (S symmetric)
    # Round-off of (S u)_j is at most K·eps·Σ_k |S_jk| |u_k| ≤ K·eps·max S_ii·‖u‖₁:
    # a multiplier below minus twice that is a real violation.
    roundoff = 2.0 * k * eps * jnp.max(jnp.diagonal(system))

    def solve_on(mask: Array, rhs: Array) -> Array:
        masked = jnp.where(mask[:, None] & mask[None, :], system, eye)
        factor = jax.scipy.linalg.cho_factor(masked, lower=True)
        return jnp.where(mask, jax.scipy.linalg.cho_solve(factor, jnp.where(mask, rhs, 0.0)), 0.0)

    def active_set(linear_r: Array, lower_r: Array, guess: Array):
        def cond(s: _PrimalDualActiveSet) -> Array:
            return (s.iteration < max_iters) & ~s.done

        def body(s: _PrimalDualActiveSet) -> _PrimalDualActiveSet:
            lam = solve_on(s.passive, -linear_r)
            gradient = system @ lam + linear_r
            tol = roundoff * jnp.sum(jnp.abs(lower_r + lam))
            passive = jnp.where(s.passive, lam > 0, gradient < -tol)
            done = jnp.all(passive == s.passive) & jnp.all(jnp.isfinite(lam))
            return _PrimalDualActiveSet(passive, lam, s.iteration + 1, done)

        start = _PrimalDualActiveSet(
            guess, jnp.zeros((k,), dtype), jnp.zeros((), jnp.int32), jnp.array(False)
        )
        result = jax.lax.while_loop(cond, body, start)
        return result.multipliers, result.passive, result.done

    multipliers, support, done = jax.vmap(active_set)(linear, lower, passive)

    def lawson_hanson() -> tuple[Array, Array]:
        tol = roundoff * jnp.max(jnp.sum(jnp.abs(lower), axis=1))
        return jax.vmap(lambda b, guess: _lawson_hanson(system, b, guess, None, tol))(
            linear, passive
        )

    multipliers, support = jax.lax.cond(
        jnp.all(done), lambda: (multipliers, support), lawson_hanson
    )
    multipliers = jnp.where(support, jnp.maximum(multipliers, 0.0), 0.0)
    support = support & (multipliers > 0)

    # Iterative refinement towards the unregularized projection on the same
    # face: solve G_PP λ_P = −(G l)_P with S_PP as the preconditioner. Each
    # step shrinks the ridge's error in an eigen-direction σ of G_PP by
    # δ/(σ + δ); the component along a (near-)null direction, where the
    # projection does not depend on λ, is left alone.
    def refine(lam: Array, lower_r: Array, mask: Array) -> Array:
        masked = jnp.where(mask[:, None] & mask[None, :], system, eye)
        factor = jax.scipy.linalg.cho_factor(masked, lower=True)
        for _ in range(REFINEMENT_STEPS):
            residual = jnp.where(mask, gramian @ (lower_r + lam), 0.0)
            lam = lam - jnp.where(mask, jax.scipy.linalg.cho_solve(factor, residual), 0.0)
        return jnp.where(mask, jnp.maximum(lam, 0.0), 0.0)

    refined = jax.vmap(refine)(multipliers, lower, support)

    # Keep a row's refinement only where it reduced that projection's worst
    # conflict min_j ⟨g_j, π⟩ (round-off along a null direction of a singular
    # face can be amplified by 1/δ instead).
    def worst_conflict(lam: Array) -> Array:
        return jnp.min((lower + lam) @ gramian, axis=1)

    better = jnp.all(jnp.isfinite(refined), axis=1) & (
        worst_conflict(refined) >= worst_conflict(multipliers)
    )
    return jnp.where(better[:, None], refined, multipliers), support


# ---------------------------------------------------------------------------
# PCGrad.


class PCGradState(NamedTuple):
    """PRNG key for the random projection orders (uint32[2], split every step)."""

    key: Array


def pcgrad(seed: int = 0) -> Weighting:
    """PCGrad, "Gradient Surgery for Multi-Task Learning" (Yu et al., NeurIPS 2020).

    For every loss i, starting from g_i^PC = g_i and visiting all j (i included,
    as the reference implementations do) in a random order::

        if ⟨g_i^PC, g_j⟩ < 0:   g_i^PC ← g_i^PC − ⟨g_i^PC, g_j⟩ / ‖g_j‖² · g_j

    (projection onto the normal plane of each conflicting ORIGINAL gradient),
    and d = Σ_i g_i^PC. Each g_i^PC is tracked as a coefficient vector c_i
    (starting at e_i), so w = Σ_i c_i. Dead (zero) gradients are never
    projected on; with no conflicts w = 1 (plain sum).

    Args:
      seed: seed of the PRNG key kept in the state (one permutation per loss
        per step, drawn from a key split every step).
    """

    def init_fn(losses: Array) -> PCGradState:
        del losses
        return PCGradState(jax.random.PRNGKey(seed))

    def update_fn(
        losses: Array, state: PCGradState, count: Array, gramian: Array | None
    ) -> tuple[Array, PCGradState]:
        del count
        k = losses.shape[0]
        g = _normalize(gramian)
        next_key, orders = _shuffled_orders(state.key, k)
        eye = jnp.eye(k, dtype=g.gramian.dtype)

        def surgery(start: Array, order: Array) -> Array:
            def visit(coef: Array, j: Array) -> tuple[Array, None]:
                dot = coef @ g.gramian[:, j]
                conflict = (dot < 0) & g.live[j]
                shift = jnp.where(conflict, dot / jnp.where(conflict, g.gramian[j, j], 1.0), 0.0)
                return coef - shift * eye[j], None

            return jax.lax.scan(visit, start, order)[0]

        coefficients = jax.vmap(surgery)(eye, orders)
        return jnp.sum(coefficients, axis=0), PCGradState(next_key)

    return make_weighting(
        init_fn,
        update_fn,
        name="pcgrad",
        requires={GRAMIAN},
        weights_sum="free",
        loss_scale="no",
    )


# ---------------------------------------------------------------------------
# GradVac.


class GradVacState(NamedTuple):
    """GradVac's state.

    Attributes:
      key: PRNG key for the random visiting orders (split every step).
      targets: (K, K) EMA targets φ̂_ij of the cosine similarity (start at 0).
    """

    key: Array
    targets: Array


def gradvac(beta: float = 0.5, seed: int = 0) -> Weighting:
    """Gradient Vaccine (Wang, Tsvetkov, Firat, Cao, ICLR 2021).

    For every loss i, starting from g_i^PC = g_i, and every j ≠ i in a random
    order, with φ = cos(g_i^PC, g_j) and the target φ̂_ij::

        if φ < φ̂_ij:  g_i^PC ← g_i^PC + ‖g_i^PC‖ (φ̂ √(1−φ²) − φ √(1−φ̂²)) / (‖g_j‖ √(1−φ̂²)) · g_j
        φ̂_ij ← (1 − β) φ̂_ij + β φ          (every visit, with φ before the adjustment)

    and d = Σ_i g_i^PC (coefficient bookkeeping, w = Σ_i c_i). Targets start at
    0, so early steps behave like PCGrad with a gentler correction.

    Args:
      beta: EMA rate of the targets. The paper uses 1e-2; LibMTL's default,
        adopted here, is 0.5.
      seed: seed of the PRNG key kept in the state.

    Degenerate cases: a pair with a dead gradient (or a vanished g_i^PC) is
    skipped and its target left unchanged; a target |φ̂| = 1 (√(1−φ̂²) = 0)
    makes no adjustment.
    """
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"covjax.gradvac: beta must lie in (0, 1], got {beta}")

    def init_fn(losses: Array) -> GradVacState:
        k = losses.shape[0]
        return GradVacState(jax.random.PRNGKey(seed), jnp.zeros((k, k), jnp.float32))

    def update_fn(
        losses: Array, state: GradVacState, count: Array, gramian: Array | None
    ) -> tuple[Array, GradVacState]:
        del count
        k = losses.shape[0]
        g = _normalize(gramian)
        next_key, orders = _shuffled_orders(state.key, k)
        eye = jnp.eye(k, dtype=g.gramian.dtype)
        norms = jnp.sqrt(jnp.maximum(jnp.diagonal(g.gramian), 0.0))

        def vaccinate(i: Array, order: Array, targets: Array) -> tuple[Array, Array]:
            def visit(carry: tuple[Array, Array], j: Array) -> tuple[tuple[Array, Array], None]:
                coef, row = carry
                pc_norm = jnp.sqrt(jnp.maximum(coef @ g.gramian @ coef, 0.0))
                valid = (j != i) & g.live[j] & (pc_norm > DEAD_GRADIENT * jnp.max(norms))
                denominator = jnp.where(valid, pc_norm * norms[j], 1.0)
                phi = jnp.clip((coef @ g.gramian[:, j]) / denominator, -1.0, 1.0)
                target = row[j]
                target_sine = jnp.sqrt(jnp.maximum(1.0 - target**2, 0.0))
                adjust = valid & (phi < target) & (target_sine > 1e-6)
                scale = jnp.where(adjust, pc_norm / jnp.where(adjust, norms[j], 1.0), 0.0)
                amount = (
                    scale
                    * (target * jnp.sqrt(jnp.maximum(1.0 - phi**2, 0.0)) - phi * target_sine)
                    / jnp.where(adjust, target_sine, 1.0)
                )
                coef = coef + jnp.where(adjust, amount, 0.0) * eye[j]
                row = row.at[j].set(jnp.where(valid, (1.0 - beta) * target + beta * phi, target))
                return (coef, row), None

            (coef, row), _ = jax.lax.scan(visit, (eye[i], targets), order)
            return coef, row

        coefficients, targets = jax.vmap(vaccinate)(jnp.arange(k), orders, state.targets)
        return jnp.sum(coefficients, axis=0), GradVacState(next_key, targets)

    return make_weighting(
        init_fn,
        update_fn,
        name="gradvac",
        requires={GRAMIAN},
        weights_sum="free",
        loss_scale="no",
    )


# ---------------------------------------------------------------------------
# CAGrad.


class CAGradState(NamedTuple):
    """CAGrad's warm start.

    Attributes:
      dual: (K,) the simplex weights w* of the last dual solution.
      passive: (K,) bool, the support of w* (the active set to start from).
    """

    dual: Array
    passive: Array


def cagrad(c: float = 0.4, rescale: bool = True, max_iters: int = 30) -> Weighting:
    """Conflict-Averse Gradient descent (Liu, Liu, Jin, Stone, Liu, NeurIPS 2021).

    With g0 = (1/K) Σ g_i, find d maximising the worst improvement
    min_i ⟨g_i, d⟩ within the ball ‖d − g0‖ ≤ c‖g0‖. Its dual over the simplex::

        w* = argmin_{w ∈ Δ}  ⟨g_w, g0⟩ + c ‖g0‖ ‖g_w‖,    g_w = Σ w_i g_i

    gives d = g0 + (c ‖g0‖ / ‖g_w*‖) g_w*, i.e. weights
    1/K + (c ‖g0‖/‖g_w*‖) w*. In Gramian terms ⟨g_w, g0⟩ = wᵀa with a = G1/K,
    and ‖g_w‖² = wᵀGw.

    Solver (exact, in-graph): with r = c‖g0‖, the KKT conditions say that
    v = (r/‖g_w‖) w solves the non-negative QP
    min_{v ≥ 0} ½vᵀGv + (a − ν1)ᵀv for the multiplier ν of Σw = 1, with
    vᵀGv = r². φ(ν) = v(ν)ᵀGv(ν) is convex and increasing, so ν is found by
    Newton steps from the right (monotone), each step jumping to the exact
    root on the current active face when that is closer; every QP is solved
    exactly by Lawson–Hanson, warm-started from the previous active set.
    Then w* = v/Σv and the weights are 1/K + r v/√φ.

    Degenerate dual (0 in the hull of the gradients, e.g. c ≥ 1 with
    conflicting gradients): the dual optimum is g_w* = 0 with value 0, so
    the formula above is undefined, and the problem's answers are the
    points of the ball with min_i ⟨g_i, d⟩ = 0. covjax returns the one
    closest to g0, the projection of g0 onto the dual cone
    {d : ⟨g_i, d⟩ ≥ 0 ∀i} (it lies in the ball whenever the optimum is 0),
    solved by :func:`dual_cone_projections`. When 0 is inside the hull that
    is d = 0 (TorchJD's answer); when g0 itself conflicts with no gradient
    it is g0. This projection also replaces the formula whenever it has a
    strictly better worst improvement within the ball (float32 round-off
    near the degenerate case).

    Args:
      c: radius of the ball relative to ‖g0‖ (default 0.4, the authors'
        value in their multi-task experiments). May be a traced value (e.g.
        ``jax.vmap`` over c); it is checked to be ≥ 0 only when concrete.
      rescale: divide d by 1 + c² as the authors' code (``rescale=1``, their
        default) and LibMTL do; ``False`` gives the paper's d exactly.
      max_iters: cap on the Newton steps in ν (a handful are used).

    Degenerate cases: dead losses (zero gradient) are left out of the worst
    case (w_i = 0: their improvement is 0 for every d); g0 = 0 or c = 0
    (a zero radius) gives d = g0 (weights 1/K, rescaled).

    References:
      Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for
      Multi-task Learning", NeurIPS 2021, https://arxiv.org/abs/2110.14048;
      authors' code https://github.com/Cranial-XIX/CAGrad.
    """
    if not isinstance(c, jax.core.Tracer) and c < 0:
        raise ValueError(f"covjax.cagrad: c must be ≥ 0, got {c}")
    if max_iters < 1:
        raise ValueError(f"covjax.cagrad: max_iters must be ≥ 1, got {max_iters}")

    def init_fn(losses: Array) -> CAGradState:
        k = losses.shape[0]
        return CAGradState(_uniform(k), jnp.zeros((k,), bool))

    def update_fn(
        losses: Array, state: CAGradState, count: Array, gramian: Array | None
    ) -> tuple[Array, CAGradState]:
        del count
        k = losses.shape[0]
        g = _normalize(gramian)
        mean_weights = _uniform(k)
        linear = g.gramian @ mean_weights
        radius = c * jnp.sqrt(jnp.maximum(mean_weights @ linear, 0.0))
        # A dead loss's improvement is 0 whatever d: it is left out of the worst case.
        v, passive = cagrad_dual(g.gramian, linear, radius, g.live, state.passive, max_iters)
        phi = v @ g.gramian @ v
        total = jnp.sum(v)
        eps = jnp.finfo(g.gramian.dtype).eps
        largest = jnp.max(jnp.diagonal(g.gramian))
        # ‖g_w*‖² (w* = v/Σv) at the round-off of a K-term quadratic form: g_w* = 0.
        resolved = phi > 2.0 * k * eps * largest * total**2
        ok = (radius > 0) & resolved & (total > 0)
        formula = mean_weights + jnp.where(ok, radius * v / jnp.sqrt(jnp.where(ok, phi, 1.0)), 0.0)
        # The projection of g0 onto the dual cone of the live gradients.
        projected = (
            mean_weights
            + dual_cone_projections(
                g.gramian, mean_weights[None, :], (linear < 0)[None, :] & g.live[None, :]
            )[0][0]
        )

        def worst(w: Array) -> Array:
            return jnp.min(jnp.where(g.live, g.gramian @ w, jnp.inf))

        offset = projected - mean_weights
        in_ball = offset @ g.gramian @ offset <= radius**2 * (1.0 + 1e-3) + k * eps * largest
        strictly_better = worst(projected) > worst(formula) + 2.0 * k * eps * largest
        use_projection = ((radius > 0) & ~ok) | (in_ball & strictly_better)
        weights = jnp.where(use_projection, projected, formula)
        if rescale:
            weights = weights / (1.0 + c**2)
        dual = jnp.where(ok, v / jnp.where(ok, total, 1.0), mean_weights)
        ok = jnp.all(jnp.isfinite(weights))
        new_state = CAGradState(jnp.where(ok, dual, mean_weights), passive & ok)
        return jnp.where(ok, weights, mean_weights / (1.0 + c**2 if rescale else 1.0)), new_state

    return make_weighting(
        init_fn,
        update_fn,
        name="cagrad",
        requires={GRAMIAN},
        weights_sum="free",
        loss_scale="no",
    )


class _Multiplier(NamedTuple):
    nu: Array
    v: Array
    passive: Array
    phi: Array
    iteration: Array
    moved: Array


def cagrad_dual(
    gramian: Array,
    linear: Array,
    radius: Array,
    live: Array,
    passive: Array,
    max_iters: int,
) -> tuple[Array, Array]:
    """Solve the CAGrad dual through ν (see :func:`cagrad`); returns (v, its support).

    ``v ≥ 0`` with vᵀGv = radius², zero outside ``live``; w* = v / Σv.
    """
    k = linear.shape[0]
    eye = jnp.eye(k, dtype=gramian.dtype)
    any_live = jnp.any(live)
    live = jnp.where(any_live, live, True)
    both = live[:, None] & live[None, :]
    system = jnp.where(both, gramian, eye)
    target = radius**2
    diagonal = jnp.maximum(jnp.diagonal(system), numerics.TINY)
    # φ(ν) ≥ max_i (ν − a_i)²/G_ii (the single-variable QP bounds the optimum),
    # so φ(ν0) ≥ r² here: Newton starts right of the root.
    nu0 = jnp.min(jnp.where(live, linear + radius * jnp.sqrt(diagonal), jnp.inf))
    # Dead losses never enter: ν only decreases from ν0.
    linear = jnp.where(live, linear, nu0 + 1.0)

    def solve_on(mask: Array, rhs: Array) -> Array:
        masked = jnp.where(mask[:, None] & mask[None, :], system + 1e-7 * eye, eye)
        return jnp.where(mask, jnp.linalg.solve(masked, jnp.where(mask, rhs, 0.0)), 0.0)

    def qp(nu: Array, guess: Array) -> tuple[Array, Array, Array]:
        v, support = _lawson_hanson(system, linear - nu, guess & live, None, 1e-7)
        return v, support, v @ system @ v

    def cond(s: _Multiplier) -> Array:
        converged = jnp.abs(s.phi - target) <= 1e-6 * target
        return (s.iteration < max_iters) & ~converged & s.moved

    def body(s: _Multiplier) -> _Multiplier:
        total = jnp.sum(s.v)
        newton = s.nu - (s.phi - target) / jnp.where(total > 0, 2.0 * total, jnp.inf)
        # On a fixed face v(ν) = ν p − q: φ is the quadratic
        # (1ᵀp) ν² − 2 (1ᵀq) ν + aᵀq, whose larger root is exact if the face is right.
        p = solve_on(s.passive, jnp.ones_like(linear))
        q = solve_on(s.passive, linear)
        a2, b2, c2 = jnp.sum(p), jnp.sum(q), linear @ q - target
        discriminant = b2**2 - a2 * c2
        face_ok = (a2 > 0) & (discriminant >= 0)
        face_root = jnp.where(
            face_ok,
            (b2 + jnp.sqrt(jnp.maximum(discriminant, 0.0))) / jnp.where(a2 > 0, a2, 1.0),
            -jnp.inf,
        )
        nu = jnp.minimum(jnp.maximum(newton, face_root), s.nu)
        v, support, phi = qp(nu, s.passive)
        return _Multiplier(nu, v, support, phi, s.iteration + 1, nu != s.nu)

    v0, support0, phi0 = qp(nu0, passive)
    start = _Multiplier(nu0, v0, support0, phi0, jnp.zeros((), jnp.int32), jnp.array(True))
    result = jax.lax.while_loop(cond, body, start)
    v = jnp.where(live & any_live, result.v, 0.0)
    return v, result.passive


# ---------------------------------------------------------------------------
# IMTL-G.


def imtl_g() -> Weighting:
    """IMTL-G, the gradient half of Impartial MTL (Liu et al., ICLR 2021).

    Find d = Σ α_i g_i with Σ α_i = 1 whose projections onto every unit
    gradient u_i = g_i/‖g_i‖ are equal: dᵀu_1 = dᵀu_i. The paper's closed form,
    with D = [g_1 − g_i]ᵀ and U = [u_1 − u_i]ᵀ (i = 2..K)::

        α_{2:K} = g_1 Uᵀ (D Uᵀ)⁻¹,   α_1 = 1 − Σ_{i≥2} α_i

    is the solution of the (K+1)-square linear system
    Σ_j G_ij α_j / ‖g_i‖ − p = 0 (all i), Σ α = 1 in (α, p), solved here in
    Gramian terms by least squares, so a singular system (parallel or
    linearly dependent gradients) gives its minimum-norm solution rather than
    NaN. Dead losses get α_i = 0 (they have no direction to be impartial to);
    with every gradient zero the weights are uniform.
    """

    def weights_fn(losses: Array, gramian: Array | None) -> Array:
        k = losses.shape[0]
        g = _normalize(gramian)
        norms = jnp.sqrt(jnp.maximum(jnp.diagonal(g.gramian), 0.0))
        eye = jnp.eye(k, dtype=g.gramian.dtype)
        projections = g.gramian / jnp.where(g.live, norms, 1.0)[:, None]
        rows = jnp.where(g.live[:, None], projections, eye)
        column = jnp.where(g.live, -1.0, 0.0)[:, None]
        system = jnp.concatenate(
            [
                jnp.concatenate([rows, column], axis=1),
                jnp.concatenate([jnp.ones((1, k)), jnp.zeros((1, 1))], axis=1),
            ],
            axis=0,
        )
        rhs = jnp.zeros((k + 1,), g.gramian.dtype).at[k].set(1.0)
        solution = jnp.linalg.lstsq(system, rhs, rcond=1e-6)[0]
        weights = jnp.where(g.live, solution[:k], 0.0)
        ok = jnp.any(g.live) & jnp.all(jnp.isfinite(weights))
        return jnp.where(ok, weights, _uniform(k))

    return stateless(
        weights_fn,
        name="imtl_g",
        requires={GRAMIAN},
        weights_sum="1",
        loss_scale="compensated",
    )


# ---------------------------------------------------------------------------
# Nash-MTL.


class NashMTLState(NamedTuple):
    """The last solution α̂ of the normalized problem (warm start; 0 before the first)."""

    alpha: Array


def nash_mtl(
    max_iters: int = 50,
    normalize_gramian: bool = False,
    ridge: float = 1e-6,
    tol: float = 1e-10,
) -> Weighting:
    """Nash-MTL, "Multi-Task Learning as a Bargaining Game" (Navon et al., ICML 2022).

    The Nash bargaining solution d = Σ α_i g_i, α > 0, solves (Gα)_i = 1/α_i:
    every loss's improvement ⟨g_i, d⟩ is inversely proportional to its weight.
    These are the stationarity conditions of the strictly convex,
    self-concordant problem::

        min_{α > 0}  ½ αᵀGα − Σ_i log α_i

    solved in-graph by damped Newton (step 1/(1+λ) while the Newton decrement
    λ > 1/4, full steps after: Nesterov & Nemirovski; stays in α > 0 without
    a line search), warm-started from the previous step's α. The authors'
    code uses cvxpy with a sequence of convex relaxations (≤ 20 rounds) that
    converges to the same point.

    The default is the authors' method (and LibMTL's): their code divides G
    by n = ‖G‖_F for conditioning but multiplies n back inside the
    constraint α_i n (Ĝα)_i ≥ 1, so its α solves α_i (Gα)_i = 1 with the raw
    Gramian. Those weights scale as 1/‖g‖ and the update's improvements
    ⟨g_i, d⟩ = 1/α_i keep the gradients' scale: d itself does not grow or
    shrink with the losses' scale.

    Args:
      max_iters: Newton iteration cap (typically 3–6 are used warm-started).
      normalize_gramian: ``False`` (default): the paper's and the authors'
        equation α_i (Gα)_i = 1 with the raw Gramian. ``True``: solve it with
        Ĝ = G/‖G‖_F instead and return those α̂ = √‖G‖_F · α, weights that do
        not depend on the gradients' scale (a covjax variant, not the
        authors' method; the direction is √‖G‖_F times theirs).
      ridge: fallback regularization. Gα = 1/α has no solution when a
        non-negative combination of the gradients vanishes (e.g. two exactly
        opposing gradients: the problem above is unbounded). When the plain
        solve does not converge, or gives α beyond 1e6 (in units of
        1/rms‖g‖), it is redone with G + ridge·mean(diag G)·I, whose weights
        are bounded by about 1/√ridge (instead of diverging).
      tol: stop when the squared Newton decrement λ² falls below this.

    Accuracy: the solve converges to float32 round-off, so α is exact to
    about cond(G)·eps(float32) relative (1e-6 for well-conditioned gradients,
    ~1e-3 for K = 32 gradients spread over two decades of scale).

    Dead losses get α_i = 0 (their utility cannot be improved); all dead:
    uniform. The authors' ``max_norm`` gradient clipping belongs to the
    optimiser (e.g. ``optax.clip_by_global_norm``) and is not applied here.
    """
    if max_iters < 1:
        raise ValueError(f"covjax.nash_mtl: max_iters must be ≥ 1, got {max_iters}")
    if ridge <= 0:
        raise ValueError(f"covjax.nash_mtl: ridge must be > 0, got {ridge}")

    def init_fn(losses: Array) -> NashMTLState:
        return NashMTLState(jnp.zeros_like(losses, dtype=jnp.float32))

    def update_fn(
        losses: Array, state: NashMTLState, count: Array, gramian: Array | None
    ) -> tuple[Array, NashMTLState]:
        del count
        k = losses.shape[0]
        g = _normalize(gramian)
        eye = jnp.eye(k, dtype=g.gramian.dtype)
        both = g.live[:, None] & g.live[None, :]
        # Dead losses are decoupled (identity rows): their α is discarded below.
        system = jnp.where(both, g.gramian, eye)
        alpha, decrement_sq = nash_bargaining(system, state.alpha, max_iters, tol)
        solved = (decrement_sq < NEWTON_CONVERGED) & jnp.all(alpha < MAX_NASH_WEIGHT)
        alpha = jax.lax.cond(
            solved,
            lambda: alpha,
            lambda: nash_bargaining(system + ridge * eye, state.alpha, max_iters, tol)[0],
        )
        alpha = jnp.where(g.live, alpha, 0.0)
        if normalize_gramian:
            # α̂ solves (G/s)α̂ = 1/α̂ (s the mean diagonal); the solution of
            # (G/‖G‖_F)α = 1/α is α̂ √(‖G‖_F/s) = α̂ √‖G/s‖_F.
            frobenius = jnp.linalg.norm(jnp.where(both, g.gramian, 0.0))
            unscale = jnp.sqrt(frobenius)
        else:
            unscale = 1.0 / jnp.sqrt(jnp.where(g.scale > 0, g.scale, 1.0))
        weights = alpha * unscale
        ok = jnp.any(g.live) & jnp.all(jnp.isfinite(weights))
        return jnp.where(ok, weights, _uniform(k)), NashMTLState(jnp.where(ok, alpha, state.alpha))

    return make_weighting(
        init_fn,
        update_fn,
        name="nash_mtl",
        requires={GRAMIAN},
        weights_sum="free",
        loss_scale="compensated",
    )


#: Squared Newton decrement below which Nash-MTL's solve counts as converged
#: (deep in the quadratic-convergence region; float32 round-off sits far lower).
NEWTON_CONVERGED = 1e-6
#: Largest α̂ (normalized Gramian, so in units of 1/rms‖g‖) accepted without the ridge.
MAX_NASH_WEIGHT = 1e6


class _Newton(NamedTuple):
    alpha: Array
    decrement_sq: Array
    iteration: Array


def nash_bargaining(
    gramian: Array, warm_start: Array, max_iters: int, tol: float
) -> tuple[Array, Array]:
    """Solve ``gramian @ α = 1/α``, α > 0; returns α and the last squared Newton decrement."""

    def objective(alpha: Array) -> Array:
        return 0.5 * alpha @ gramian @ alpha - jnp.sum(jnp.log(alpha))

    # Warm start if it is valid and better than α_i = 1/√G_ii (exact for orthogonal gradients).
    diagonal_start = 1.0 / jnp.sqrt(jnp.maximum(jnp.diagonal(gramian), numerics.TINY))
    warm_valid = jnp.all(warm_start > 0) & jnp.all(jnp.isfinite(warm_start))
    warm = jnp.where(warm_valid, warm_start, diagonal_start)
    start = jnp.where(
        warm_valid & (objective(warm) < objective(diagonal_start)), warm, diagonal_start
    )

    def cond(s: _Newton) -> Array:
        return (s.iteration < max_iters) & (s.decrement_sq > tol)

    def body(s: _Newton) -> _Newton:
        alpha = s.alpha
        gradient = gramian @ alpha - 1.0 / alpha
        hessian = gramian + jnp.diag(1.0 / alpha**2)
        direction = -jnp.linalg.solve(hessian, gradient)
        decrement_sq = jnp.maximum(-(gradient @ direction), 0.0)
        decrement = jnp.sqrt(decrement_sq)
        step = jnp.where(decrement > 0.25, 1.0 / (1.0 + decrement), 1.0)
        new_alpha = alpha + step * direction
        # Float32 safety net: the damped step provably stays positive in exact arithmetic.
        new_alpha = jnp.where(new_alpha > 0, new_alpha, 0.5 * alpha)
        return _Newton(new_alpha, decrement_sq, s.iteration + 1)

    init = _Newton(start, jnp.full((), jnp.inf, start.dtype), jnp.zeros((), jnp.int32))
    result = jax.lax.while_loop(cond, body, init)
    return result.alpha, result.decrement_sq


# ---------------------------------------------------------------------------
# Aligned-MTL.


def aligned_mtl(
    scale: Literal["min", "median", "rmse"] = "min", task_weights: Array | None = None
) -> Weighting:
    """Aligned-MTL (Senushkin, Patakin, Kuznetsov, Konushin, CVPR 2023).

    Make the system of gradients well-conditioned: with the eigendecomposition
    G = V Λ Vᵀ (Λ = Σ², Σ the Jacobian's singular values), the balance
    transformation B = σ V Λ^{-1/2} Vᵀ turns J into B J = σ U_J Vᵀ_J, whose
    rows are orthogonal with equal norm σ (condition number 1). The update is
    d = Σ_i t_i (BJ)_i = Σ_i (B t)_i g_i, so the weights are w = B t with
    task weights t (default all 1, the sum used by the authors and LibMTL).

    Args:
      scale: σ = the smallest kept singular value ("min", the paper's and
        default), their median ("median", the lower middle one for an even
        count), or √(mean Λ) ("rmse"), as in the authors' code.
      task_weights: optional (K,) preference weights t.

    Rank deficiency: eigenvalues below λ_max·K·eps(float32) are dropped
    (their directions get no weight), as in the authors' code; σ uses the
    kept ones. G = 0: weights t.
    """
    if scale not in ("min", "median", "rmse"):
        raise ValueError(
            f"covjax.aligned_mtl: scale must be 'min', 'median' or 'rmse', got {scale!r}"
        )

    def weights_fn(losses: Array, gramian: Array | None) -> Array:
        if task_weights is not None and jnp.shape(task_weights) != losses.shape:
            raise ValueError(
                f"covjax.aligned_mtl: task_weights has shape {jnp.shape(task_weights)}, "
                f"expected {losses.shape}."
            )
        k = losses.shape[0]
        preference = (
            jnp.ones((k,), jnp.float32)
            if task_weights is None
            else jnp.asarray(task_weights, jnp.float32)
        )
        g = _normalize(gramian)
        eigenvalues, vectors = jnp.linalg.eigh(g.gramian)
        tolerance = jnp.max(eigenvalues) * k * jnp.finfo(jnp.float32).eps
        kept = eigenvalues > tolerance
        safe = jnp.where(kept, eigenvalues, 1.0)
        if scale == "min":
            sigma_sq = jnp.min(jnp.where(kept, eigenvalues, jnp.inf))
        elif scale == "median":
            # The lower middle value for an even count, as torch.median (the authors' code).
            ordered = jnp.sort(jnp.where(kept, eigenvalues, jnp.inf))
            sigma_sq = ordered[jnp.maximum(jnp.sum(kept) - 1, 0) // 2]
        else:
            sigma_sq = jnp.sum(jnp.where(kept, eigenvalues, 0.0)) / jnp.maximum(jnp.sum(kept), 1)
        inverse_root = jnp.where(kept, 1.0 / jnp.sqrt(safe), 0.0)
        balance = jnp.sqrt(sigma_sq) * (vectors * inverse_root) @ vectors.T
        weights = balance @ preference
        ok = jnp.any(kept) & jnp.all(jnp.isfinite(weights))
        return jnp.where(ok, weights, preference)

    return stateless(
        weights_fn,
        name="aligned_mtl",
        requires={GRAMIAN},
        weights_sum="free",
        loss_scale="no",
    )


# ---------------------------------------------------------------------------
# UPGrad.


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
        preference = _uniform(k) if task_weights is None else jnp.asarray(task_weights, jnp.float32)
        g = _normalize(gramian)
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
    )


# ---------------------------------------------------------------------------
# DB-MTL.


class DBMTLState(NamedTuple):
    """EMA of the norms of the log-loss gradients ‖∇ log(L_i + ε)‖ ((K,) float32)."""

    ema_norms: Array


def db_mtl(beta: float = 0.9, beta_sigma: float = 0.5, epsilon: float = 1e-8) -> Weighting:
    """DB-MTL, "Dual-Balancing for Multi-Task Learning" (Lin et al., 2023).

    Loss-scale balancing: train on log(L_i + ε), whose gradient is
    ∇L_i / (L_i + ε). Gradient-magnitude balancing: rescale every log-loss
    gradient to the largest EMA gradient norm::

        n_i = ‖∇L_i‖ / (L_i + ε) = √G_ii / (L_i + ε)
        m_i ← n_i at the first step, else (1 − β_t) n_i + β_t m_i,  β_t = β / t^σ
        d = Σ_i (max_j m_j / m_i) ∇L_i / (L_i + ε)

    so w_i = (max_j m_j / m_i) / (L_i + ε). The authors' code (LibMTL) keeps
    an EMA of the gradient VECTORS and steps along the EMA itself, which is
    not a combination of the current gradients; here only the norms are
    averaged (the current gradients are rescaled), so the update is one
    weighted backward pass.

    Args:
      beta, beta_sigma: β and σ of the decaying EMA rate β_t = β / t^σ
        (LibMTL defaults 0.9 and 0.5).
      epsilon: ε inside the log.

    A loss whose EMA norm is below 1e-5 of the largest (a dead gradient)
    keeps its log-gradient unscaled (ratio 1).

    Losses must be positive (log L): a step with a loss ≤ 0 (or a non-finite
    one) is rejected — state unchanged, previous weights returned (uniform
    before the first accepted step), the step reported as not accepted.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"covjax.db_mtl: beta must lie in [0, 1), got {beta}")
    if beta_sigma < 0:
        raise ValueError(f"covjax.db_mtl: beta_sigma must be ≥ 0, got {beta_sigma}")
    if epsilon <= 0:
        raise ValueError(f"covjax.db_mtl: epsilon must be > 0, got {epsilon}")

    def init_fn(losses: Array) -> DBMTLState:
        return DBMTLState(jnp.zeros_like(losses, dtype=jnp.float32))

    def update_fn(
        losses: Array, state: DBMTLState, count: Array, gramian: Array | None
    ) -> tuple[Array, DBMTLState]:
        shifted = jnp.maximum(losses, 0.0) + epsilon
        g = _normalize(gramian)
        # Work with the normalized Gramian: the EMA, ratios and weights are
        # all invariant to one common scale, except the norms kept in the
        # state, which are stored on the raw scale.
        root_scale = jnp.sqrt(g.scale)
        norms = root_scale * jnp.sqrt(jnp.maximum(jnp.diagonal(g.gramian), 0.0)) / shifted
        t = (count + 1).astype(jnp.float32)
        rate = beta / t**beta_sigma
        ema = jnp.where(count == 0, norms, (1.0 - rate) * norms + rate * state.ema_norms)
        largest = jnp.max(ema)
        alive = ema > DEAD_GRADIENT * largest
        ratio = jnp.where(alive, largest / jnp.where(alive, ema, 1.0), 1.0)
        return ratio / shifted, DBMTLState(ema)

    return make_weighting(
        init_fn,
        update_fn,
        name="db_mtl",
        requires={GRAMIAN},
        positive_losses=True,
        weights_sum="free",
        loss_scale="compensated",
    )
