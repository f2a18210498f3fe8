"""MGDA / MGDA-UB: the min-norm point of the convex hull of the per-loss gradients.

Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
NeurIPS 2018. The common descent direction of K losses is the minimum-norm
element of the convex hull of their gradients g_i::

    α* = argmin_{α ∈ Δ_K} ‖Σ_i α_i g_i‖² = argmin_{α ∈ Δ_K} αᵀ G α,   G_ij = ⟨g_i, g_j⟩,

and the network is trained on Σ α*_i L_i. Only the K×K Gramian G is needed, so
the gradients may be taken w.r.t. shared parameters (MGDA) or a shared
representation z (MGDA-UB, the upper bound of Sener & Koltun's Theorem 1),
see :mod:`covjax.gradients`.

Solver (:func:`min_norm_solver`), all in-graph (``lax.while_loop``):

1. the best pair: the exact two-vector solution (Sener & Koltun's Algorithm 1)
   for every pair i < j, keeping the smallest norm;
2. Frank–Wolfe from there with the exact line search between the iterate and
   the best vertex (Sener & Koltun's Algorithm 2; ``max_iters`` 250 and a stop
   when the step moves α by less than ``tol`` in ℓ1, as the reference);
0. (with ``refine``) if the minimiser over the whole support, one KKT solve,
   is ≥ 0, it is α* and nothing else runs (common when K is large);
3. Frank–Wolfe converges sublinearly on some faces, so it is finished by an
   exact primal active-set method: on the current support S the KKT system
   ``[G_SS 1; 1ᵀ 0][α_S; ν] = [0; 1]`` is solved (pseudo-inverse, so parallel
   or rank-deficient gradients are fine), infeasible steps are cut at the
   first bound and that index dropped, and the index with the most negative
   multiplier (Gα)_j − αᵀGα is added, until the KKT conditions hold. The
   result is the better of the Frank–Wolfe and active-set points.

The Gramian is symmetrised and scaled by its largest diagonal entry first (α*
is scale invariant), so float32 neither overflows nor underflows.

Degenerate input, documented fallbacks (weights are never NaN): a Gramian with
a NaN/Inf entry gives uniform weights (inside :func:`mgda`, such a step is
rejected by the weighting wrapper and the previous weights are kept); all
gradients zero (max G_ii below the smallest normal float) gives uniform
weights; if some gradient is zero, α* puts all its weight on it (the true
optimum: 0 is in the hull, a Pareto stationary point), so the step
Σ α*_i g_i is 0 and training stalls: see ``zero_gradients`` in :func:`mgda`
and ``excluded`` in :func:`min_norm_solver` for leaving such losses out.

Differences from the reference: the reference computes the gradients on the
first image of the batch only; covjax uses the whole batch. The reference's
two-vector solver returns 0.999/0.001 instead of 1/0 at the ends of the
segment; covjax returns the exact end point.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from covjax import numerics
from covjax.aggregators import live_gradients
from covjax.base import GRAMIAN, Weighting, stateless

Normalization = Literal["none", "l2", "loss", "loss+"]
NORMALIZATIONS: tuple[str, ...] = ("none", "l2", "loss", "loss+")
ZeroGradients = Literal["include", "exclude"]
ZERO_GRADIENTS: tuple[str, ...] = ("include", "exclude")


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


def normalize_gramian(gramian: Array, losses: Array, normalization: Normalization) -> Array:
    """The Gramian of the normalized gradients g_i / n_i (Sener & Koltun's normalizers).

    n_i = 1 (``"none"``), ‖g_i‖ (``"l2"``), L_i (``"loss"``) or L_i‖g_i‖
    (``"loss+"``); G_ij ↦ G_ij / (n_i n_j). A zero normalizer (zero gradient
    or loss) leaves that gradient unscaled.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"covjax.mgda: normalization must be one of {NORMALIZATIONS}, got {normalization!r}."
        )
    norms = jnp.sqrt(jnp.maximum(jnp.diag(gramian), 0.0))
    if normalization == "none":
        return gramian
    if normalization == "l2":
        scale = norms
    elif normalization == "loss":
        scale = losses
    else:
        scale = losses * norms
    inverse = numerics.safe_divide(1.0, jnp.abs(scale), fallback=1.0)
    return gramian * inverse[:, None] * inverse[None, :]


def mgda(
    normalization: Normalization = "none",
    max_iters: int = 250,
    tol: float = 1e-5,
    refine: bool = True,
    zero_gradients: ZeroGradients = "include",
) -> Weighting:
    """MGDA / MGDA-UB (Sener & Koltun, NeurIPS 2018): min-norm simplex weights.

    ``weights, state = scheme.update(losses, state, gramian=G)`` with G the
    Gramian of the per-loss gradients (w.r.t. shared parameters, or a shared
    representation for MGDA-UB); :func:`covjax.value_and_grad` computes it.

    A loss whose gradient w.r.t. the selected parameters is zero (an inactive
    penalty, a loss of one head only under ``wrt="trunk"``) puts 0 in the
    convex hull, so the min-norm point is 0::

        g_j = 0  ⇒  α* = e_j,   Σ_i α*_i g_i = 0,

    and with the default ``zero_gradients="include"`` the selected parameters
    get a zero step, silently, for as long as that gradient stays zero (the
    exact MGDA answer: the point is Pareto stationary). ``"exclude"`` leaves
    such losses out of the min-norm problem::

        Z = {j : ‖g_j‖ ≤ δ·max_i ‖g_i‖},   α* = argmin_{α ∈ Δ_K, α_Z = 0} ‖Σ_i α_i g_i‖²,

    the min-norm point of the hull of the other gradients. δ = 1e-5 ≈ 84·eps32
    (``covjax.aggregators.DEAD_GRADIENT``, the level the other Gramian schemes
    use) lies above what float32 leaves of a gradient that is zero in exact
    arithmetic and far below any gradient that carries signal next to the
    largest; Z is taken on the Gramian before ``normalization``, which would
    scale such a residue up to the others' size. The
    excluded losses get weight 0: their gradient adds nothing to the step
    on the selected parameters, whatever its weight, and 0 keeps Σα = 1 with
    the kept weights exactly the min-norm solution over the kept losses. So
    the parameters only an excluded loss reaches (its head under
    ``wrt="trunk"``) get no gradient from it at that step; include them in
    ``wrt`` to have it weighted like the others. If every gradient is zero the
    weights are uniform, as with ``"include"``.

    Args:
      normalization: gradient normalization before solving: ``"none"``
        (reference), ``"l2"`` g_i/‖g_i‖, ``"loss"`` g_i/L_i, ``"loss+"``
        g_i/(L_i‖g_i‖). The returned α multiply the raw losses, as in the
        reference implementation.
      max_iters, tol, refine: see :func:`min_norm_solver`.
      zero_gradients: ``"include"`` (default, the reference) or ``"exclude"``
        (losses with a zero gradient are left out of the min-norm problem and
        get weight 0), see above.

    Returns:
      A :class:`~covjax.Weighting` (``requires={covjax.GRAMIAN}``) whose weights
      are ≥ 0 and sum to 1.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"covjax.mgda: normalization must be one of {NORMALIZATIONS}, got {normalization!r}."
        )
    if zero_gradients not in ZERO_GRADIENTS:
        raise ValueError(
            f"covjax.mgda: zero_gradients must be one of {ZERO_GRADIENTS}, got {zero_gradients!r}."
        )

    def weights_fn(losses: Array, gramian: Array | None) -> Array:
        assert gramian is not None  # make_weighting checks it
        normalized = normalize_gramian(gramian, losses, normalization)
        # Measured before normalization, which would scale a round-off-sized gradient up.
        excluded = ~live_gradients(gramian) if zero_gradients == "exclude" else None
        return min_norm_solver(
            normalized, max_iters=max_iters, tol=tol, refine=refine, excluded=excluded
        )

    return stateless(
        weights_fn,
        name="mgda",
        requires={GRAMIAN},
        weights_sum="1",
        # g_i/‖g_i‖ and g_i/L_i are free of a loss's scale; g_i and g_i/(L_i‖g_i‖) are not.
        loss_scale="unchanged" if normalization in ("l2", "loss") else "no",
    )
