"""``covjax.value_and_grad``: losses → weights → weighted sum → gradient, in one pass.

For a loss-statistics scheme the whole step is one forward and one backward
pass: the forward pass gives the K losses, the scheme turns them into weights,
and the backward pass is a single vector–Jacobian product with the weights as
cotangent, which is exactly ∇ Σ stop_gradient(α_i) L_i.

Gradient-based schemes (``covjax.GRAMIAN in scheme.requires``) additionally need the
per-loss gradients; :mod:`covjax._src.gradients` computes them in one batched
backward pass and hands the scheme their Gramian. Stochastic MGDA schemes
(``covjax.CROSS_GRAMIAN in scheme.requires``: SDMGrad, MoDo) get the
cross-Gramian C = J_a J_bᵀ of the per-loss gradients on the two halves a, b
of the batch, from the same plan. Schemes that need the
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
    CROSS_GRAMIAN,
    DIRECTION,
    FEATURE_MAPS,
    GRADIENT_REQUIREMENTS,
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
    gramian_examples: int | None = None,
    feature_maps: bool | None = None,
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
        the whole batch. For a ``CROSS_GRAMIAN`` scheme, the halves are
        those of the first n examples.
      feature_maps: DIRECTION schemes only: whether the selected leaves mark
        feature maps z (each used once, as ``z + leaf``). Then the direction
        d is w.r.t. z (LibMTL's ``rep_grad=True``): the layers before z are
        pulled back from d in place of Σ_i α_i ∂L_i/∂z, and every other
        parameter (the heads) gets its gradient of Σ_i α_i L_i, all in one
        backward pass. ``None`` (default): True when ``wrt`` selects
        ``nnx.Perturbation`` variables, else False (the direction replaces
        the selected parameters' gradients). ``True`` with a plain pytree (or
        Flax Linen's ``perturb``): ``wrt`` selects zero leaves added to the
        feature maps; their own gradients in ``grads`` are Σ_i α_i ∂L_i/∂z
        (drop them before the optimiser). Never inferred for a plain pytree:
        a parameter added to a value of its shape (an adapter ``W₀ + ΔW``)
        looks the same. A scheme that requires :data:`covjax.FEATURE_MAPS`
        (``graddrop(batch_separated=True)``) also gets the maps' values.

    The cross-Gramian (``covjax.CROSS_GRAMIAN in scheme.requires``: SDMGrad,
    MoDo). The batch (axis 0 of every array argument of ``loss_fn``, which
    must all have one even size) is split into its first and second halves
    a and b, and the scheme gets ``gramian=C``, C = J_a J_bᵀ (C_ij =
    ⟨∇L_i(a), ∇L_j(b)⟩, not symmetric), with J_a, J_b the per-loss
    gradients of ``loss_fn`` evaluated on each half alone (batch statistics
    of a half are those of the half); the losses the scheme weighs and the
    gradient come from the whole batch, as for any scheme. Both halves run
    under the plan of one (factorised Dense kernels contribute
    Σ (X_a X_bᵀ) ⊙ (Δ_a Δ_bᵀ), the a-b example pairs only), so C costs
    about as much as the whole batch's Gramian plus one forward pass. With
    independent examples E[C] is the Gramian of the expected gradients
    (unbiased, unlike the Gramian of one batch, whose diagonal carries the
    gradients' variance). The papers draw two extra batches and apply the
    weights to a third; here a and b are part of the weighted batch, so the
    weights are not independent of the losses they multiply (the papers'
    form, with extra batches through ``covjax.per_loss_jacobian`` and
    ``covjax.cross_gramian``, is the example of ``help(covjax.sdmgrad)``).

    Returns:
      A function with the signature above; ``grads`` has the structure of
      ``params`` (an ``nnx.State`` of the ``nnx.Param`` variables for a
      module) and equals ∇ Σ α_i L_i (for a DIRECTION scheme, the
      direction on the ``wrt`` parameters, or, w.r.t. feature maps, the
      layers before them pulled back from it: ``feature_maps``).
      ``WeightedLosses.weights`` are the α_i.

    Raises:
      ValueError: a bad ``chunk_size`` or ``gramian_examples`` (at once), a
        ``wrt`` that selects nothing, or ``gramian_examples`` larger than an
        argument's leading axis (at trace time); for a ``CROSS_GRAMIAN``
        scheme, a batch whose size is odd (a batch of 1 included) or that
        differs between arguments, or ``wrt`` selecting ``nnx.Perturbation``
        feature maps (two halves' maps are different variables) (at trace
        time); for a DIRECTION scheme w.r.t. feature maps, ``gramian_examples``
        (at once with ``feature_maps=True``, else at trace time), ``wrt``
        selecting both parameters and feature maps, or a selected leaf that is
        not added to a feature map once at the top level of ``loss_fn`` (at
        trace time).
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
    needs_cross = CROSS_GRAMIAN in scheme.requires
    needs_gradients = bool(GRADIENT_REQUIREMENTS & scheme.requires)
    gives_direction = DIRECTION in scheme.requires
    output: gradients.Output = "jacobian" if needs_jacobian else "gramian"
    if gives_direction and gramian_examples is not None and feature_maps:
        raise ValueError(_SUB_BATCH_FEATURE_MAPS)

    def step(params: Any, state: WeightingState, *args: Any, **kwargs: Any):
        # The halves are checked before anything is traced.
        halves = _halves((args, kwargs), gramian_examples) if needs_cross else None
        whole_batch_plan = needs_gradients and gramian_examples is None and not needs_cross
        target = gradients.differentiable(
            loss_fn,
            params,
            args,
            kwargs,
            has_aux=has_aux,
            wrt=wrt,
            needs_selection=whole_batch_plan,
        )
        on_feature_maps = (
            gives_direction and whole_batch_plan and _selects_feature_maps(target, feature_maps)
        )
        if whole_batch_plan:
            prepared = gradients.prepare(
                target.fn,
                target.primal,
                target.selected,
                chunk_size=chunk_size,
                output=output,
                expose_marks=on_feature_maps,
                names=target.names,
            )
            losses, vjp_fn, (aux, new_rest) = prepared.losses, prepared.vjp_fn, prepared.aux
            selected = target.selected
        else:
            losses, vjp_fn, (aux, new_rest) = jax.vjp(target.fn, target.primal, has_aux=True)
        if not needs_gradients:
            output_weights, new_state = scheme.update(losses, state)
        elif needs_cross:
            cross = _cross_gramian(loss_fn, params, halves, has_aux, wrt, chunk_size)
            output_weights, new_state = scheme.update(losses, state, gramian=cross)
        else:
            if not whole_batch_plan:
                sub_args, sub_kwargs = _first_examples((args, kwargs), gramian_examples)
                sub = gradients.differentiable(
                    loss_fn, params, sub_args, sub_kwargs, has_aux=has_aux, wrt=wrt
                )
                if gives_direction and _selects_feature_maps(sub, feature_maps):
                    raise ValueError(_SUB_BATCH_FEATURE_MAPS)
                prepared = gradients.prepare(
                    sub.fn, sub.primal, sub.selected, chunk_size=chunk_size, output=output
                )
                selected = sub.selected
            if needs_jacobian:
                rows = [leaf_rows for _, leaf_rows in prepared.per_loss()]
                update = {"jacobian": gradients.flat_jacobian(rows)}
                if FEATURE_MAPS in scheme.requires:
                    if not on_feature_maps:
                        raise ValueError(
                            "covjax.value_and_grad: the scheme reads the feature maps whose "
                            "per-loss gradients it gets (FEATURE_MAPS): mark them (z + leaf, "
                            "nnx.Module.perturb) and select them with wrt=nnx.Perturbation or "
                            "feature_maps=True."
                        )
                    update["feature_maps"] = prepared.marked_values
            else:
                update = {"gramian": prepared.gramian()}
            output_weights, new_state = scheme.update(losses, state, **update)
        weights = jax.lax.stop_gradient(
            output_weights.weights if isinstance(output_weights, Aggregation) else output_weights
        )
        if on_feature_maps:
            grads = _with_feature_map_direction(
                prepared, rows, weights, losses, output_weights.direction
            )
        else:
            (grads,) = vjp_fn(_cotangent(weights, losses))
        grads = target.grads_of(grads)
        if gives_direction and not on_feature_maps:
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


def _is_batched(leaf: Any) -> bool:
    return hasattr(leaf, "shape") and len(leaf.shape) > 0


def _first_examples(tree: Any, n: int, start: int = 0) -> Any:
    """Every array leaf of ``tree`` cut to its entries ``start:n`` on axis 0 (scalars kept)."""

    def cut(leaf: Any) -> Any:
        if not _is_batched(leaf):
            return leaf
        if leaf.shape[0] < n:
            raise ValueError(
                f"covjax.value_and_grad: gramian_examples={n} but an argument has only "
                f"{leaf.shape[0]} examples (shape {leaf.shape})."
            )
        return leaf[start:n]

    return jax.tree.map(cut, tree)


def _halves(tree: Any, examples: int | None) -> tuple[Any, Any]:
    """``tree``'s first and second halves on axis 0 (of its first ``examples`` examples)."""
    sizes = {leaf.shape[0] for leaf in jax.tree.leaves(tree) if _is_batched(leaf)}
    if not sizes:
        raise ValueError(
            "covjax.value_and_grad: a CROSS_GRAMIAN scheme splits the batch into two halves, "
            "but loss_fn gets no array argument with a batch axis."
        )
    if examples is None and len(sizes) > 1:
        raise ValueError(
            "covjax.value_and_grad: a CROSS_GRAMIAN scheme splits the batch into two halves, "
            f"but the arguments' leading axes differ: {sorted(sizes)}."
        )
    n = sizes.pop() if examples is None else examples
    if n % 2 or n < 2:
        raise ValueError(
            f"covjax.value_and_grad: a CROSS_GRAMIAN scheme splits the batch into two halves, "
            f"but it has {n} examples: use an even batch size of at least 2."
        )
    return _first_examples(tree, n // 2), _first_examples(tree, n, start=n // 2)


def _cross_gramian(
    loss_fn: LossFn,
    params: Any,
    halves: tuple[Any, Any],
    has_aux: bool,
    wrt: Any,
    chunk_size: int | None,
) -> Array:
    """C = J_a J_bᵀ of ``loss_fn``'s per-loss gradients on the halves of the batch, one plan."""
    prepared: list[gradients.Prepared] = []
    for args, kwargs in halves:
        half = gradients.differentiable(loss_fn, params, args, kwargs, has_aux=has_aux, wrt=wrt)
        if any(half.selected[half.num_params :]):
            raise ValueError(
                "covjax.value_and_grad: a CROSS_GRAMIAN scheme pairs the gradients of two half "
                "batches, whose feature maps are different variables: select parameters with "
                "wrt=, not nnx.Perturbation."
            )
        plan = prepared[0].plan if prepared else None
        prepared.append(
            gradients.prepare(half.fn, half.primal, half.selected, chunk_size=chunk_size, plan=plan)
        )
    return gradients.cross_gramian(*prepared)


def _with_direction(grads: PyTree, selected: list[bool], plan: Any, direction: Array) -> PyTree:
    """``grads`` with the selected parameters' gradient replaced by a DIRECTION scheme's."""
    num_params = len(jax.tree.leaves(grads))
    if plan.copies:
        raise ValueError(
            "covjax.value_and_grad: a DIRECTION scheme's direction replaces the gradient of "
            "the selected parameters, but some of them are copies of one value (each added to "
            "it), i.e. marks of a feature map: pass feature_maps=True to take the direction "
            "w.r.t. the feature map."
        )
    return gradients.replace_selected(grads, selected[:num_params], direction)


_SUB_BATCH_FEATURE_MAPS = (
    "covjax.value_and_grad: gramian_examples=n takes a DIRECTION scheme's direction from the "
    "first n examples; w.r.t. a feature map it would not have the feature map's shape (the "
    "whole batch's): use gramian_examples=None."
)


def _selects_feature_maps(target: gradients.Differentiable, feature_maps: bool | None) -> bool:
    """Whether a DIRECTION scheme's direction is w.r.t. the feature maps that ``wrt`` marks."""
    num_params = target.num_params
    perturbations = any(target.selected[num_params:])
    if perturbations and feature_maps is False:
        raise ValueError(
            "covjax.value_and_grad: feature_maps=False, but wrt selects nnx.Perturbation "
            "variables, which are feature maps, not parameters whose gradient a direction "
            "could replace."
        )
    if perturbations and any(target.selected[:num_params]):
        chosen = [name for name, keep in zip(target.names, target.selected, strict=True) if keep]
        raise ValueError(
            "covjax.value_and_grad: a DIRECTION scheme's direction is taken w.r.t. either "
            "parameters or feature maps (nnx.Perturbation), but wrt= selects both: "
            f"{', '.join(chosen)}."
        )
    return perturbations or bool(feature_maps)


def _with_feature_map_direction(
    prepared: gradients.Prepared,
    rows: list[Array],
    weights: Weights,
    losses: Losses,
    direction: Array,
) -> PyTree:
    """The step's gradient when a DIRECTION scheme's direction d is w.r.t. feature maps z.

    The direction replaces what ∇ Σ_i w_i L_i sends back into each z
    (Σ_i w_i ∂L_i/∂z, the weighted rows of the Jacobian): the part of the
    program that computes z is pulled back from d instead, and every other
    parameter (the heads after z) gets its gradient of Σ_i w_i L_i. One
    pull-back: the losses' cotangent w and, on z itself, d − Σ_i w_i ∂L_i/∂z.
    """
    flat_weights, _ = flatten_losses(weights)
    cotangents = []
    offset = 0
    for leaf_rows in rows:
        size = leaf_rows[0].size
        piece = direction[offset : offset + size].reshape(leaf_rows.shape[1:])
        weighted = jnp.tensordot(flat_weights.astype(leaf_rows.dtype), leaf_rows, axes=1)
        cotangents.append((piece - weighted).astype(leaf_rows.dtype))
        offset += size
    (grads,) = prepared.marked_vjp(_cotangent(weights, losses), cotangents)
    return grads


def _cotangent(weights: Weights, losses: Losses) -> Losses:
    """The weights as a cotangent of the losses (each in its loss's dtype)."""
    return jax.tree.map(lambda w, loss: w.astype(jnp.result_type(loss)), weights, losses)
