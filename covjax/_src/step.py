"""``covjax.value_and_grad``: losses → weights → weighted sum → gradient, in one pass.

For a loss-statistics scheme the whole step is one forward and one backward
pass: the forward pass gives the K losses, the scheme turns them into weights,
and the backward pass is a single vector–Jacobian product with the weights as
cotangent, which is exactly ∇ Σ stop_gradient(α_i) L_i.

Gradient-based schemes (``covjax.GRAMIAN in scheme.requires``) additionally need the
per-loss gradients; :mod:`covjax._src.gradients` computes them in one batched
backward pass and hands the scheme their Gramian. Schemes that need the
per-loss gradients themselves (``covjax.JACOBIAN in scheme.requires``) get the
K×P Jacobian J of the selected leaves (row i = ∇L_i, leaves flattened in
``jax.tree.leaves`` order and concatenated); a ``covjax.DIRECTION`` scheme's
direction d then replaces the gradient of those leaves, while its weights
α weigh the losses for every other parameter::

    grads[selected] = d,    grads[other] = ∇_other Σ α_i L_i.

The call looks the same, so switching scheme is a one-line change.

Works on plain parameter pytrees and on Flax NNX modules (gradients w.r.t. the
module's ``nnx.Param`` variables; other variables, e.g. batch statistics,
updated in place as ``nnx.grad`` would).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from covjax._src import gradients
from covjax._src import nnx_support as _nnx
from covjax._src.base import (
    DIRECTION,
    GRAMIAN,
    JACOBIAN,
    Aggregation,
    Losses,
    PyTree,
    Weighting,
    WeightingState,
    Weights,
    flatten_losses,
    step_accepted,
    weighted_sum,
)


class WeightedLosses(NamedTuple):
    """What a covjax step returns besides the gradients.

    Attributes:
      total: Σ α_i L_i, the objective that was differentiated.
      losses: the K losses, in the structure ``loss_fn`` returned.
      weights: the K weights, same structure (log them by name with
        :func:`covjax.named`).
      state: the new weighting state.
      accepted: boolean scalar, whether the scheme accepted this step's
        losses (and Gramian). False when a loss or a Gramian entry was NaN or
        ±Inf, a loss was a value the scheme cannot use, or the scheme's
        update would have given a non-finite weight; then the weighting
        state is returned unchanged, ``weights`` are those of the last
        accepted step (uniform before any), and the caller must not
        apply the update: the gradients are those of a rejected objective,
        usually non-finite. :func:`covjax.apply_if_accepted` wraps an optax
        optimiser so that ``update(..., accepted=out.accepted)`` does that.
      aux: auxiliary output of ``loss_fn`` when ``has_aux=True``, else None.
    """

    total: Array
    losses: Losses
    weights: Weights
    state: WeightingState
    accepted: Array
    aux: Any = None


LossFn = Callable[..., Any]


def value_and_grad(
    loss_fn: LossFn,
    scheme: Weighting,
    *,
    has_aux: bool = False,
    wrt: Any = None,
    chunk_size: int | None = None,
    representation: LossFn | None = None,
    representation_copies: bool = False,
    factorize: gradients.Factorize = "auto",
    group_losses: bool = True,
) -> Callable[..., tuple[WeightedLosses, PyTree]]:
    """Make ``step(params, weighting_state, *args) -> (WeightedLosses, grads)``.

    Args:
      loss_fn: ``loss_fn(params, *args, **kwargs)`` returning the losses (a
        1-D array or a pytree of scalars), or ``(losses, aux)`` with
        ``has_aux=True``. ``params`` may be a pytree or an ``nnx.Module``.
        With ``representation``, ``loss_fn(params, z, *args, **kwargs)``.
      scheme: any :class:`~covjax.Weighting`.
      has_aux: whether ``loss_fn`` returns ``(losses, aux)``.
      wrt: gradient-based schemes only: which parameters the per-loss
        gradients (and so the Gramian or the Jacobian; a DIRECTION scheme's
        direction is their gradient) are taken with respect to (a path
        regex, a predicate, an NNX filter; see :mod:`covjax._src.gradients`).
        ``None`` means all (or all of z with ``representation``).
      chunk_size: gradient-based schemes only: how many per-loss gradients
        are materialised at once (bounds memory; ``1`` is sequential).
      representation: ``representation(params, *args, **kwargs) -> z``, the
        shared part of the network; the per-loss gradients are then taken
        w.r.t. z (MGDA-UB) and cost only a backward pass through
        ``loss_fn``'s heads. The parameter gradient is still one weighted
        backward pass through heads and representation.
      representation_copies: with ``representation``, hand ``loss_fn`` one
        copy of z per loss instead of z, and promise that each loss reads only
        its own copy (the task-specific copies of LibMTL's ``rep_grad``). The
        copies are laid out like the losses: stacked on a new leading axis of
        length K for a 1-D array of losses (``heads[i](z[i])``), the same dict
        for a dict of losses (``depth_head(z["depth"])``). Then ∂L_i/∂z is the
        i-th slice of ONE backward pass of Σ L_i instead of a batched
        backward pass of all heads per loss: MGDA-UB costs about a static
        step. A loss that reads another copy gets a wrong Gramian.
      factorize: gradient-based schemes only: ``"auto"`` takes the Gramian
        block of each selected Dense-style kernel from its layer's input and
        output cotangents instead of its K per-loss gradients, where that is
        cheaper (:mod:`covjax._src.factorized`; same result); ``"always"`` wherever
        possible; ``"never"`` always materialises the per-loss gradients.
      group_losses: gradient-based schemes only: for a pytree of scalar
        losses, pull back separately the groups of losses that reach different
        layers (monodepth's scales, a task's own head), each through a
        backward pass pruned to those layers, where that is cheaper
        (:mod:`covjax._src.loss_groups`; same result).

    Returns:
      A function with the signature above; ``grads`` has the structure of
      ``params`` (an ``nnx.State`` of the ``nnx.Param`` variables for a
      module) and equals ∇ Σ α_i L_i (for a DIRECTION scheme, the
      direction on the ``wrt`` leaves). ``WeightedLosses.weights`` are the α_i.
    """
    gradients._validate_chunk_size(chunk_size)
    if representation is not None and not callable(representation):
        raise TypeError(
            "covjax.value_and_grad: representation must be a function "
            f"representation(params, *args) -> z, got {representation!r}."
        )
    if factorize not in gradients.FACTORIZE_MODES:
        raise ValueError(
            f"covjax.value_and_grad: factorize must be one of {gradients.FACTORIZE_MODES}, "
            f"got {factorize!r}."
        )
    if representation_copies and representation is None:
        raise ValueError("covjax.value_and_grad: representation_copies needs a representation.")
    needs_gramian = GRAMIAN in scheme.requires
    needs_jacobian = JACOBIAN in scheme.requires
    gives_direction = DIRECTION in scheme.requires
    if needs_jacobian and representation is not None:
        raise ValueError(
            "covjax.value_and_grad: a scheme that requires the JACOBIAN takes it w.r.t. "
            "parameters (wrt=), not with representation=."
        )

    def step(params: Any, state: WeightingState, *args: Any, **kwargs: Any):
        if _nnx.is_module(params):
            return _module_step(params, state, args, kwargs)
        return _pytree_step(params, state, args, kwargs)

    def _split_output(output: Any) -> tuple[Losses, Any]:
        return gradients.split_output(output, has_aux)

    def _weigh(
        losses: Losses, state: WeightingState, gramian: Callable[[], Array] | None
    ) -> tuple[Weights, WeightingState]:
        """The scheme's weights (constants for the backward pass); ``gramian()`` if it needs G."""
        if needs_gramian:
            weights, new_state = scheme.update(losses, state, gramian=gramian())
        else:
            weights, new_state = scheme.update(losses, state)
        return jax.lax.stop_gradient(weights), new_state

    def _weigh_and_pull_back(
        head_fn: Callable[..., tuple[Losses, Any]],
        encode_fn: Callable[[PyTree], tuple[PyTree, Any]] | None,
        params: PyTree,
        state: WeightingState,
    ) -> tuple[WeightedLosses, PyTree]:
        """One forward, (per-loss gradients,) one weighted backward.

        Without a representation ``head_fn(params)`` gives ``(losses, aux)``;
        with one, ``encode_fn(params)`` gives ``(z, encoder_aux)`` and
        ``head_fn(params, z, encoder_aux)`` gives ``(losses, aux)``.
        """
        if encode_fn is None and needs_jacobian:
            losses, vjp_fn, aux = jax.vjp(head_fn, params, has_aux=True)
            mask, _ = gradients.select_leaves(params, wrt)
            jacobian = gradients.flat_jacobian(
                gradients.per_loss_rows(vjp_fn, losses, mask, chunk_size)
            )
            output, new_state = scheme.update(losses, state, jacobian=jacobian)
            weights = jax.lax.stop_gradient(
                output.weights if isinstance(output, Aggregation) else output
            )
            (grads,) = vjp_fn(_cotangent(weights, losses))
            if gives_direction:
                grads = gradients.replace_selected(grads, mask, output.direction)
        elif encode_fn is None:
            if needs_gramian:
                losses, vjp_fn, aux, gramian = gradients.vjp_and_gramian(
                    head_fn,
                    params,
                    wrt=wrt,
                    chunk_size=chunk_size,
                    factorize=factorize,
                    group_losses=group_losses,
                )
            else:
                losses, vjp_fn, aux = jax.vjp(head_fn, params, has_aux=True)
                gramian = None
            weights, new_state = _weigh(losses, state, gramian)
            (grads,) = vjp_fn(_cotangent(weights, losses))
        else:
            z, encode_vjp, encoder_aux = jax.vjp(encode_fn, params, has_aux=True)
            structure = state.structure
            head_input = (
                gradients.representation_copies(z, structure) if representation_copies else z
            )
            losses, head_vjp, aux = jax.vjp(
                lambda p, rep: head_fn(p, rep, encoder_aux), params, head_input, has_aux=True
            )
            per_loss_z_vjp = lambda cotangent: (head_vjp(cotangent)[1],)  # noqa: E731
            if representation_copies and needs_gramian:
                # One pull-back of Σ L_i: copy i receives ∂L_i/∂z.
                (per_copy,) = per_loss_z_vjp(jax.tree.map(jnp.ones_like, losses))
                stacked = gradients.stacked_copy_gradients(per_copy, structure)
                weights, new_state = _weigh(
                    losses,
                    state,
                    lambda: gradients.gramian_of_jacobian(
                        gradients.jacobian_from_copies(stacked, wrt=wrt)
                    ),
                )
                # Σ w_i ∂L_i/∂z from the rows at hand; the weighted pull-back
                # below is then needed for the heads' parameters only.
                vector = flatten_losses(weights)[0]
                head_grads, _ = head_vjp(_cotangent(weights, losses))
                z_cotangent = jax.tree.map(
                    lambda leaf: jnp.tensordot(vector.astype(leaf.dtype), leaf, axes=1), stacked
                )
            else:
                weights, new_state = _weigh(
                    losses,
                    state,
                    lambda: gradients.gramian_of_function(
                        lambda rep: head_fn(params, rep, encoder_aux)[0],
                        z,
                        losses,
                        per_loss_z_vjp,
                        wrt=wrt,
                        chunk_size=chunk_size,
                        group_losses=group_losses,
                    ),
                )
                head_grads, z_cotangent = head_vjp(_cotangent(weights, losses))
                if representation_copies:
                    z_cotangent = jax.tree.map(
                        lambda leaf: jnp.sum(leaf, axis=0),
                        gradients.stacked_copy_gradients(z_cotangent, structure),
                    )
            (encoder_grads,) = encode_vjp(z_cotangent)
            grads = jax.tree.map(jnp.add, head_grads, encoder_grads)
        result = WeightedLosses(
            total=weighted_sum(losses, weights),
            losses=losses,
            weights=weights,
            state=new_state,
            accepted=step_accepted(state, new_state),
            aux=aux,
        )
        return result, grads

    def _pytree_step(params, state, args, kwargs):
        if representation is None:
            head_fn = lambda p: _split_output(loss_fn(p, *args, **kwargs))  # noqa: E731
            encode_fn = None
        else:
            head_fn = lambda p, z, _: _split_output(loss_fn(p, z, *args, **kwargs))  # noqa: E731
            encode_fn = lambda p: (representation(p, *args, **kwargs), None)  # noqa: E731
        result, grads = _weigh_and_pull_back(head_fn, encode_fn, params, state)
        return result, grads

    def _module_step(module: Any, state, args, kwargs):
        """The step for an ``nnx.Module`` (Flax is imported only on this path)."""
        nnx = _nnx.nnx()
        graphdef, param_state, rest_state = nnx.split(module, nnx.Param, ...)

        def run(p, rest, fn, *fn_args):
            """Call ``fn`` on the merged module; return its output and the new non-params."""
            model = nnx.merge(graphdef, p, rest, copy=True)
            output = fn(model, *fn_args, *args, **kwargs)
            return output, nnx.split(model, nnx.Param, ...)[2]

        if representation is None:

            def head_fn(p):
                output, new_rest = run(p, rest_state, loss_fn)
                losses, aux = _split_output(output)
                return losses, (aux, new_rest)

            encode_fn = None
        else:
            # Non-parameter variables (batch statistics...) updated by the
            # representation flow into the heads, as in one forward pass.
            def encode_fn(p):
                return run(p, rest_state, representation)

            def head_fn(p, z, encoder_rest):
                output, new_rest = run(p, jax.lax.stop_gradient(encoder_rest), loss_fn, z)
                losses, aux = _split_output(output)
                return losses, (aux, new_rest)

        result, grads = _weigh_and_pull_back(head_fn, encode_fn, param_state, state)
        aux, new_rest = result.aux
        nnx.update(module, new_rest)
        return result._replace(aux=aux), grads

    return step


def _cotangent(weights: Weights, losses: Losses) -> Losses:
    """The weights as a cotangent of the losses (each in its loss's dtype)."""
    return jax.tree.map(lambda w, loss: w.astype(jnp.result_type(loss)), weights, losses)
