"""Krum and Multi-Krum: the gradients nearest their neighbours (Blanchard et al., 2017)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

from covjax._src.base import GRAMIAN, Weighting, stateless


def _concrete(value: int | Array) -> bool:
    return not isinstance(value, jax.core.Tracer)


def krum(n_byzantine: int | Array, n_selected: int | Array = 1, squared: bool = True) -> Weighting:
    """Krum / Multi-Krum, "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent".

    A robust aggregator: up to f = ``n_byzantine`` of the K gradients may be
    arbitrary (adversarial, corrupted, or simply outlying losses). Each
    gradient is scored by its distances to its K − f − 2 nearest other
    gradients, and the m = ``n_selected`` best-scored ones are averaged::

        s(i) = Σ_{j ∈ N_i} ‖g_i − g_j‖²,     N_i: the K − f − 2 nearest j ≠ i,
        w_i = 1/m if s(i) is among the m smallest scores, else 0.

    Distances come from the Gramian: ‖g_i − g_j‖² = G_ii + G_jj − 2G_ij
    (clamped at 0). m = 1 is Krum, m > 1 Multi-Krum. The weights are ≥ 0
    and sum to 1; ties in a score go to the lower index.

    Args:
      n_byzantine: f ≥ 0, the number of gradients that may be adversarial;
        K ≥ f + 3 is required (checked while ``update`` is traced, when f
        is concrete).
      n_selected: m ≥ 1 (≤ K), how many gradients are averaged.
      squared: score with squared distances (default, the paper's s(i));
        ``False`` sums the distances themselves, as TorchJD's ``Krum`` does.

    f and m may be traced (``jax.vmap`` over them): the neighbourhoods and
    the selection are masks over sorted distances and ranks, not slices.

    Precision: a distance from the Gramian carries the round-off of G's
    entries, ~K·eps·max‖g‖² absolute; gradients closer than ~√eps·‖g‖
    (float32: 3e-4 relative) are not told apart reliably.

    Degenerate input: identical gradients have distance 0 (any of them may
    be chosen: the direction is the same); zero gradients are ordinary
    points at the origin.

    References:
      Blanchard, El Mhamdi, Guerraoui & Stainer, "Machine Learning with
      Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017,
      https://papers.nips.cc/paper/6617 (Krum; Multi-Krum in §5); El Mhamdi,
      Guerraoui & Rouault, ICML 2018, https://arxiv.org/abs/1802.07927;
      TorchJD's ``Krum``, https://github.com/TorchJD/torchjd.
    """
    if _concrete(n_byzantine) and int(n_byzantine) < 0:
        raise ValueError(f"covjax.krum: n_byzantine must be ≥ 0, got {n_byzantine}")
    if _concrete(n_selected) and int(n_selected) < 1:
        raise ValueError(f"covjax.krum: n_selected must be ≥ 1, got {n_selected}")

    def weights_fn(losses: Array, gramian: Array | None) -> Array:
        assert gramian is not None  # make_weighting checks it
        k = losses.shape[0]
        if _concrete(n_byzantine) and k < int(n_byzantine) + 3:
            raise ValueError(
                f"covjax.krum: {k} losses are too few for n_byzantine={n_byzantine}; Krum "
                "needs K ≥ n_byzantine + 3."
            )
        if _concrete(n_selected) and int(n_selected) > k:
            raise ValueError(f"covjax.krum: n_selected={n_selected} exceeds the {k} losses.")
        symmetric = 0.5 * (gramian + gramian.T)
        norms_sq = jnp.diagonal(symmetric)
        distances_sq = jnp.maximum(norms_sq[:, None] + norms_sq[None, :] - 2.0 * symmetric, 0.0)
        distances = distances_sq if squared else jnp.sqrt(distances_sq)
        # Every gradient's own distance (0) is forced first, so the K − f − 2
        # columns after it are its nearest others.
        eye = jnp.eye(k, dtype=bool)
        ordered = jnp.sort(jnp.where(eye, -jnp.inf, distances), axis=1)
        column = jnp.arange(k)
        neighbours = (column >= 1) & (column <= k - n_byzantine - 2)
        scores = jnp.sum(jnp.where(neighbours[None, :], ordered, 0.0), axis=1)
        rank = jnp.argsort(jnp.argsort(scores, stable=True), stable=True)
        selected = rank < n_selected
        return jnp.where(selected, 1.0, 0.0).astype(gramian.dtype) / jnp.asarray(
            n_selected, gramian.dtype
        )

    return stateless(
        weights_fn,
        name="krum",
        requires={GRAMIAN},
        weights_sum="1",
        loss_scale="no",
    )
