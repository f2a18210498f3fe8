"""Per-loss gradients in one batched backward pass, and their Gramian.

Gradient-based schemes (MGDA, GradNorm, PCGrad, ...) need the K per-loss
gradients g_i = ∇_θ L_i, or only their Gramian G_ij = ⟨g_i, g_j⟩. The K rows of
the Jacobian J = ∂L/∂θ are the vector–Jacobian products eᵢᵀ J with the one-hot
cotangents eᵢ, so one forward pass and ONE vectorised backward pass give them
all::

    losses, vjp = jax.vjp(loss_fn, params)
    J = jax.vmap(vjp)(jnp.eye(K))          # never a Python loop of K grads

``chunk_size`` bounds the memory of the batched backward (its activations'
cotangents are K times those of a single backward): the K cotangents are run
through :func:`jax.lax.map` ``chunk_size`` at a time (``1`` is sequential,
``None`` all at once). The Gramian is summed leaf by leaf,
G = Σ_leaves J_leaf J_leafᵀ, so the parameters are never concatenated.

What the gradients are taken with respect to:

* all parameters (``wrt=None``);
* a subset (``wrt=``): a regular expression matched (``re.match``) against
  the ``"/"``-joined parameter path (so a plain prefix such as
  ``"decoder/iconv4"`` works), a predicate ``(path: str, leaf) -> bool``, an
  NNX filter (``nnx.Param``, ``nnx.PathContains(...)``, ...) applied as NNX
  does to ``(path_tuple, variable)``, or a list/tuple of these (their union);
* a shared intermediate representation z (MGDA-UB, Sener & Koltun 2018): split
  the loss function in two, ``representation(params, *args) -> z`` and
  ``loss_fn(params, z, *args) -> losses``. The per-loss gradients are then
  ∂L_i/∂z, which need only a backward pass through the heads, and
  :func:`covjax.value_and_grad` still updates the parameters with ONE weighted
  backward pass through the whole network (heads, then encoder).

Under :func:`jax.jit`, gradients of unselected parameters are dead code and
are not computed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import filterlib
from jax import Array
from jax.extend import core as jex_core

from covjax.base import Losses, PyTree, flatten_losses

#: Per-loss gradients: each selected leaf's path → its (K, *leaf.shape) gradients.
Jacobian = dict[str, Array]
#: Which parameters to differentiate: see the module docstring.
Selector = Any
VjpFn = Callable[[Losses], tuple[PyTree, ...]]

#: Name of the Jacobian entry of an array-valued representation z.
REPRESENTATION_KEY = "representation"


def _key_parts(path: tuple[Any, ...]) -> tuple[Any, ...]:
    parts: list[Any] = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(key.key)
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(key.idx)
        elif isinstance(key, jax.tree_util.FlattenedIndexKey):
            parts.append(key.key)
        else:
            parts.append(str(key))
    return tuple(parts)


def _path_string(parts: tuple[Any, ...]) -> str:
    return "/".join(str(part) for part in parts)


def _is_nnx_filter(selector: Any) -> bool:
    return isinstance(selector, type) or type(selector).__module__ == filterlib.__name__


def _to_predicate(selector: Selector) -> Callable[[tuple[Any, ...], Any], bool]:
    """A predicate ``(path_parts, node) -> bool`` for one ``wrt`` selector."""
    if isinstance(selector, str):
        pattern = re.compile(selector)
        return lambda parts, node: pattern.match(_path_string(parts)) is not None
    if isinstance(selector, list | tuple):
        predicates = [_to_predicate(item) for item in selector]
        return lambda parts, node: any(predicate(parts, node) for predicate in predicates)
    if _is_nnx_filter(selector):
        nnx_predicate = filterlib.to_predicate(selector)
        return lambda parts, node: bool(nnx_predicate(parts, node))
    if callable(selector):
        return lambda parts, node: bool(selector(_path_string(parts), node))
    raise TypeError(
        "covjax: wrt must be None, a path regex (str), a predicate (path, leaf) -> bool, an "
        f"NNX filter, or a list of these; got {selector!r}."
    )


def select_leaves(params: PyTree, wrt: Selector = None) -> tuple[list[bool], list[str]]:
    """Which of ``params``' array leaves ``wrt`` selects, and every leaf's path name.

    Returns ``(mask, names)`` aligned with ``jax.tree.leaves(params)``.

    Raises:
      ValueError: ``params`` has no array leaves or ``wrt`` selects none of them
        (the message lists the available paths).
    """
    nodes = jax.tree_util.tree_flatten_with_path(
        params, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )[0]
    predicate = None if wrt is None else _to_predicate(wrt)
    mask: list[bool] = []
    names: list[str] = []
    for path, node in nodes:
        parts = _key_parts(path)
        chosen = predicate is None or predicate(parts, node)
        for sub_path, _ in jax.tree_util.tree_flatten_with_path(node)[0]:
            # An nnx.Variable flattens into its value (path suffix "value"); name
            # the leaf after the variable, as NNX does.
            sub_parts = tuple(p for p in _key_parts(sub_path) if p != "value")
            mask.append(chosen)
            names.append(_path_string(parts + sub_parts) or REPRESENTATION_KEY)
    if not mask:
        raise ValueError("covjax: the parameters have no array leaves to differentiate.")
    if not any(mask):
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        raise ValueError(f"covjax: wrt={wrt!r} selects no parameter; the paths are: {shown}.")
    return mask, names


def _validate_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"covjax: chunk_size must be a positive int or None, got {chunk_size!r}.")


def _without_trailing_transposes(batched_fn: Callable[[Array], list[Array]], one_hots: Array):
    """``batched_fn(one_hots)`` minus the transposes that end its outputs.

    The VJP of ``x @ W`` under ``vmap`` yields ∂L/∂W as a (K, out, in) product
    transposed to (K, in, out): on CPU that copy costs as much as the product.
    A Gramian sums over all non-K axes, so their order does not matter and the
    transposes that keep axis 0 in place are dropped from the traced program.
    """
    closed = jax.make_jaxpr(batched_fn)(one_hots)
    producer = {var: eqn for eqn in closed.jaxpr.eqns for var in eqn.outvars}
    outvars = []
    for var in closed.jaxpr.outvars:
        eqn = producer.get(var) if isinstance(var, jex_core.Var) else None
        while (
            eqn is not None
            and eqn.primitive is jax.lax.transpose_p
            and eqn.params["permutation"][0] == 0
        ):
            var = eqn.invars[0]
            eqn = producer.get(var) if isinstance(var, jex_core.Var) else None
        outvars.append(var)
    rewritten = jex_core.ClosedJaxpr(closed.jaxpr.replace(outvars=outvars), closed.consts)
    return jex_core.jaxpr_as_fun(rewritten)(one_hots)


def _per_loss_rows(
    vjp_fn: VjpFn,
    losses: Losses,
    params: PyTree,
    wrt: Selector,
    chunk_size: int | None,
    any_axis_order: bool,
) -> tuple[list[str], list[Array]]:
    """Names and (K, ...) per-loss gradients of the selected leaves.

    With ``any_axis_order`` the non-K axes of a leaf may come permuted (enough
    for a Gramian, and cheaper).
    """
    _validate_chunk_size(chunk_size)
    vector, structure = flatten_losses(losses)
    k = structure.num_losses
    mask, names = select_leaves(params, wrt)
    loss_leaves = jax.tree.leaves(losses)

    def pull_back(one_hot: Array) -> list[Array]:
        cotangent = structure.unflatten(one_hot)
        # The cotangent of each loss must have that loss's dtype (bf16 losses...).
        cotangent_leaves = jax.tree.leaves(cotangent)
        cotangent = jax.tree.unflatten(
            jax.tree.structure(losses),
            [c.astype(x.dtype) for c, x in zip(cotangent_leaves, loss_leaves, strict=True)],
        )
        (grads,) = vjp_fn(cotangent)
        leaves = jax.tree.leaves(grads)
        if len(leaves) != len(mask):
            raise ValueError(
                f"covjax: the VJP returned {len(leaves)} gradient leaves, params has {len(mask)}."
            )
        return [leaf for leaf, keep in zip(leaves, mask, strict=True) if keep]

    def batched(one_hots: Array) -> list[Array]:
        if any_axis_order:
            return _without_trailing_transposes(jax.vmap(pull_back), one_hots)
        return jax.vmap(pull_back)(one_hots)

    one_hots = jnp.eye(k, dtype=vector.dtype)
    if chunk_size is None or chunk_size >= k:
        rows = batched(one_hots)
    else:
        # Zero cotangents pad K to whole chunks; their (zero) rows are dropped.
        num_chunks = -(-k // chunk_size)
        padded = jnp.zeros((num_chunks * chunk_size, k), one_hots.dtype).at[:k].set(one_hots)
        chunked = jax.lax.map(batched, padded.reshape(num_chunks, chunk_size, k))
        rows = [leaf.reshape(num_chunks * chunk_size, *leaf.shape[2:])[:k] for leaf in chunked]
    selected = [name for name, keep in zip(names, mask, strict=True) if keep]
    return selected, list(rows)


def jacobian_from_vjp(
    vjp_fn: VjpFn,
    losses: Losses,
    params: PyTree,
    *,
    wrt: Selector = None,
    chunk_size: int | None = None,
) -> Jacobian:
    """Per-loss gradients from a VJP, in one batched backward pass.

    Args:
      vjp_fn: the pull-back returned by ``jax.vjp(f, params)`` where ``f``
        returns ``losses`` (it returns a 1-tuple holding a pytree like ``params``).
      losses: the primal output of ``f``: a 1-D array of K losses or a pytree
        of K scalar losses.
      params: the primal input of ``f`` (only its structure and paths are used).
      wrt: which leaves to keep (module docstring); ``None`` keeps all.
      chunk_size: how many cotangents go through the backward pass at once;
        ``None`` means all K.

    Returns:
      ``{path: (K, *leaf.shape) array}`` for every selected leaf, row i being
      ∇ L_i for the i-th loss of ``covjax.loss_names(losses)``, in the leaf's
      dtype.
    """
    names, rows = _per_loss_rows(vjp_fn, losses, params, wrt, chunk_size, any_axis_order=False)
    return dict(zip(names, rows, strict=True))


def gramian_of_jacobian(jacobian: Jacobian | Array) -> Array:
    """G = J Jᵀ (K×K, float32 or wider), summed leaf by leaf without concatenating."""
    leaves = jax.tree.leaves(jacobian)
    if not leaves:
        raise ValueError("covjax: the Jacobian is empty.")
    k = leaves[0].shape[0]
    gramian = jnp.zeros((k, k), jnp.promote_types(leaves[0].dtype, jnp.float32))
    for leaf in leaves:
        rows = leaf.reshape(k, -1).astype(gramian.dtype)
        # HIGHEST: accelerators would otherwise multiply float32 in bf16/TF32.
        gramian = gramian + jnp.matmul(rows, rows.T, precision=jax.lax.Precision.HIGHEST)
    return gramian


def gramian_from_vjp(
    vjp_fn: VjpFn,
    losses: Losses,
    params: PyTree,
    *,
    wrt: Selector = None,
    chunk_size: int | None = None,
) -> Array:
    """The K×K Gramian of the per-loss gradients; arguments as :func:`jacobian_from_vjp`."""
    _, rows = _per_loss_rows(vjp_fn, losses, params, wrt, chunk_size, any_axis_order=True)
    return gramian_of_jacobian(rows)


def _differentiable(
    loss_fn: Callable[..., Any],
    params: Any,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    has_aux: bool,
    representation: Callable[..., Any] | None,
) -> tuple[Losses, VjpFn, PyTree, Any]:
    """``(losses, vjp_fn, primal, aux)``: what :func:`jacobian_from_vjp` needs."""

    def split_output(output: Any) -> tuple[Losses, Any]:
        if has_aux:
            if not (isinstance(output, tuple) and len(output) == 2):
                raise ValueError("covjax: has_aux=True but loss_fn did not return (losses, aux).")
            return output
        return output, None

    if isinstance(params, nnx.Module):
        graphdef, param_state, rest = nnx.split(params, nnx.Param, ...)
        model = lambda p: nnx.merge(graphdef, p, rest, copy=True)  # noqa: E731
        params = param_state
    else:
        model = lambda p: p  # noqa: E731

    if representation is None:
        losses, vjp_fn, aux = jax.vjp(
            lambda p: split_output(loss_fn(model(p), *args, **kwargs)), params, has_aux=True
        )
        return losses, vjp_fn, params, aux
    z = representation(model(params), *args, **kwargs)
    losses, head_vjp, aux = jax.vjp(
        lambda rep: split_output(loss_fn(model(params), rep, *args, **kwargs)), z, has_aux=True
    )
    return losses, head_vjp, z, aux


def per_loss_jacobian(
    loss_fn: Callable[..., Any],
    params: Any,
    *args: Any,
    wrt: Selector = None,
    chunk_size: int | None = None,
    has_aux: bool = False,
    representation: Callable[..., Any] | None = None,
    **kwargs: Any,
) -> tuple[Losses, Jacobian, Any]:
    """The K losses and their per-loss gradients, from one batched backward pass.

    Args:
      loss_fn: ``loss_fn(params, *args, **kwargs) -> losses`` (or
        ``(losses, aux)`` with ``has_aux``); with ``representation``,
        ``loss_fn(params, z, *args, **kwargs)``. ``params`` may be a pytree or
        an ``nnx.Module`` (then its ``nnx.Param`` variables are differentiated;
        other variables are not updated).
      params: the parameters.
      *args, **kwargs: passed on to ``loss_fn`` (and ``representation``).
      wrt: which parameters (module docstring); with ``representation``, which
        leaves of z.
      chunk_size: cotangents per backward pass (memory bound); ``None``: all K.
      has_aux: whether ``loss_fn`` returns ``(losses, aux)``.
      representation: ``representation(params, *args, **kwargs) -> z``; the
        gradients are then taken w.r.t. z (MGDA-UB).

    Returns:
      ``(losses, jacobian, aux)`` with ``jacobian = {path: (K, *shape)}``; an
      array-valued z has the single key ``"representation"``.
    """
    losses, vjp_fn, primal, aux = _differentiable(
        loss_fn, params, args, kwargs, has_aux, representation
    )
    jacobian = jacobian_from_vjp(vjp_fn, losses, primal, wrt=wrt, chunk_size=chunk_size)
    return losses, jacobian, aux


def per_loss_gramian(
    loss_fn: Callable[..., Any],
    params: Any,
    *args: Any,
    wrt: Selector = None,
    chunk_size: int | None = None,
    has_aux: bool = False,
    representation: Callable[..., Any] | None = None,
    **kwargs: Any,
) -> tuple[Losses, Array, Any]:
    """``(losses, gramian, aux)``: :func:`per_loss_jacobian`'s J reduced to G = J Jᵀ (K×K)."""
    losses, vjp_fn, primal, aux = _differentiable(
        loss_fn, params, args, kwargs, has_aux, representation
    )
    gramian = gramian_from_vjp(vjp_fn, losses, primal, wrt=wrt, chunk_size=chunk_size)
    return losses, gramian, aux
