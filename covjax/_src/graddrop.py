"""GradDrop: gradient sign dropout (Chen et al., NeurIPS 2020)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from covjax._src.base import DIRECTION, FEATURE_MAPS, JACOBIAN, Weighting, make_weighting


class GradDropState(NamedTuple):
    """PRNG key of the per-coordinate uniform draws (uint32[2], split every step)."""

    key: Array


class SignSums(NamedTuple):
    """Per-coordinate sums over the losses of the gradients' positive and negative parts."""

    positive: Array  # (P,) Σ_i max(g_i, 0)
    negative: Array  # (P,) Σ_i min(g_i, 0)
    leaked: Array  # (P,) Σ_i ℓ_i g_i
    kept_positive: Array  # (P,) Σ_i (1 − ℓ_i) max(g_i, 0)
    kept_negative: Array  # (P,) Σ_i (1 − ℓ_i) min(g_i, 0)


def sign_sums(jacobian: Array, leaks: Array) -> SignSums:
    """One pass over the Jacobian's rows (a scan: XLA:CPU reduces a (K, P) array over K
    some 30× slower than it adds K rows of P, and this never forms a K×P temporary).

    ``leaks``: (K,), or a scalar shared by every loss; then only the positive
    and negative parts are accumulated (2 running sums instead of 5, each
    read and written once per row) and the others are their multiples.
    """
    if jnp.ndim(leaks) == 0:

        def add_signs(sums: tuple[Array, Array], row: Array) -> tuple[tuple[Array, Array], None]:
            return (sums[0] + jnp.maximum(row, 0.0), sums[1] + jnp.minimum(row, 0.0)), None

        zeros = jnp.zeros_like(jacobian[0])
        positive, negative = jax.lax.scan(add_signs, (zeros, zeros), jacobian)[0]
        kept = 1.0 - leaks
        return SignSums(
            positive, negative, leaks * (positive + negative), kept * positive, kept * negative
        )

    def add_row(sums: SignSums, row_and_leak: tuple[Array, Array]) -> tuple[SignSums, None]:
        row, leak = row_and_leak
        positive, negative = jnp.maximum(row, 0.0), jnp.minimum(row, 0.0)
        return SignSums(
            sums.positive + positive,
            sums.negative + negative,
            sums.leaked + leak * row,
            sums.kept_positive + (1.0 - leak) * positive,
            sums.kept_negative + (1.0 - leak) * negative,
        ), None

    zeros = jnp.zeros_like(jacobian[0])
    return jax.lax.scan(add_row, SignSums(*[zeros] * 5), (jacobian, leaks))[0]


def purity(signed: Array, magnitude: Array) -> Array:
    """The Gradient Positive Sign Purity ½ (1 + Σ_i g_i / Σ_i |g_i|) from its two sums, ½ where
    the magnitude Σ_i |g_i| is 0."""
    live = magnitude > 0
    return 0.5 * (1.0 + jnp.where(live, signed / jnp.where(live, magnitude, 1.0), 0.0))


def sign_purity(sums: SignSums) -> Array:
    """(P,) the purity of each coordinate (:func:`purity`) from its sign sums."""
    return purity(sums.positive + sums.negative, sums.positive - sums.negative)


def uniform_draws(key: Array, num_params: int, dtype: jnp.dtype) -> tuple[Array, Array]:
    """A fresh key and the step's (P,) uniform draws U ~ U[0, 1) (one per coordinate)."""
    next_key, draw_key = jax.random.split(key)
    return next_key, jax.random.uniform(draw_key, (num_params,), dtype)


def batch_separated_direction(
    jacobian: Array,
    feature_maps: list[Array],
    leaks: Array,
    uniform: Array,
    transform: Callable[[Array], Array],
) -> Array:
    """The paper's Algorithm 1 on activations A (batch axis first): the direction (P,).

    Per feature f of each map (pooled over the batch b): the signed gradients
    𝒢_if = Σ_b sign(A_bf) ∂L_i/∂A_bf, the purity P_f = ½ (1 + Σ_i 𝒢_if / Σ_i abs(𝒢_if))
    (½ where every 𝒢_if is 0), one draw U_f, M_if = [f(P_f) > U_f]·[𝒢_if > 0] +
    [f(P_f) < U_f]·[𝒢_if < 0], and d_bf = Σ_i (ℓ_i + (1 − ℓ_i) M_if) ∂L_i/∂A_bf.
    ``uniform``: the draws, one per feature of the maps in order.
    """
    k = jacobian.shape[0]
    pieces = []
    column = feature = 0
    for z in feature_maps:
        examples, features = z.shape[0], z.size // z.shape[0]
        rows = jacobian[:, column : column + z.size].reshape(k, examples, features)
        signed = jnp.einsum(
            "kbf,bf->kf", rows, jnp.sign(z.reshape(examples, features)).astype(rows.dtype)
        )
        threshold = transform(purity(jnp.sum(signed, axis=0), jnp.sum(jnp.abs(signed), axis=0)))
        draws = uniform[feature : feature + features]
        kept = (threshold > draws) & (signed > 0) | (threshold < draws) & (signed < 0)
        factors = leaks[:, None] + (1.0 - leaks[:, None]) * kept.astype(rows.dtype)
        pieces.append(jnp.einsum("kf,kbf->bf", factors, rows).reshape(-1))
        column += z.size
        feature += features
    return jnp.concatenate(pieces)


def graddrop(
    leak: float | Array = 0.0,
    purity_transform: Callable[[Array], Array] | None = None,
    seed: int = 0,
    batch_separated: bool = False,
) -> Weighting:
    """GradDrop, "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient
    Sign Dropout" (Chen et al., NeurIPS 2020), on the per-loss gradients.

    The gradient combination of the paper's Algorithm 1 (lines 10–15), as
    TorchJD's ``GradDrop``: per parameter coordinate p, the sign purity
    P_p = ½ (1 + Σ_i g_ip / Σ_i abs(g_ip)) ∈ [0, 1] and one uniform draw U_p::

        M_ip = [f(P_p) > U_p]·[g_ip > 0] + [f(P_p) < U_p]·[g_ip < 0]
        d_p  = Σ_i (ℓ_i + (1 − ℓ_i) M_ip) g_ip

    so each coordinate keeps, at random with probability f(P_p), only its
    positive or only its negative gradient components. Not a weighted sum of
    the gradients: the scheme returns the direction (``requires`` holds
    :data:`covjax.DIRECTION`); the weights, 1 each (they sum to K: with ℓ = 1
    the direction is Σ_i g_i), weigh the losses for every other parameter.
    The draws come from a PRNG key in the state, split every step: the same
    seed and inputs give the same direction, jitted or not.

    Any finite losses and gradients are used; a step with a non-finite one is
    rejected (zero direction, key unchanged). A coordinate where every
    gradient is 0 gets 0 (its purity is set to ½ instead of 0/0).

    Args:
      leak: ℓ, a scalar or (K,) in [0, 1]: how much of each gradient passes
        whatever its sign (0: none, the paper's default and LibMTL's; 1: the
        plain sum). May be traced (e.g. ``jax.vmap`` over it).
      purity_transform: f, monotonically increasing on [0, 1] (default the
        identity, as in the paper's experiments and TorchJD).
      seed: seed of the PRNG key kept in the state.
      batch_separated: the paper's form on activations (Algorithm 1 with
        "batch-separated" inputs, as LibMTL's ``GradDrop``): the Jacobian is
        w.r.t. feature maps A (``value_and_grad(..., wrt=nnx.Perturbation)``
        or ``feature_maps=True``; ``requires`` holds
        :data:`covjax.FEATURE_MAPS`), each gradient is multiplied by sign(A)
        and summed over the batch (the maps' first axis) before the purity,
        and one draw per feature keeps or drops that feature for every
        example: 𝒢_if = Σ_b sign(A_bf) ∂L_i/∂A_bf, P_f and M_if as above
        from 𝒢, d_bf = Σ_i (ℓ_i + (1 − ℓ_i) M_if) ∂L_i/∂A_bf.

    Where: on the parameter gradients of the selected parameters (``wrt``),
    as TorchJD does, or, as the paper and LibMTL do, on the gradients w.r.t.
    a shared activation z (``covjax.value_and_grad(..., wrt=nnx.Perturbation)``
    with ``z = self.perturb(name, z)``, or ``feature_maps=True`` for a zero
    leaf added to z): then the direction w.r.t. z is pulled back through the
    layers before z, and the heads get ∇ Σ_i L_i; ``batch_separated=True``
    there is the paper's own form.

    Deviations: on an activation, the paper and LibMTL compute the purity
    per feature from the gradients multiplied by the activation's sign and
    summed over the batch and drop a feature for every example at once:
    ``batch_separated=True``; by default covjax computes it per coordinate of
    z (each example's own), the rule above applied to the K rows of z's
    size. Where every 𝒢_if is 0 the purity is ½ (LibMTL adds 1e-7 to the
    denominator instead, which gives ½ there too).

    Cost: one pass over the Jacobian's rows (O(K·P)); ``batch_separated``:
    two (the signed sums, then the masked sum); state: one PRNG key.

    References:
      Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, "Just Pick a
      Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout",
      NeurIPS 2020, https://arxiv.org/abs/2010.06808; TorchJD ``GradDrop``,
      https://github.com/TorchJD/torchjd.
    """
    transform = (lambda value: value) if purity_transform is None else purity_transform

    def init_fn(losses: Array) -> GradDropState:
        if jnp.ndim(leak) not in (0, 1) or (
            jnp.ndim(leak) == 1 and jnp.shape(leak) != losses.shape
        ):
            raise ValueError(
                f"covjax.graddrop: leak has shape {jnp.shape(leak)}; expected a scalar or "
                f"{losses.shape} (one per loss)."
            )
        return GradDropState(jax.random.PRNGKey(seed))

    def update_fn(
        losses: Array, state: GradDropState, count: Array, jacobian: Array | None, *maps: Array
    ) -> tuple[Array, GradDropState, Array]:
        del count
        if batch_separated:
            (feature_maps,) = maps
            num_features = sum(z.size // z.shape[0] for z in feature_maps)
            next_key, uniform = uniform_draws(state.key, num_features, jacobian.dtype)
            leaks = jnp.broadcast_to(jnp.asarray(leak, jacobian.dtype), losses.shape)
            direction = batch_separated_direction(jacobian, feature_maps, leaks, uniform, transform)
            return jnp.ones_like(losses), GradDropState(next_key), direction
        next_key, uniform = uniform_draws(state.key, jacobian.shape[1], jacobian.dtype)
        leaks = jnp.asarray(leak, jacobian.dtype)
        sums = sign_sums(jacobian, leaks)
        threshold = transform(sign_purity(sums))
        # M_ip depends on i only through the sign of g_ip: the kept part of each
        # coordinate is the (1 − ℓ)-weighted sum of its positive or of its negative parts.
        kept = jnp.where(threshold > uniform, sums.kept_positive, 0.0) + jnp.where(
            threshold < uniform, sums.kept_negative, 0.0
        )
        return jnp.ones_like(losses), GradDropState(next_key), sums.leaked + kept

    return make_weighting(
        init_fn,
        update_fn,
        name="graddrop",
        requires={JACOBIAN, DIRECTION, FEATURE_MAPS} if batch_separated else {JACOBIAN, DIRECTION},
        weights_sum="K",
        loss_scale="unchanged",
    )
