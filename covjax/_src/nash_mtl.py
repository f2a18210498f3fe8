"""Nash-MTL: multi-task learning as a bargaining game (Navon et al., ICML 2022)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from covjax._src.base import GRAMIAN, AggregatorPromises, Weighting, make_weighting
from covjax._src.gramian import normalized_gramian, uniform_weights
from covjax._src.solvers import MAX_NASH_WEIGHT, NEWTON_CONVERGED, nash_bargaining


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
        1/rms‖g‖; 1/√(K·eps) ≈ 1e3 in float32, where the Gramian's rounding
        outweighs the improvements 1/α it must resolve), it is redone with
        G + r·mean(diag G)·I, r = max(ridge, 4·K·eps) (above that rounding),
        whose weights are bounded by about 1/√r (instead of diverging).
      tol: stop when the squared Newton decrement λ² falls below this.

    Promises (``properties.promises``): permutation-invariant and strongly
    stationary (d = 0 needs Jᵀ1 = 0, even with the ridge). Not promised
    non-conflicting, although the paper's d is (⟨g_i, d⟩ = 1/α_i > 0): with
    0 in the convex hull of the gradients there is no solution, and the
    ridge's improvements 1/α_i − r·α_i can be slightly negative (by ≈ 1e-3 of
    ‖g_i‖² on TorchJD's strongly stationary matrices).

    Accuracy: the solve converges to float32 round-off, so α is exact to
    about cond(G)·eps(float32) relative (1e-6 for well-conditioned gradients,
    ~1e-3 for K = 32 gradients spread over two decades of scale).

    Dead losses get α_i = 0 (their utility cannot be improved); all dead:
    uniform. The authors' ``max_norm`` gradient clipping belongs to the
    optimiser (e.g. ``optax.clip_by_global_norm``) and is not applied here.

    References:
      Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya,
      "Multi-Task Learning as a Bargaining Game", ICML 2022,
      https://arxiv.org/abs/2202.01017; authors' code
      https://github.com/AvivNavon/nash-mtl.
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
        g = normalized_gramian(gramian)
        eye = jnp.eye(k, dtype=g.gramian.dtype)
        both = g.live[:, None] & g.live[None, :]
        # Dead losses are decoupled (identity rows): their α is discarded below.
        system = jnp.where(both, g.gramian, eye)
        alpha, decrement_sq = nash_bargaining(system, state.alpha, max_iters, tol)
        # (Gα)_i must resolve the improvements 1/α_i, but the rounded Gramian moves it
        # by ≈ K·eps·α: beyond α = 1/√(K·eps) (≈ 1e3 in float32) the "solution" is the
        # rounding's, e.g. on gradients with 0 inside their hull, where none exists.
        eps = jnp.finfo(g.gramian.dtype).eps
        credible = jnp.minimum(MAX_NASH_WEIGHT, 1.0 / jnp.sqrt(k * eps))
        solved = (decrement_sq < NEWTON_CONVERGED) & jnp.all(alpha < credible)
        # The ridge must dominate that rounding too (4·K·eps: 3e-6 in float32 at K = 6).
        regularized = system + jnp.maximum(ridge, 4.0 * k * eps) * eye
        alpha = jax.lax.cond(
            solved,
            lambda: alpha,
            lambda: nash_bargaining(regularized, state.alpha, max_iters, tol)[0],
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
        return jnp.where(ok, weights, uniform_weights(k)), NashMTLState(
            jnp.where(ok, alpha, state.alpha)
        )

    return make_weighting(
        init_fn,
        update_fn,
        name="nash_mtl",
        requires={GRAMIAN},
        weights_sum="free",
        loss_scale="compensated",
        # ⟨g_i, d⟩ = 1/α_i > 0 where a solution exists; on weakly stationary J (0 in the
        # hull) none does and the ridge's answer may conflict by ridge·α_i (see `ridge`).
        # d = 0 needs (G + rI)α = 1/α with Gα = 0, i.e. Jᵀ1 = 0: strongly stationary.
        promises=AggregatorPromises(permutation_invariant=True, strongly_stationary=True),
    )
