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
    gramian_examples: int | None = None,
) -> Callable[..., tuple[WeightedLosses, PyTree]]:
    """Make ``step(params, weighting_state, *args, **kwargs) -> (WeightedLosses, grads)``.

    Args:
      loss_fn: ``loss_fn(params, *args, **kwargs)`` returning the losses (a
        1-D array or a pytree of scalars), or ``(losses, aux)`` with
        ``has_aux=True``. ``params`` may be a pytree or an ``nnx.Module``.
      scheme: any :class:`~covjax.Weighting`.
      has_aux: whether ``loss_fn`` returns ``(losses, aux)``.
      wrt: gradient-based schemes only: what the per-loss gradients (and so
        the Gramian or the Jacobian; a DIRECTION scheme's direction is their
        gradient) are taken with respect to: a path regex, a predicate, an NNX
        filter (see :mod:`covjax._src.gradients`). ``None`` means all
        parameters. ``wrt=nnx.Perturbation`` takes them w.r.t. the feature
        maps the module marks with ``self.perturb(name, z)`` (MGDA-UB: only a
        backward pass through the heads per loss; the parameters still get
        one weighted backward pass through the whole network, and batch
        statistics update as in a normal step; with one ``perturb`` per task,
        each read by its own head, the heads are pulled back once in all and
        the trunk once). A plain pytree marks z with a
        zero leaf, ``z = z + params["representation"]``, passes
        ``jnp.zeros_like(z)`` there and selects it with
        ``wrt="representation"`` (its gradient comes back in ``grads``: drop
        it before the optimiser).
      chunk_size: gradient-based schemes only: how many per-loss gradients
        are materialised at once (bounds memory; ``1`` is sequential).
      gramian_examples: gradient-based schemes only: estimate the Gramian (or
        the Jacobian) from the first n examples of the batch (every array
        argument of ``loss_fn`` sliced to ``[:n]`` on axis 0), so its cost
        falls with n; the losses and the weighted backward pass still use
        the whole batch. The reference MGDA-UB uses one image. The estimate
        is noisier, and biased: each G_ij = ⟨∇L_i, ∇L_j⟩ is a product of two
        estimated gradients, so E[Ĝ] = G + Cov(∇L̂_i, ∇L̂_j), whose covariance
        term shrinks like 1/n for mean losses over independent examples;
        only ``n`` = the batch size gives the step's own Gramian. ``None``:
        the whole batch.

    Returns:
      A function with the signature above; ``grads`` has the structure of
      ``params`` (an ``nnx.State`` of the ``nnx.Param`` variables for a
      module) and equals ∇ Σ α_i L_i (for a DIRECTION scheme, the
      direction on the ``wrt`` leaves). ``WeightedLosses.weights`` are the α_i.

    Raises:
      ValueError: a bad ``chunk_size`` or ``gramian_examples`` (at once), a
        ``wrt`` that selects nothing, or ``gramian_examples`` larger than an
        argument's leading axis (at trace time).
    """
    gradients._validate_chunk_size(chunk_size)
    if gramian_examples is not None and (
        isinstance(gramian_examples, bool)
        or not isinstance(gramian_examples, int)
        or gramian_examples < 1
    ):
        raise ValueError(
            "covjax.value_and_grad: gramian_examples must be a positive int or None, got "
            f"{gramian_examples!r}."
        )
    needs_jacobian = JACOBIAN in scheme.requires
    needs_gradients = needs_jacobian or GRAMIAN in scheme.requires
    gives_direction = DIRECTION in scheme.requires
    output: gradients.Output = "jacobian" if needs_jacobian else "gramian"

    def step(params: Any, state: WeightingState, *args: Any, **kwargs: Any):
        whole_batch_plan = needs_gradients and gramian_examples is None
        target = gradients.differentiable(
            loss_fn,
            params,
            args,
            kwargs,
            has_aux=has_aux,
            wrt=wrt,
            needs_selection=whole_batch_plan,
        )
        if whole_batch_plan:
            prepared = gradients.prepare(
                target.fn, target.primal, target.selected, chunk_size=chunk_size, output=output
            )
            losses, vjp_fn, (aux, new_rest) = prepared.losses, prepared.vjp_fn, prepared.aux
            selected = target.selected
        else:
            losses, vjp_fn, (aux, new_rest) = jax.vjp(target.fn, target.primal, has_aux=True)
        if not needs_gradients:
            output_weights, new_state = scheme.update(losses, state)
        else:
            if not whole_batch_plan:
                sub_args, sub_kwargs = _first_examples((args, kwargs), gramian_examples)
                sub = gradients.differentiable(
                    loss_fn, params, sub_args, sub_kwargs, has_aux=has_aux, wrt=wrt
                )
                prepared = gradients.prepare(
                    sub.fn, sub.primal, sub.selected, chunk_size=chunk_size, output=output
                )
                selected = sub.selected
            if needs_jacobian:
                rows = [leaf_rows for _, leaf_rows in prepared.per_loss()]
                update = {"jacobian": gradients.flat_jacobian(rows)}
            else:
                update = {"gramian": prepared.gramian()}
            output_weights, new_state = scheme.update(losses, state, **update)
        weights = jax.lax.stop_gradient(
            output_weights.weights if isinstance(output_weights, Aggregation) else output_weights
        )
        (grads,) = vjp_fn(_cotangent(weights, losses))
        grads = target.grads_of(grads)
        if gives_direction:
            grads = _with_direction(grads, selected, prepared.plan, output_weights.direction)
        target.finish(new_rest)
        result = WeightedLosses(
            total=weighted_sum(losses, weights),
            losses=losses,
            weights=weights,
            state=new_state,
            accepted=step_accepted(state, new_state),
            aux=aux,
        )
        return result, grads

    return step


def _first_examples(tree: Any, n: int) -> Any:
    """Every array leaf of ``tree`` cut to its first ``n`` entries on axis 0 (scalars kept)."""

    def cut(leaf: Any) -> Any:
        if not hasattr(leaf, "shape") or len(leaf.shape) == 0:
            return leaf
        if leaf.shape[0] < n:
            raise ValueError(
                f"covjax.value_and_grad: gramian_examples={n} but an argument has only "
                f"{leaf.shape[0]} examples (shape {leaf.shape})."
            )
        return leaf[:n]

    return jax.tree.map(cut, tree)


def _with_direction(grads: PyTree, selected: list[bool], plan: Any, direction: Array) -> PyTree:
    """``grads`` with the selected parameters' gradient replaced by a DIRECTION scheme's."""
    num_params = len(jax.tree.leaves(grads))
    if any(selected[num_params:]) or plan.copies:
        raise ValueError(
            "covjax.value_and_grad: a DIRECTION scheme's direction replaces parameter "
            "gradients; select parameters with wrt=, not perturbations or copies of a value."
        )
    return gradients.replace_selected(grads, selected[:num_params], direction)


def _cotangent(weights: Weights, losses: Losses) -> Losses:
    """The weights as a cotangent of the losses (each in its loss's dtype)."""
    return jax.tree.map(lambda w, loss: w.astype(jnp.result_type(loss)), weights, losses)
