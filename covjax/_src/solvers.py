"""The small solvers of the Gramian schemes, in one place.

Min-norm point of a convex hull (MGDA), non-negative least squares
(Lawson–Hanson), projections onto the dual cone (UPGrad), CAGrad's dual and
the Nash-MTL bargaining Newton iteration. Each works on a K×K Gramian
(K small) and is jittable and vmappable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from covjax._src import numerics


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

    # Warm start: the guessed passive set shrunk until its solution is
    # positive, which gives the feasible start (x_P > 0, x_Z = 0) LH needs.
    passive, s = _shrink_to_positive(solve_on, passive)
    start = _LawsonHanson(s, passive, jnp.zeros((), jnp.int32))
    result = jax.lax.while_loop(outer_cond, outer_body, start)
    return result.x, result.passive


def _shrink_to_positive(solve_on: Callable[[Array], Array], guess: Array) -> tuple[Array, Array]:
    """A warm start of an active-set method: ``guess`` (bool) shrunk until ``solve_on`` of it
    is positive on it (at most one shrink per entry); (the support, the solution on it, 0
    elsewhere)."""

    def shrinking(carry: tuple[Array, Array, Array]) -> Array:
        support, solution, count = carry
        return jnp.any(support & ~(solution > 0)) & (count < guess.shape[0])

    def shrink(carry: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        support, solution, count = carry
        support = support & (solution > 0)
        return support, solve_on(support), count + 1

    support, solution, _ = jax.lax.while_loop(
        shrinking, shrink, (guess, solve_on(guess), jnp.zeros((), jnp.int32))
    )
    support = support & (solution > 0)
    return support, jnp.where(support, solution, 0.0)


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


def two_vector_min_norm(g11: Array, g12: Array, g22: Array) -> tuple[Array, Array]:
    """``argmin_γ∈[0,1] ‖γ g1 + (1−γ) g2‖²`` in closed form: ``(γ, squared norm)``.

    γ = (g22 − g12) / (g11 + g22 − 2 g12), clipped to [0, 1]; identical vectors
    (zero denominator) give γ = 1 if g11 ≤ g22 else 0.
    """
    denominator = g11 + g22 - 2.0 * g12
    gamma = numerics.safe_divide(g22 - g12, denominator, fallback=jnp.where(g11 <= g22, 1.0, 0.0))
    gamma = jnp.clip(gamma, 0.0, 1.0)
    cost = gamma**2 * g11 + 2.0 * gamma * (1.0 - gamma) * g12 + (1.0 - gamma) ** 2 * g22
    return gamma, cost


def _best_pair(gramian: Array) -> Array:
    """The simplex point of the best two-vector solution over all pairs."""
    k = gramian.shape[0]
    diagonal = jnp.diag(gramian)
    gamma, cost = two_vector_min_norm(diagonal[:, None], gramian, diagonal[None, :])
    cost = jnp.where(jnp.eye(k, dtype=bool), jnp.inf, cost)
    flat = jnp.argmin(cost)
    i, j = flat // k, flat % k
    best = gamma[i, j]
    return jnp.zeros(k, gramian.dtype).at[i].add(best).at[j].add(1.0 - best)


class _FrankWolfe(NamedTuple):
    weights: Array
    gramian_weights: Array  # G α, updated in O(K) per step
    iteration: Array
    converged: Array


def _frank_wolfe(gramian: Array, start: Array, max_iters: int, tol: float) -> Array:
    """Sener & Koltun's Frank–Wolfe with exact line search, from ``start``."""

    def cond(state: _FrankWolfe) -> Array:
        return (state.iteration < max_iters) & ~state.converged

    def body(state: _FrankWolfe) -> _FrankWolfe:
        vertex = jnp.argmin(state.gramian_weights)
        g11 = jnp.dot(state.weights, state.gramian_weights)
        gamma, _ = two_vector_min_norm(g11, state.gramian_weights[vertex], gramian[vertex, vertex])
        one_hot = jax.nn.one_hot(vertex, gramian.shape[0], dtype=gramian.dtype)
        weights = gamma * state.weights + (1.0 - gamma) * one_hot
        gramian_weights = gamma * state.gramian_weights + (1.0 - gamma) * gramian[:, vertex]
        converged = jnp.sum(jnp.abs(weights - state.weights)) < tol
        return _FrankWolfe(weights, gramian_weights, state.iteration + 1, converged)

    start_state = _FrankWolfe(start, gramian @ start, jnp.zeros((), jnp.int32), jnp.array(False))
    return jax.lax.while_loop(cond, body, start_state).weights


class _ActiveSet(NamedTuple):
    weights: Array
    free: Array  # bool (K,): the working support
    iteration: Array
    converged: Array


def _support_optimum(gramian: Array, free: Array) -> Array:
    """Minimiser of αᵀGα subject to Σα = 1 and α_i = 0 off ``free`` (may be < 0)."""
    k = gramian.shape[0]
    both_free = free[:, None] & free[None, :]
    block = jnp.where(both_free, gramian, 0.0) + jnp.diag(jnp.where(free, 0.0, 1.0))
    ones = free.astype(gramian.dtype)
    kkt = jnp.zeros((k + 1, k + 1), gramian.dtype)
    kkt = kkt.at[:k, :k].set(block).at[:k, k].set(ones).at[k, :k].set(ones)
    rhs = jnp.zeros(k + 1, gramian.dtype).at[k].set(1.0)
    # The KKT system of a bounded convex QP is consistent; the pseudo-inverse
    # gives a minimiser even when G_SS is singular (parallel gradients).
    solution = jnp.linalg.pinv(kkt, hermitian=True, rtol=1e-6) @ rhs
    return jnp.where(free, solution[:k], 0.0)


def _active_set(gramian: Array, start: Array, max_iters: int) -> Array:
    """Primal active-set method for min αᵀGα on the simplex, from a feasible ``start``."""
    # Below this, a multiplier is rounding noise (G is scaled to max diag 1).
    multiplier_tol = 1e-7

    def cond(state: _ActiveSet) -> Array:
        return (state.iteration < max_iters) & ~state.converged

    def body(state: _ActiveSet) -> _ActiveSet:
        target = _support_optimum(gramian, state.free)
        direction = target - state.weights
        blocking = state.free & (direction < 0.0)
        ratios = jnp.where(blocking, state.weights / jnp.where(blocking, -direction, 1.0), jnp.inf)
        first_blocker = jnp.argmin(ratios)
        feasible = ~jnp.any(blocking & (target < 0.0))

        # Infeasible: walk to the first bound and drop that index.
        step = jnp.clip(ratios[first_blocker], 0.0, 1.0)
        cut = jnp.maximum(state.weights + step * direction, 0.0)
        cut = cut.at[first_blocker].set(0.0)
        cut_free = state.free.at[first_blocker].set(False)

        # Feasible: check the multipliers of the indices outside the support.
        multipliers = gramian @ target - jnp.dot(target, gramian @ target)
        candidate = jnp.argmin(jnp.where(state.free, jnp.inf, multipliers))
        optimal = multipliers[candidate] >= -multiplier_tol
        grown_free = state.free.at[candidate].set(True)

        weights = jnp.where(feasible, jnp.maximum(target, 0.0), cut)
        free = jnp.where(feasible, jnp.where(optimal, state.free, grown_free), cut_free)
        return _ActiveSet(
            numerics.normalize(weights), free, state.iteration + 1, feasible & optimal
        )

    start_state = _ActiveSet(start, start > 0.0, jnp.zeros((), jnp.int32), jnp.array(False))
    return jax.lax.while_loop(cond, body, start_state).weights


def _objective(gramian: Array, weights: Array) -> Array:
    return jnp.dot(weights, gramian @ weights)


def min_norm_solver(
    gramian: Array,
    max_iters: int = 250,
    tol: float = 1e-5,
    refine: bool = True,
    excluded: Array | None = None,
) -> Array:
    """The simplex weights α* minimising ‖Σ α_i g_i‖² = αᵀGα (Sener & Koltun 2018).

    Args:
      gramian: (K, K) Gramian of the K gradients, G_ij = ⟨g_i, g_j⟩.
      max_iters: Frank–Wolfe iterations at most (250 in the reference).
      tol: Frank–Wolfe stops when a step moves α by less than this (ℓ1).
      refine: finish with the exact active-set method (module docstring);
        ``False`` reproduces the reference's plain Frank–Wolfe.
      excluded: optional (K,) bool (may be traced): gradients left out of the
        problem. α* is then the min-norm point of the hull of the others only,
        with α_i = 0 on the excluded ones; if every gradient is excluded the
        weights are uniform, as for an all-zero Gramian. (Solved as the full
        problem with each excluded gradient replaced by a copy of a kept one,
        whose weight is then given back to it: the hull, hence the min-norm
        point, is that of the kept gradients.)

    Returns:
      (K,) float32 weights, ≥ 0 and summing to 1; uniform for a non-finite or
      all-zero Gramian.
    """
    gramian = jnp.asarray(gramian)
    if gramian.ndim != 2 or gramian.shape[0] != gramian.shape[1] or gramian.shape[0] == 0:
        raise ValueError(f"covjax.min_norm_solver: gramian must be K×K, got shape {gramian.shape}.")
    if not isinstance(max_iters, int) or max_iters < 0:
        raise ValueError(
            f"covjax.min_norm_solver: max_iters must be an int ≥ 0, got {max_iters!r}."
        )
    k = gramian.shape[0]
    gramian = gramian.astype(jnp.promote_types(gramian.dtype, jnp.float32))
    uniform = jnp.full((k,), 1.0 / k, gramian.dtype)
    if excluded is not None:
        excluded = jnp.asarray(excluded)
        if excluded.shape != (k,) or excluded.dtype != jnp.bool_:
            raise ValueError(
                f"covjax.min_norm_solver: excluded must be a ({k},) bool array, got "
                f"shape {excluded.shape} and dtype {excluded.dtype}."
            )
        first_kept = jnp.argmax(~excluded)
        source = jnp.where(excluded, first_kept, jnp.arange(k))
        on_copies = min_norm_solver(
            gramian[source][:, source], max_iters=max_iters, tol=tol, refine=refine
        )
        weights = jnp.zeros_like(on_copies).at[source].add(on_copies)
        fallback = jnp.all(excluded) | ~jnp.all(jnp.isfinite(gramian))
        return jnp.where(fallback, uniform, weights)
    if k == 1:
        return jnp.ones((1,), gramian.dtype)
    finite = jnp.all(jnp.isfinite(gramian))
    gramian = jnp.where(finite, gramian, jnp.eye(k, dtype=gramian.dtype))
    gramian = 0.5 * (gramian + gramian.T)
    scale = jnp.max(jnp.diag(gramian))
    # Any positive normal scale is fine: |G_ij| ≤ max_i G_ii, so G/scale ≤ 1.
    degenerate = ~finite | (scale <= jnp.finfo(gramian.dtype).tiny)
    gramian = gramian / jnp.where(degenerate, 1.0, scale)

    def iterate() -> Array:
        weights = _frank_wolfe(gramian, _best_pair(gramian), max_iters, tol)
        if refine:
            refined = _active_set(gramian, weights, max_iters=3 * k + 10)
            better = _objective(gramian, refined) <= _objective(gramian, weights)
            weights = jnp.where(better & jnp.all(jnp.isfinite(refined)), refined, weights)
        return weights

    if refine:
        # Many gradients with a common descent direction (typical for MGDA-UB at
        # large K) put α* inside the simplex, where one KKT solve on the full
        # support is the exact answer; Frank–Wolfe would crawl there.
        interior = _support_optimum(gramian, jnp.ones((k,), bool))
        # Strictly inside (near-zero entries are left to the exact path, which
        # lands on the face) and stationary, Gα = (αᵀGα)·1: optimal.
        gradient = gramian @ interior
        stationary = jnp.max(jnp.abs(gradient - jnp.dot(interior, gradient))) <= 1e-6
        is_optimal = stationary & jnp.all(interior > 1e-6)
        interior = numerics.normalize(jnp.maximum(interior, 0.0))
        weights = jax.lax.cond(is_optimal, lambda: interior, iterate)
    else:
        weights = iterate()
    weights = jnp.where(degenerate | ~jnp.all(jnp.isfinite(weights)), uniform, weights)
    return weights


# ---------------------------------------------------------------------------
# FairGrad, DualProj, Krum, SDMGrad, MoDo, PCD, CR-MOGM.


#: Backtracking halvings of the α-fair Newton line search (2⁻⁴⁰ ≈ 1e-12 of a step).
MAX_HALVINGS = 40


class _FairNewton(NamedTuple):
    weights: Array
    decrement_sq: Array
    iteration: Array


def alpha_fair_weights(
    gramian: Array, alpha: Array, start: Array, max_iters: int, tol: float
) -> tuple[Array, Array]:
    """Solve ``(G w)_i = w_i^(−1/α)``, w > 0 (FairGrad); returns w and the last squared decrement.

    The equation is the stationarity condition of the strictly convex
    F(w) = ½ wᵀGw + Σ_i h(w_i) with h'(w) = −w^(−1/α), i.e.
    h(w) = −(w^p − 1)/p for p = 1 − 1/α (−log w at α = 1), so it is solved
    by Newton's method on F: Hessian G + diag(w^(−1/α−1)/α), steps kept
    inside w > 0 (fraction to the boundary) and shortened by Armijo
    backtracking on F while the Newton decrement λ exceeds 1/4; below that,
    full steps (quadratic convergence, where F's float32 differences are
    round-off). α may be traced. ``start`` must be > 0.
    """
    power = 1.0 - 1.0 / alpha
    is_log = jnp.abs(power) < 1e-6
    safe_power = jnp.where(is_log, 1.0, power)

    def objective(w: Array) -> Array:
        log_w = jnp.log(w)
        h = jnp.where(is_log, -log_w, -jnp.expm1(safe_power * log_w) / safe_power)
        return 0.5 * w @ gramian @ w + jnp.sum(h)

    def cond(s: _FairNewton) -> Array:
        return (s.iteration < max_iters) & (s.decrement_sq > tol)

    def body(s: _FairNewton) -> _FairNewton:
        w = s.weights
        inverse_power = w ** (-1.0 / alpha)
        gradient = gramian @ w - inverse_power
        hessian = gramian + jnp.diag(inverse_power / (alpha * w))
        direction = -jnp.linalg.solve(hessian, gradient)
        decrement_sq = jnp.maximum(-(gradient @ direction), 0.0)
        # Largest step that keeps every weight positive, with a margin.
        shrink = jnp.where(direction < 0, -w / jnp.where(direction < 0, direction, -1.0), jnp.inf)
        step = jnp.minimum(1.0, 0.99 * jnp.min(shrink))
        value = objective(w)
        slope = gradient @ direction

        def too_long(carry: tuple[Array, Array]) -> Array:
            t, halvings = carry
            trial = objective(w + t * direction)
            return (halvings < MAX_HALVINGS) & ~(trial <= value + 1e-4 * t * slope)

        def halve(carry: tuple[Array, Array]) -> tuple[Array, Array]:
            t, halvings = carry
            return 0.5 * t, halvings + 1

        searched, _ = jax.lax.while_loop(too_long, halve, (step, jnp.zeros((), jnp.int32)))
        step = jnp.where(decrement_sq > 0.0625, searched, step)
        new_w = w + step * direction
        new_w = jnp.where(new_w > 0, new_w, 0.5 * w)  # float32 safety net
        return _FairNewton(new_w, decrement_sq, s.iteration + 1)

    init = _FairNewton(start, jnp.full((), jnp.inf, start.dtype), jnp.zeros((), jnp.int32))
    result = jax.lax.while_loop(cond, body, init)
    return result.weights, result.decrement_sq


def simplex_projection(v: Array) -> Array:
    """The Euclidean projection of ``v`` (K,) onto the probability simplex.

    Sort-based (Held, Wolfe & Crowder 1974; Duchi et al., ICML 2008): with u
    sorted decreasingly, ρ = max{j : u_j − (Σ_{i≤j} u_i − 1)/j > 0} and
    θ = (Σ_{i≤ρ} u_i − 1)/ρ, the projection is max(v − θ, 0). Exact, O(K log K).
    """
    k = v.shape[0]
    u = jnp.sort(v)[::-1]
    cumulative = jnp.cumsum(u) - 1.0
    index = jnp.arange(1, k + 1, dtype=v.dtype)
    rho = jnp.sum(u - cumulative / index > 0)  # the condition holds exactly for j ≤ ρ
    theta = cumulative[jnp.maximum(rho, 1) - 1] / jnp.maximum(rho, 1).astype(v.dtype)
    return jnp.maximum(v - theta, 0.0)


def sdmgrad_weights(
    cross_gramian: Array,
    start: Array,
    preference: Array,
    lamda: Array,
    learning_rate: Array,
    momentum: Array,
    num_steps: int,
) -> Array:
    """SDMGrad's inner loop: ``num_steps`` projected heavy-ball steps on the simplex weights.

    Minimizes ½‖g_w + λ g_p‖² over w ∈ Δ (g_p = Σ p_i g_i) with the stochastic
    gradient C w + λ C p (C the cross-Gramian of two independent batches, divided by
    the squared mean of √C_ii); PyTorch-SGD momentum (buffer b ← μ b + ∇,
    first b = ∇; w ← Π_Δ(w − lr·b)), the buffer restarting at every call as
    in the authors' code.
    """
    k = start.shape[0]
    diagonal = jnp.maximum(jnp.diagonal(cross_gramian), 0.0)
    scale = jnp.mean(jnp.sqrt(diagonal)) ** 2
    normalized = cross_gramian / jnp.where(scale > 0, scale, 1.0)
    toward_mean = lamda * (normalized @ preference)

    def step(i: Array, carry: tuple[Array, Array]) -> tuple[Array, Array]:
        w, buffer = carry
        gradient = normalized @ w + toward_mean
        buffer = jnp.where(i == 0, gradient, momentum * buffer + gradient)
        return simplex_projection(w - learning_rate * buffer), buffer

    w, _ = jax.lax.fori_loop(0, num_steps, step, (start, jnp.zeros((k,), start.dtype)))
    return w


class _DualActiveSet(NamedTuple):
    multipliers: Array
    active: Array
    pending: Array  # the constraint being added (−1: none)
    iteration: Array
    done: Array
    feasible: Array


def priority_constrained_qp(
    gramian: Array, taus: Array, guess: Array | None = None, max_iters: int | None = None
) -> tuple[Array, Array, Array]:
    """PCD's projection ``argmin_d ½‖d − g_1‖²  s.t.  ⟨g_j, d⟩ ≥ τ_j ‖g_j‖²  (j ≥ 2)``.

    ``gramian`` is the K×K Gramian of g_1 … g_K (g_1 the primary, scaled to an
    O(1) diagonal), ``taus`` the (K − 1,) fractions τ_j. The solution is
    d = g_1 + Σ_{j≥2} μ_j g_j with μ ≥ 0 the multipliers of the constraints,
    the solution of the dual box QP ``min_{μ≥0} ½ μᵀG_s μ − bᵀμ`` (G_s the
    secondary block of G, b_j = τ_j G_jj − G_j1), so it needs inner products
    only.

    Solver: the dual active-set method of Goldfarb & Idnani (1983) for an
    identity Hessian. From μ = 0 (d = g_1) it adds the most violated
    constraint p by a step along z = g_p − Σ_{j active} r_j g_j (the part of
    g_p orthogonal to the active gradients, r from one masked solve on the
    active block), dropping an active constraint whose multiplier reaches 0
    first; the dual objective increases at every step, so no active set
    repeats, and each solution is exact (no ridge). The constraints are
    infeasible exactly when a violated g_p lies in the span of the active
    gradients (z = 0) with no multiplier to decrease: d = 0 of
    Σ μ_j g_j = 0, μ ≥ 0, would have to satisfy τ_j‖g_j‖² ≤ 0. z counts as 0
    below ``10·eps`` (floored at 1e-9) of ‖g_p‖² squared-norm relative, where
    the Gramian's own rounding can make dependent gradients look independent
    (with huge multipliers). A constraint counts as met up to the round-off
    of its slack, 4·K·eps·max_j G_jj·(1 + Σμ). ``max_iters`` (default
    10·K + 10; about K iterations are used) only guards against cycling by
    round-off: the iterate reached is then returned.

    Warm start: ``guess`` (K − 1,) bool, e.g. the previous step's active set,
    is shrunk until the multipliers that meet its constraints with equality
    are positive (a valid start of the dual method), and the method goes on
    from there (a couple of solves when the active set barely changes). Should
    that run not end, or end infeasible, it is redone from μ = 0.

    Returns:
      (K − 1,) multipliers μ ≥ 0 (zero where infeasible), whether the
      constraints are feasible, and the final active set (K − 1,) bool.
    """
    n = taus.shape[0]
    dtype = gramian.dtype
    eps = jnp.finfo(dtype).eps
    max_iters = 10 * (n + 1) + 10 if max_iters is None else max_iters
    secondary = gramian[1:, 1:]
    diagonal = jnp.maximum(jnp.diagonal(secondary), 0.0)
    # b_j > 0 exactly where d = g_1 violates constraint j.
    target = taus * diagonal - gramian[1:, 0]
    roundoff = 4.0 * (n + 1) * eps * jnp.maximum(jnp.max(jnp.diagonal(gramian)), numerics.TINY)
    dependence = jnp.maximum(10.0 * eps, 1e-9)
    eye = jnp.eye(n, dtype=dtype)
    indices = jnp.arange(n)

    def body(s: _DualActiveSet) -> _DualActiveSet:
        slacks = secondary @ s.multipliers - target
        inactive_slacks = jnp.where(s.active, jnp.inf, slacks)
        candidate = jnp.argmin(inactive_slacks)
        has_pending = s.pending >= 0
        p = jnp.where(has_pending, s.pending, candidate)
        tol = roundoff * (1.0 + jnp.sum(s.multipliers))
        optimal = ~has_pending & (inactive_slacks[candidate] >= -tol)

        column = secondary[:, p]
        block = jnp.where(s.active[:, None] & s.active[None, :], secondary, eye)
        r = jnp.where(s.active, jnp.linalg.solve(block, jnp.where(s.active, column, 0.0)), 0.0)
        orthogonal_sq = diagonal[p] - column @ r  # ‖z‖²
        shrinking = s.active & (r > 0)
        ratios = jnp.where(shrinking, s.multipliers / jnp.where(shrinking, r, 1.0), jnp.inf)
        leaving = jnp.argmin(ratios)
        partial_step = ratios[leaving]
        independent = orthogonal_sq > dependence * diagonal[p]
        full_step = jnp.where(
            independent,
            jnp.maximum(-slacks[p], 0.0) / jnp.where(independent, orthogonal_sq, 1.0),
            jnp.inf,
        )
        step = jnp.minimum(partial_step, full_step)
        infeasible = ~optimal & ~jnp.isfinite(step)
        move = ~optimal & ~infeasible
        step = jnp.where(move, step, 0.0)
        multipliers = jnp.where(s.active, s.multipliers - step * r, s.multipliers)
        multipliers = multipliers.at[p].add(step)
        adding = full_step <= partial_step
        leaving_mask = indices == leaving
        multipliers = jnp.where(~adding & leaving_mask, 0.0, jnp.maximum(multipliers, 0.0))
        active = jnp.where(adding, s.active | (indices == p), s.active & ~leaving_mask)
        return _DualActiveSet(
            jnp.where(move, multipliers, s.multipliers),
            jnp.where(move, active, s.active),
            jnp.where(move & ~adding, p, -1).astype(jnp.int32),
            s.iteration + 1,
            optimal | infeasible,
            ~infeasible,
        )

    def run(multipliers: Array, active: Array) -> _DualActiveSet:
        start = _DualActiveSet(
            multipliers,
            active,
            jnp.array(-1, jnp.int32),
            jnp.zeros((), jnp.int32),
            jnp.array(False),
            jnp.array(True),
        )
        return jax.lax.while_loop(lambda s: (s.iteration < max_iters) & ~s.done, body, start)

    def cold() -> _DualActiveSet:
        return run(jnp.zeros((n,), dtype), jnp.zeros((n,), bool))

    if guess is None:
        result = cold()
    else:

        def tight(mask: Array) -> Array:
            """The multipliers that meet the constraints of ``mask`` with equality."""
            block = jnp.where(mask[:, None] & mask[None, :], secondary, eye)
            return jnp.where(mask, jnp.linalg.solve(block, jnp.where(mask, target, 0.0)), 0.0)

        mask, multipliers = _shrink_to_positive(tight, guess)
        mask = mask & jnp.all(jnp.isfinite(multipliers))
        warm = run(jnp.where(mask, multipliers, 0.0), mask)
        result = jax.lax.cond(warm.done & warm.feasible, lambda: warm, cold)
    feasible = result.feasible
    return jnp.where(feasible, result.multipliers, 0.0), feasible, result.active & feasible
