"""MGDA / MGDA-UB: the min-norm point of the convex hull of the per-loss gradients.

Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
NeurIPS 2018. The common descent direction of K losses is the minimum-norm
element of the convex hull of their gradients g_i::

    α* = argmin_{α ∈ Δ_K} ‖Σ_i α_i g_i‖² = argmin_{α ∈ Δ_K} αᵀ G α,   G_ij = ⟨g_i, g_j⟩,

and the network is trained on Σ α*_i L_i. Only the K×K Gramian G is needed, so
the gradients may be taken w.r.t. shared parameters (MGDA) or a shared
representation z (MGDA-UB, the upper bound of Sener & Koltun's Theorem 1),
see :mod:`covjax._src.gradients`.

Solver (:func:`min_norm_solver`), all in-graph (``lax.while_loop``):

0. (with ``refine``) if the minimiser over the whole support, one KKT solve,
   is ≥ 0, it is α* and nothing else runs (common when K is large);
1. the best pair: the exact two-vector solution (Sener & Koltun's Algorithm 1)
   for every pair i < j, keeping the smallest norm;
2. Frank–Wolfe from there with the exact line search between the iterate and
   the best vertex (Sener & Koltun's Algorithm 2; ``max_iters`` 250 and a stop
   when the step moves α by less than ``tol`` in ℓ1, as the reference);
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

from typing import Literal

import jax.numpy as jnp
from jax import Array

from covjax._src import numerics
from covjax._src.base import GRAMIAN, AggregatorPromises, Weighting, stateless
from covjax._src.gramian import live_gradients
from covjax._src.solvers import min_norm_solver

Normalization = Literal["none", "l2", "loss", "loss+"]


NORMALIZATIONS: tuple[str, ...] = ("none", "l2", "loss", "loss+")


ZeroGradients = Literal["include", "exclude"]


ZERO_GRADIENTS: tuple[str, ...] = ("include", "exclude")


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
    (``DEAD_GRADIENT`` of the shared Gramian utilities, the level the other Gramian schemes
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

    Promises: permutation-invariant; non-conflicting with
    ``normalization="none"`` (⟨g_i, d⟩ ≥ ‖d‖² at the min-norm point; with a
    normalization the weights found for g_i/n_i multiply the raw g_i). Not
    strongly stationary, by design of the method: d = 0 whenever 0 is anywhere
    in the hull (weakly stationary gradients), not only in its interior.

    References:
      Désidéri, "Multiple-gradient descent algorithm (MGDA) for
      multiobjective optimization", C. R. Math. 350 (2012),
      https://doi.org/10.1016/j.crma.2012.03.014; Sener & Koltun, "Multi-Task
      Learning as Multi-Objective Optimization", NeurIPS 2018,
      https://arxiv.org/abs/1810.04650.
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
        # ⟨g_i, d⟩ ≥ ‖d‖² at the min-norm point d of the hull: for the raw gradients only
        # (with a normalization the weights found for g_i/n_i multiply the raw g_i). Not
        # strongly stationary: d = 0 as soon as 0 is anywhere in the hull (weakly
        # stationary), e.g. on a single zero gradient.
        promises=AggregatorPromises(
            non_conflicting=normalization == "none", permutation_invariant=True
        ),
        weights_sum="1",
        # g_i/‖g_i‖ and g_i/L_i are free of a loss's scale; g_i and g_i/(L_i‖g_i‖) are not.
        loss_scale="unchanged" if normalization in ("l2", "loss") else "no",
    )
