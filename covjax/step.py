"""``covjax.value_and_grad``: losses → weights → weighted sum → gradient, in one pass.

For a loss-statistics scheme the whole step is one forward and one backward
pass: the forward pass gives the K losses, the scheme turns them into weights,
and the backward pass is a single vector–Jacobian product with the weights as
cotangent, which is exactly ∇ Σ stop_gradient(α_i) L_i.

Gradient-based schemes (``"gramian" in scheme.requires``) additionally need the
per-loss gradients; :mod:`covjax.gradients` computes them in one batched
backward pass and hands the scheme their Gramian. The call looks the same, so
switching scheme is a one-line change.

Works on plain parameter pytrees and on Flax NNX modules (gradients w.r.t. the
module's ``nnx.Param`` variables; other variables, e.g. batch statistics,
updated in place as ``nnx.grad`` would).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax import Array

from covjax.base import (
    Losses,
    PyTree,
    Weighting,
    WeightingState,
    Weights,
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
      finite: whether every loss was finite; when False the weighting state
        was left unchanged, the previous weights were used, and the caller
        should usually skip the parameter update.
      aux: auxiliary output of ``loss_fn`` when ``has_aux=True``, else None.
    """

    total: Array
    losses: Losses
    weights: Weights
    state: WeightingState
    finite: Array
    aux: Any = None


LossFn = Callable[..., Any]


def value_and_grad(
    loss_fn: LossFn,
    scheme: Weighting,
    *,
    has_aux: bool = False,
    wrt: Any = None,
    chunk_size: int | None = None,
) -> Callable[..., tuple[WeightedLosses, PyTree]]:
    """Make ``step(params, weighting_state, *args) -> (WeightedLosses, grads)``.

    Args:
      loss_fn: ``loss_fn(params, *args, **kwargs)`` returning the losses (a
        1-D array or a pytree of scalars), or ``(losses, aux)`` with
        ``has_aux=True``. ``params`` may be a pytree or an ``nnx.Module``.
      scheme: any :class:`~covjax.Weighting`.
      has_aux: whether ``loss_fn`` returns ``(losses, aux)``.
      wrt: gradient-based schemes only: which parameters the per-loss
        gradients (and so the Gramian) are taken with respect to; see
        :func:`covjax.gradients.per_loss_gramian`. ``None`` means all.
      chunk_size: gradient-based schemes only: how many per-loss gradients
        are materialised at once (bounds memory; ``1`` is sequential).

    Returns:
      A function with the signature above; ``grads`` has the structure of
      ``params`` (an ``nnx.State`` of the ``nnx.Param`` variables for a
      module) and equals ∇ Σ α_i L_i.
    """

    def step(params: Any, state: WeightingState, *args: Any, **kwargs: Any):
        if isinstance(params, nnx.Module):
            return _module_step(params, state, args, kwargs)
        return _pytree_step(params, state, args, kwargs)

    def _split_output(output: Any) -> tuple[Losses, Any]:
        if has_aux:
            if not (isinstance(output, tuple) and len(output) == 2):
                raise ValueError(
                    "covjax.value_and_grad: has_aux=True but loss_fn did not return (losses, aux)."
                )
            return output
        return output, None

    def _weigh_and_pull_back(
        pure_fn: Callable[[PyTree], tuple[Losses, Any]], params: PyTree, state: WeightingState
    ) -> tuple[WeightedLosses, PyTree, Any]:
        losses, vjp_fn, aux = jax.vjp(pure_fn, params, has_aux=True)
        if "gramian" in scheme.requires:
            from covjax import gradients  # local: the engine imports this module

            gramian = gradients.gramian_from_vjp(
                vjp_fn, losses, params, wrt=wrt, chunk_size=chunk_size
            )
            weights, new_state = scheme.update(losses, state, gramian=gramian)
        else:
            weights, new_state = scheme.update(losses, state)
        weights = jax.lax.stop_gradient(weights)
        cotangent = jax.tree.map(lambda w, loss: w.astype(jnp.result_type(loss)), weights, losses)
        (grads,) = vjp_fn(cotangent)
        total = weighted_sum(losses, weights)
        result = WeightedLosses(
            total=total,
            losses=losses,
            weights=weights,
            state=new_state,
            finite=step_accepted(state, new_state),
            aux=aux,
        )
        return result, grads, aux

    def _pytree_step(params, state, args, kwargs):
        def pure_fn(p):
            return _split_output(loss_fn(p, *args, **kwargs))

        result, grads, _ = _weigh_and_pull_back(pure_fn, params, state)
        return result, grads

    def _module_step(module: nnx.Module, state, args, kwargs):
        graphdef, param_state, rest_state = nnx.split(module, nnx.Param, ...)

        def pure_fn(p):
            model = nnx.merge(graphdef, p, rest_state, copy=True)
            losses, aux = _split_output(loss_fn(model, *args, **kwargs))
            _, _, new_rest = nnx.split(model, nnx.Param, ...)
            return losses, (aux, new_rest)

        result, grads, (aux, new_rest) = _weigh_and_pull_back(pure_fn, param_state, state)
        nnx.update(module, new_rest)
        return result._replace(aux=aux), grads

    return step
