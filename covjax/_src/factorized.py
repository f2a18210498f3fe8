"""Gramians of dense layers' per-loss gradients without materialising them.

A parameter W that enters the network only through one matrix product
``y = x · W`` (a Dense kernel, an attention projection, ...) has the per-loss
gradients ∇_W L_i = Xᵀ Δ_i, where X (N×C) is the layer input with all its
non-contracted axes (batch, sequence, ...) flattened to N rows and Δ_i (N×M)
is the cotangent of L_i at the layer output y. Their Gramian block needs
neither the K gradients (K·C·M numbers) nor their K² inner products over C·M
entries:

    ⟨∇_W L_i, ∇_W L_j⟩ = tr(Δ_iᵀ X Xᵀ Δ_j) = Σ_{n,n'} (X Xᵀ)_{nn'} (Δ_i Δ_jᵀ)_{nn'}

costs N²·C + K·N²·M + K²·N·M instead of K·N·C·M + K²·C·M. For LibMTL's MLP
(N = 32 samples, C = M = 512, K = 32) that is 34 M instead of 537 M
multiply-adds per layer. The Δ_i themselves still come from one batched
backward pass (:mod:`covjax._src.gradients`), now stopping at the layer outputs:
the K per-loss weight gradients are never formed.

How the layers are found: from the uses of each selected leaf that the one
walk over the traced program collects (:mod:`covjax._src.program`), every
``dot_general`` whose operand is a selected parameter leaf used nowhere
else (directly or through a transpose, reshape or dtype cast; no batch
dimension on the parameter's side) becomes a *tap*. The function is then
re-evaluated from its jaxpr with a zero perturbation added to each tap's
output, so that the cotangent of that perturbation is Δ_i, and with the
tap's other operand X returned on the side.
Nested ``jit`` calls that receive a tapped parameter are inlined; everything
else is bound unchanged, so the re-evaluated function is the original one.
A tap is used only where the cost model above says it is cheaper; every
other selected leaf (biases, convolution kernels, shared or reused weights)
keeps the materialised per-loss gradient. This is the per-layer identity
behind per-sample-gradient norms (Goodfellow, "Efficient per-example gradient
computations", 2015), applied across losses instead of across samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.extend import core as jex_core

from covjax._src import program


class Tap(NamedTuple):
    """One ``dot_general`` whose parameter operand is a selected leaf.

    Attributes:
      leaf: index of the parameter leaf among the flattened parameters.
      param_is_lhs: whether the parameter is the left operand.
      other_free: the other operand's free (non-contracted) axes, in order.
      other_contracting: the other operand's contracted axes, in the order
        that pairs them with the parameter's.
      out_shape, out_dtype: the product's shape and dtype (the perturbation's).
    """

    leaf: int
    param_is_lhs: bool
    other_free: tuple[int, ...]
    other_contracting: tuple[int, ...]
    out_shape: tuple[int, ...]
    out_dtype: Any

    def sizes(self, other_shape: Sequence[int]) -> tuple[int, int, int]:
        """(N, C, M): rows of X, contracted size, parameter's free size."""
        n = math.prod(other_shape[a] for a in self.other_free)
        c = math.prod(other_shape[a] for a in self.other_contracting)
        return n, c, math.prod(self.out_shape) // n


def _read(env: dict[Any, Any], atom: Any) -> Any:
    return atom.val if isinstance(atom, jex_core.Literal) else env[atom]


def _worth_it(tap: Tap, other_shape: Sequence[int], num_losses: int) -> bool:
    n, c, m = tap.sizes(other_shape)
    k = num_losses
    factorized = n * n * c + k * n * n * m + k * k * n * m
    materialised = k * n * c * m + k * k * c * m
    return factorized < materialised


def find_taps(
    traced: program.TracedProgram,
    candidates: Sequence[bool],
    num_losses: int,
    *,
    always: bool = False,
) -> dict[int, Tap]:
    """The taps among the ``candidates`` leaves of the walked program.

    Returns ``{leaf index: Tap}`` for each candidate used exactly once, as an
    operand of a ``dot_general`` without batch axes, where the factorized
    Gramian is cheaper for ``num_losses`` losses (wherever possible with
    ``always``).
    """
    taps = {}
    for leaf, uses in traced.uses.items():
        eqn, operand = uses[0][:2] if len(uses) == 1 else (None, 0)
        if not candidates[leaf] or eqn is None or eqn.primitive is not jax.lax.dot_general_p:
            continue
        other = eqn.invars[1 - operand]
        if other is eqn.invars[operand]:
            continue  # W · W
        (lhs_contract, rhs_contract), batch_axes = eqn.params["dimension_numbers"]
        if any(batch_axes):
            continue  # per-batch-slice parameters: no single X Xᵀ
        other_contracting = tuple(rhs_contract if operand == 0 else lhs_contract)
        other_free = tuple(a for a in range(other.aval.ndim) if a not in other_contracting)
        out = eqn.outvars[0].aval
        tap = Tap(leaf, operand == 0, other_free, other_contracting, out.shape, out.dtype)
        if always or _worth_it(tap, other.aval.shape, num_losses):
            taps[leaf] = tap
    return taps


def _evaluate(
    jaxpr: Any,
    consts: Sequence[Any],
    args: Sequence[Any],
    leaf_of: dict[Any, int],
    taps: dict[int, Tap],
    perturbations: dict[int, Array],
    tapped_inputs: dict[int, Array],
) -> list[Any]:
    """``jax.core.eval_jaxpr`` plus the taps: perturbed outputs, recorded inputs."""
    env: dict[Any, Any] = {}
    for var, value in zip(jaxpr.constvars, consts, strict=True):
        env[var] = value
    for var, value in zip(jaxpr.invars, args, strict=True):
        env[var] = value
    for eqn in jaxpr.eqns:
        invals = [_read(env, var) for var in eqn.invars]
        tracked = {
            position: leaf_of[var]
            for position, var in enumerate(eqn.invars)
            if isinstance(var, jex_core.Var) and var in leaf_of
        }
        body = program.jit_body(eqn) if tracked else None
        if tracked and eqn.primitive in program.LAYOUT_PRIMITIVES:
            leaf_of = {**leaf_of, eqn.outvars[0]: next(iter(tracked.values()))}
        if body is not None:
            inner = {body.jaxpr.invars[p]: leaf for p, leaf in tracked.items()}
            outvals = _evaluate(
                body.jaxpr, body.consts, invals, inner, taps, perturbations, tapped_inputs
            )
        else:
            bind_params = eqn.primitive.get_bind_params(eqn.params)
            with eqn.ctx.manager:
                outvals = eqn.primitive.bind(*invals, **bind_params)
            if not eqn.primitive.multiple_results:
                outvals = [outvals]
            if eqn.primitive is jax.lax.dot_general_p:
                # Both operands may be tapped parameters (W₁ · W₂): each gets
                # its own perturbation, whose cotangent is the product's.
                for leaf in (leaf for leaf in tracked.values() if leaf in taps):
                    tapped_inputs[leaf] = invals[1 if taps[leaf].param_is_lhs else 0]
                    outvals = [outvals[0] + perturbations[leaf]]
        for var, value in zip(eqn.outvars, outvals, strict=True):
            env[var] = value
    return [_read(env, var) for var in jaxpr.outvars]


def tapped_function(
    closed: Any, taps: dict[int, Tap]
) -> Callable[[Sequence[Array], dict[int, Array]], tuple[list[Any], dict[int, Array]]]:
    """``f(leaves, perturbations) -> (outputs, {leaf: X})`` re-evaluating ``closed`` with taps."""
    jaxpr = closed.jaxpr
    leaf_of = {jaxpr.invars[leaf]: leaf for leaf in taps}

    def run(leaves: Sequence[Array], perturbations: dict[int, Array]):
        tapped_inputs: dict[int, Array] = {}
        outputs = _evaluate(
            jaxpr, closed.consts, leaves, leaf_of, taps, perturbations, tapped_inputs
        )
        return outputs, tapped_inputs

    return run


def zero_perturbations(taps: dict[int, Tap]) -> dict[int, Array]:
    return {leaf: jnp.zeros(tap.out_shape, tap.out_dtype) for leaf, tap in taps.items()}


def find_row_taps(traced: program.TracedProgram, candidates: Sequence[bool]) -> dict[int, Tap]:
    """The taps among the ``candidates`` leaves whose per-loss gradients :func:`tap_rows` forms.

    Those of every factorisable kernel (:func:`find_taps`) read directly (no
    transpose or reshape on the way) with its contracted axes first and in
    order when it is the right operand (``x @ W``), last when it is the left
    one (``W @ x``): then its K gradients Xᵀ Δ_i come out of one batched
    product already in the leaf's layout, where the batched backward pass
    forms them transposed and copies them over (on CPU, that copy of all
    K × P numbers costs more than the product).
    """
    taps = find_taps(traced, candidates, num_losses=1, always=True)
    return {leaf: tap for leaf, tap in taps.items() if _rows_in_leaf_layout(traced.uses[leaf][0])}


def _rows_in_leaf_layout(use: program.Use) -> bool:
    if use.relaid:
        return False
    (lhs_contracting, rhs_contracting), _ = use.eqn.params["dimension_numbers"]
    contracting = tuple(lhs_contracting if use.operand == 0 else rhs_contracting)
    ndim = use.eqn.invars[use.operand].aval.ndim
    free = tuple(a for a in range(ndim) if a not in contracting)
    order = free + contracting if use.operand == 0 else contracting + free
    return order == tuple(range(ndim))


def tap_rows(tap: Tap, other: Array, output_cotangents: Array, leaf: Array) -> Array:
    """The (K, *leaf.shape) per-loss gradients Xᵀ Δ_i of a tap from :func:`find_row_taps`.

    ``output_cotangents`` as for :func:`tap_gramian`; the rows come in
    ``leaf``'s dtype, as the batched backward pass gives them.
    """
    k = output_cotangents.shape[0]
    n, c, m = tap.sizes(other.shape)
    x = _input_rows(tap, other)
    highest = jax.lax.Precision.HIGHEST
    if tap.param_is_lhs:  # W (M, C), product W Xᵀ (M, N): ∇_W L_i = Δ_i X
        deltas = output_cotangents.reshape(k, m, n).astype(x.dtype)
        rows = jnp.matmul(deltas, x, precision=highest)  # (K, M, C): no batch axis needed
    else:  # W (C, M), product X W (N, M): ∇_W L_i = Xᵀ Δ_i; batched, so that K comes first
        deltas = output_cotangents.reshape(k, n, m).astype(x.dtype)
        rows = jnp.matmul(jnp.broadcast_to(x.T, (k, c, n)), deltas, precision=highest)
    return rows.reshape(k, *leaf.shape).astype(leaf.dtype)


def _input_rows(tap: Tap, other: Array) -> Array:
    """X (N×C, float32 or wider): the tap's other operand, free axes first, flattened."""
    n, c, _ = tap.sizes(other.shape)
    dtype = jnp.promote_types(other.dtype, jnp.float32)
    return jnp.transpose(other, tap.other_free + tap.other_contracting).reshape(n, c).astype(dtype)


def _rows_and_cotangents(tap: Tap, other: Array, output_cotangents: Array) -> tuple[Array, Array]:
    """X as (N, C) and the K cotangents Δ_i as (K, N, M), float32 or wider."""
    k = output_cotangents.shape[0]
    n, _, m = tap.sizes(other.shape)
    x = _input_rows(tap, other)
    dtype = x.dtype
    # The product's axes are (lhs free..., rhs free...): X's free axes come
    # first when the parameter is the right operand, last when it is the left.
    num_other = len(tap.other_free)
    num_param = len(tap.out_shape) - num_other
    if tap.param_is_lhs:
        order = (0, *range(1 + num_param, 1 + num_param + num_other), *range(1, 1 + num_param))
        deltas = jnp.transpose(output_cotangents, order)
    else:
        deltas = output_cotangents
    return x, deltas.reshape(k, n, m).astype(dtype)


def tap_gramian(
    tap: Tap,
    other: Array,
    output_cotangents: Array,
    other_b: Array | None = None,
    output_cotangents_b: Array | None = None,
) -> Array:
    """The K×K Gramian block of one tapped parameter, from X and the K cotangents Δ_i.

    ``output_cotangents`` is (K, *tap.out_shape), row i the cotangent of L_i
    at the product's output, axes in the product's own order. With a second
    batch's ``other_b`` and ``output_cotangents_b`` (same shapes), the block
    of the cross-Gramian J_a J_bᵀ: Σ (X_a X_bᵀ) ⊙ (Δ_a,i Δ_b,jᵀ), over the
    a-b example pairs only.
    """
    x_a, deltas_a = _rows_and_cotangents(tap, other, output_cotangents)
    if other_b is None or output_cotangents_b is None:
        x_b, deltas_b = x_a, deltas_a
    else:
        x_b, deltas_b = _rows_and_cotangents(tap, other_b, output_cotangents_b)
    highest = jax.lax.Precision.HIGHEST
    sample_gram = jnp.matmul(x_a, x_b.T, precision=highest)  # X_a X_bᵀ, N×N
    mixed = jnp.einsum("nq,kqm->knm", sample_gram, deltas_b, precision=highest)
    return jnp.einsum("inm,jnm->ij", deltas_a, mixed, precision=highest)
