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

Three ways to cut the cost further, all exact:

* Dense kernels are factorized (``factorize="auto"``, the default of
  :func:`per_loss_gramian`, :func:`vjp_and_gramian` and
  :func:`covjax.value_and_grad`): a kernel used once in a matrix product gets
  its Gramian block from the layer input X and the per-loss output cotangents
  Δ_i as Σ (X Xᵀ) ⊙ (Δ_i Δ_jᵀ), so the batched backward stops at the layer
  outputs and the K per-loss weight gradients are never formed
  (:mod:`covjax._src.factorized`; at K = 32 on LibMTL's MLP, 4–5× faster).
* Per-task copies of the representation (``representation_copies=True`` in
  :func:`covjax.value_and_grad`): when head i reads only copy i of z, ONE
  backward pass of Σ L_i gives every ∂L_i/∂z (:func:`jacobian_from_copies`),
  instead of a batched backward through all heads per loss.
* Grouped pull-backs (``group_losses=True``, the default): losses (a pytree
  of scalars) that reach different layers are pulled back group by group,
  through the transpose of one linearisation restricted to the group's
  outputs, which JAX prunes to the layers those losses reach
  (:mod:`covjax._src.loss_groups`; monodepth's coarse scales skip the
  full-resolution decoder: its GradNorm and MGDA-UB steps cost 2.7–2.9× less).

Under :func:`jax.jit`, gradients of unselected parameters are dead code and
are not computed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax import Array
from jax.extend import core as jex_core

from covjax._src import factorized, loss_groups
from covjax._src import nnx_support as _nnx
from covjax._src.base import Losses, LossStructure, PyTree, flatten_losses, path_name

#: Per-loss gradients: each selected leaf's path → its (K, *leaf.shape) gradients.
Jacobian = dict[str, Array]
#: Which parameters to differentiate: see the module docstring.
Selector = Any
VjpFn = Callable[[Losses], tuple[PyTree, ...]]

#: How Gramian blocks of Dense-style kernels are computed: see :func:`vjp_and_gramian`.
Factorize = Literal["auto", "always", "never"]
FACTORIZE_MODES: tuple[str, ...] = ("auto", "always", "never")

#: Name of the Jacobian entry of an array-valued representation z.
REPRESENTATION_KEY = "representation"

_VARIABLE_VALUE_KEY = jax.tree_util.GetAttrKey("value")


def _to_predicate(selector: Selector) -> Callable[[jax.tree_util.KeyPath, Any], bool]:
    """A predicate ``(key_path, node) -> bool`` for one ``wrt`` selector."""
    if isinstance(selector, str):
        pattern = re.compile(selector)
        return lambda path, node: pattern.match(path_name(path)) is not None
    if isinstance(selector, list | tuple):
        predicates = [_to_predicate(item) for item in selector]
        return lambda path, node: any(predicate(path, node) for predicate in predicates)
    if _nnx.is_filter(selector):
        return _nnx.filter_predicate(selector)
    if callable(selector):
        return lambda path, node: bool(selector(path_name(path), node))
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
    nodes = jax.tree_util.tree_flatten_with_path(params, is_leaf=_nnx.is_variable)[0]
    predicate = None if wrt is None else _to_predicate(wrt)
    mask: list[bool] = []
    names: list[str] = []
    for path, node in nodes:
        chosen = predicate is None or predicate(path, node)
        for sub_path, _ in jax.tree_util.tree_flatten_with_path(node)[0]:
            # An nnx.Variable flattens into its value (path suffix ".value"); name
            # the leaf after the variable, as NNX does.
            sub_path = tuple(key for key in sub_path if key != _VARIABLE_VALUE_KEY)
            mask.append(chosen)
            names.append(path_name(path + sub_path, REPRESENTATION_KEY))
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


def _without_trailing_transposes(
    batched_fn: Callable[[Array], list[Array]], one_hots: Array, reorderable: Sequence[bool]
) -> list[Array]:
    """``batched_fn(one_hots)`` minus the transposes that end its ``reorderable`` outputs.

    The VJP of ``x @ W`` under ``vmap`` yields ∂L/∂W as a (K, out, in) product
    transposed to (K, in, out): on CPU that copy costs as much as the product.
    A Gramian sums over all non-K axes, so their order does not matter and the
    transposes that keep axis 0 in place are dropped from the traced program.
    """
    closed = jax.make_jaxpr(batched_fn)(one_hots)
    producer = {var: eqn for eqn in closed.jaxpr.eqns for var in eqn.outvars}
    outvars = []
    for var, may_reorder in zip(closed.jaxpr.outvars, reorderable, strict=True):
        eqn = producer.get(var) if may_reorder and isinstance(var, jex_core.Var) else None
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


def per_loss_rows(
    vjp_fn: VjpFn,
    losses: Losses,
    mask: Sequence[bool],
    chunk_size: int | None,
    reorderable: Sequence[bool] | None = None,
) -> list[Array]:
    """The (K, ...) per-loss gradients of the leaves ``mask`` keeps.

    ``mask`` is aligned with the leaves of what ``vjp_fn`` returns. The non-K
    axes of the kept leaves flagged in ``reorderable`` (aligned with the kept
    leaves) may come permuted: enough for a Gramian, and cheaper.
    """
    _validate_chunk_size(chunk_size)
    vector, structure = flatten_losses(losses)
    k = structure.num_losses
    loss_leaves = jax.tree.leaves(losses)

    def pull_back(one_hot: Array) -> list[Array]:
        cotangent = structure.unflatten(one_hot)
        # The cotangent of each loss must have that loss's dtype (bf16 losses...).
        cotangent_leaves = jax.tree.leaves(cotangent)
        cotangent = jax.tree.unflatten(
            jax.tree.structure(losses),
            [c.astype(x.dtype) for c, x in zip(cotangent_leaves, loss_leaves, strict=True)],
        )
        leaves = jax.tree.leaves(vjp_fn(cotangent))
        if len(leaves) != len(mask):
            raise ValueError(
                f"covjax: the VJP returned {len(leaves)} gradient leaves, expected {len(mask)}."
            )
        return [leaf for leaf, keep in zip(leaves, mask, strict=True) if keep]

    def batched(one_hots: Array) -> list[Array]:
        if reorderable is not None and any(reorderable):
            return _without_trailing_transposes(jax.vmap(pull_back), one_hots, reorderable)
        return jax.vmap(pull_back)(one_hots)

    one_hots = jnp.eye(k, dtype=vector.dtype)
    if chunk_size is None or chunk_size >= k:
        return list(batched(one_hots))
    # Zero cotangents pad K to whole chunks; their (zero) rows are dropped.
    num_chunks = -(-k // chunk_size)
    padded = jnp.zeros((num_chunks * chunk_size, k), one_hots.dtype).at[:k].set(one_hots)
    chunked = jax.lax.map(batched, padded.reshape(num_chunks, chunk_size, k))
    return [leaf.reshape(num_chunks * chunk_size, *leaf.shape[2:])[:k] for leaf in chunked]


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
    mask, names = select_leaves(params, wrt)
    rows = per_loss_rows(vjp_fn, losses, mask, chunk_size)
    selected = [name for name, keep in zip(names, mask, strict=True) if keep]
    return dict(zip(selected, rows, strict=True))


def flat_jacobian(rows: Sequence[Array]) -> Array:
    """The (K, P) Jacobian: per-leaf (K, ...) rows flattened and concatenated in leaf order.

    The layout of :data:`covjax.JACOBIAN` (float32 or wider).
    """
    if not rows:
        raise ValueError("covjax: the Jacobian is empty.")
    k = rows[0].shape[0]
    dtype = jnp.promote_types(rows[0].dtype, jnp.float32)
    return jnp.concatenate([row.reshape(k, -1).astype(dtype) for row in rows], axis=1)


def replace_selected(tree: PyTree, mask: Sequence[bool], flat: Array) -> PyTree:
    """``tree`` with its ``mask``-selected leaves replaced by consecutive slices of ``flat`` (P,).

    The inverse of :func:`flat_jacobian`'s layout for one row: a DIRECTION
    scheme's direction becomes the gradient of the selected leaves (each in
    its leaf's shape and dtype).
    """
    leaves, treedef = jax.tree.flatten(tree)
    sizes = [leaf.size for leaf, keep in zip(leaves, mask, strict=True) if keep]
    if flat.shape != (sum(sizes),):
        raise ValueError(
            f"covjax: the direction has shape {flat.shape}, expected ({sum(sizes)},): one entry "
            "per selected parameter."
        )
    offset = 0
    replaced = []
    for leaf, keep in zip(leaves, mask, strict=True):
        if keep:
            piece = flat[offset : offset + leaf.size]
            replaced.append(piece.reshape(leaf.shape).astype(leaf.dtype))
            offset += leaf.size
        else:
            replaced.append(leaf)
    return jax.tree.unflatten(treedef, replaced)


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
    mask, _ = select_leaves(params, wrt)
    rows = per_loss_rows(vjp_fn, losses, mask, chunk_size, reorderable=[True] * sum(mask))
    return gramian_of_jacobian(rows)


def _grouped_gramian(
    fn: Callable[[PyTree], Losses],
    primal: PyTree,
    groups: Sequence[tuple[int, ...]],
    mask: Sequence[bool],
    chunk_size: int | None,
) -> Array:
    """The Gramian with each group of losses pulled back through its own (pruned) transpose.

    ``groups`` partitions the indices of ``fn``'s loss leaves
    (:func:`covjax.loss_groups.find_groups`); block (a, b) of the Gramian is
    Σ_leaves J_a J_bᵀ, and the blocks are put back in the losses' order.
    """
    # One linearisation w.r.t. the selected leaves only; each group's pull-back
    # is the transpose of the JVP restricted to that group's outputs, which JAX
    # prunes to the equations those outputs depend on (the other outputs'
    # cotangents are symbolic zeros).
    leaves, treedef = jax.tree.flatten(primal)
    selected = [leaf for leaf, keep in zip(leaves, mask, strict=True) if keep]

    def fn_of_selected(selected_leaves: list[Array]) -> Losses:
        replacements = iter(selected_leaves)
        full = [
            next(replacements) if keep else leaf for leaf, keep in zip(leaves, mask, strict=True)
        ]
        return fn(jax.tree.unflatten(treedef, full))

    losses, jvp_fn = jax.linearize(fn_of_selected, selected)
    loss_leaves = jax.tree.leaves(losses)
    row_blocks = []
    for group in groups:

        def group_jvp(tangent: list[Array], group: tuple[int, ...] = group) -> list[Array]:
            outputs = jax.tree.leaves(jvp_fn(tangent))
            return [outputs[i] for i in group]

        pull_back = jax.linear_transpose(group_jvp, selected)
        group_losses = [loss_leaves[i] for i in group]
        # Not reorderable: every group's rows must keep the same axis order.
        rows = per_loss_rows(pull_back, group_losses, [True] * len(selected), chunk_size)
        row_blocks.append(rows)
    dtype = jnp.promote_types(row_blocks[0][0].dtype, jnp.float32)
    highest = jax.lax.Precision.HIGHEST

    def block(rows_a: list[Array], rows_b: list[Array]) -> Array:
        total = jnp.zeros((rows_a[0].shape[0], rows_b[0].shape[0]), dtype)
        for leaf_a, leaf_b in zip(rows_a, rows_b, strict=True):
            a = leaf_a.reshape(leaf_a.shape[0], -1).astype(dtype)
            b = leaf_b.reshape(leaf_b.shape[0], -1).astype(dtype)
            total = total + jnp.matmul(a, b.T, precision=highest)
        return total

    blocks = [[None] * len(groups) for _ in groups]
    for a in range(len(groups)):
        for b in range(a, len(groups)):
            blocks[a][b] = block(row_blocks[a], row_blocks[b])
            blocks[b][a] = blocks[a][b].T
    permuted = jnp.block(blocks)
    order = [i for group in groups for i in group]
    inverse = [order.index(i) for i in range(len(order))]
    return permuted[jnp.ix_(jnp.asarray(inverse), jnp.asarray(inverse))]


def gramian_of_function(
    fn: Callable[[PyTree], Losses],
    primal: PyTree,
    losses: Losses,
    vjp_fn: VjpFn,
    *,
    wrt: Selector = None,
    chunk_size: int | None = None,
    group_losses: bool = True,
    traced: Any = None,
) -> Array:
    """The Gramian of ``fn``'s per-loss gradients at ``primal``.

    ``losses, vjp_fn = jax.vjp(fn, primal)``. With ``group_losses`` and a
    pytree of scalar losses, losses that reach different parts of the network
    are pulled back in separate groups where that is cheaper
    (:mod:`covjax._src.loss_groups`); otherwise all K in one batched pass.
    ``traced``: a ClosedJaxpr of ``fn`` over ``primal``'s leaves whose first
    outputs are the loss leaves (e.g. one already traced with an aux output),
    so that ``fn`` is not traced again.
    """
    mask, _ = select_leaves(primal, wrt)
    groups = _loss_groups(fn, primal, losses, mask, traced) if group_losses else None
    if groups is None:
        return gramian_from_vjp(vjp_fn, losses, primal, wrt=wrt, chunk_size=chunk_size)
    return _grouped_gramian(fn, primal, groups, mask, chunk_size)


def _loss_groups(
    fn: Callable[[PyTree], Losses],
    primal: PyTree,
    losses: Losses,
    mask: Sequence[bool],
    traced: Any = None,
) -> list[tuple[int, ...]] | None:
    leaves = jax.tree.leaves(losses)
    if len(leaves) < 2 or any(jnp.ndim(leaf) != 0 for leaf in leaves):
        return None  # a 1-D array of losses is one output: nothing to split
    if traced is None:
        traced, num_outputs = loss_groups.trace(fn, primal)
        if num_outputs != len(leaves):
            return None
    if traced.effects:
        return None
    return loss_groups.find_groups(traced, mask, len(leaves))


def representation_copies(z: PyTree, structure: LossStructure) -> PyTree:
    """One copy of the representation z per loss, laid out like the losses.

    For a 1-D array of K losses every leaf of z is stacked K times on a new
    leading axis (loss i reads ``z[i]``); for a pytree of losses (e.g. a dict
    by task) the copies form that same pytree, one z per loss (the depth loss
    reads ``copies["depth"]``).
    """
    if structure.is_vector:
        k = structure.num_losses
        return jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (k, *leaf.shape)), z)
    return jax.tree_util.tree_unflatten(structure.treedef, [z] * structure.num_losses)


def stacked_copy_gradients(per_copy_grads: PyTree, structure: LossStructure) -> PyTree:
    """The cotangents of :func:`representation_copies` as z's structure with (K, ...) leaves."""
    if structure.is_vector:
        return per_copy_grads
    per_loss = structure.treedef.flatten_up_to(per_copy_grads)
    return jax.tree.map(lambda *rows: jnp.stack(rows), *per_loss)


def jacobian_from_copies(per_copy_grads: PyTree, *, wrt: Selector = None) -> Jacobian:
    """The per-loss gradients w.r.t. z, from ONE pull-back through per-task copies.

    When loss i reads only its copy of z (:func:`representation_copies`),
    pulling a cotangent of ones back to the copies gives copy i exactly
    ∂L_i/∂z: stacked (:func:`stacked_copy_gradients`, leaves (K, ...)) they
    are the Jacobian, and this selects their ``wrt`` leaves by path.
    """
    mask, names = select_leaves(per_copy_grads, wrt)
    leaves = jax.tree.leaves(per_copy_grads)
    return {name: leaf for name, leaf, keep in zip(names, leaves, mask, strict=True) if keep}


def _num_losses(losses_shape: Any) -> int:
    """K from the abstract losses (a 1-D array or a pytree of scalars)."""
    leaves = jax.tree.leaves(losses_shape)
    if len(leaves) == 1 and len(leaves[0].shape) == 1:
        return leaves[0].shape[0]
    return len(leaves)


def vjp_and_gramian(
    fn: Callable[[PyTree], tuple[Losses, Any]],
    params: PyTree,
    *,
    wrt: Selector = None,
    chunk_size: int | None = None,
    factorize: Factorize = "auto",
    group_losses: bool = True,
) -> tuple[Losses, VjpFn, Any, Callable[[], Array]]:
    """One forward pass of ``fn(params) -> (losses, aux)``, ready for a Gramian and a VJP.

    Returns ``(losses, vjp_fn, aux, gramian)``: ``vjp_fn(cotangent) ->
    (grads,)`` as from ``jax.vjp``, and ``gramian()`` the K×K Gramian of the
    per-loss gradients w.r.t. the ``wrt`` leaves, from one batched backward
    pass. ``factorize``: ``"auto"`` gives each selected Dense-style kernel (a
    leaf used once, as an operand of a matrix product) its Gramian block from
    the layer input and the output cotangents (:mod:`covjax._src.factorized`),
    never materialising its K per-loss gradients, where that is cheaper;
    ``"always"`` wherever possible; ``"never"`` materialises every gradient.
    ``group_losses``: without factorized kernels, pull back groups of losses
    that reach different layers separately where that is cheaper
    (:mod:`covjax._src.loss_groups`). The result is the same up to rounding.
    """
    if factorize not in FACTORIZE_MODES:
        raise ValueError(f"covjax: factorize must be one of {FACTORIZE_MODES}, got {factorize!r}.")
    mask, _ = select_leaves(params, wrt)
    leaves, treedef = jax.tree.flatten(params)
    taps: dict[int, factorized.Tap] = {}
    closed = None
    # Only a matrix (or higher) can be a product's operand worth factorizing.
    if factorize != "never" and any(
        keep and jnp.ndim(leaf) >= 2 for keep, leaf in zip(mask, leaves, strict=True)
    ):

        def flat_fn(*flat_leaves: Array) -> Any:
            return fn(jax.tree.unflatten(treedef, flat_leaves))

        closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*leaves)
        if not closed.effects:
            losses_shape = out_shape[0] if isinstance(out_shape, tuple) else out_shape
            taps = factorized.find_taps(
                closed, mask, _num_losses(losses_shape), always=factorize == "always"
            )

    if not taps:
        losses, plain_vjp, aux = jax.vjp(fn, params, has_aux=True)

        def plain_gramian() -> Array:
            return gramian_of_function(
                lambda p: fn(p)[0],
                params,
                losses,
                plain_vjp,
                wrt=wrt,
                chunk_size=chunk_size,
                group_losses=group_losses,
                traced=closed,  # its outputs are (losses, aux): the losses come first
            )

        return losses, plain_vjp, aux, plain_gramian

    run = factorized.tapped_function(closed, taps)
    out_tree = jax.tree.structure(out_shape)

    def tapped(p: PyTree, perturbations: dict[int, Array]) -> tuple[Losses, Any]:
        outputs, layer_inputs = run(jax.tree.leaves(p), perturbations)
        losses, aux = jax.tree.unflatten(out_tree, outputs)
        return losses, (aux, layer_inputs)

    perturbations = factorized.zero_perturbations(taps)
    losses, tapped_vjp, (aux, layer_inputs) = jax.vjp(tapped, params, perturbations, has_aux=True)

    def vjp_fn(cotangent: Losses) -> tuple[PyTree]:
        return (tapped_vjp(cotangent)[0],)

    def gramian() -> Array:
        materialised = [keep and i not in taps for i, keep in enumerate(mask)]
        tapped_leaves = sorted(taps)  # a dict's pytree leaves come in key order
        reorderable = [True] * sum(materialised) + [False] * len(tapped_leaves)
        rows = per_loss_rows(
            tapped_vjp,
            losses,
            materialised + [True] * len(tapped_leaves),
            chunk_size,
            reorderable,
        )
        num_materialised = sum(materialised)
        k = rows[0].shape[0]
        total = (
            gramian_of_jacobian(rows[:num_materialised])
            if num_materialised
            else jnp.zeros((k, k), jnp.float32)
        )
        for leaf, deltas in zip(tapped_leaves, rows[num_materialised:], strict=True):
            total = total + factorized.tap_gramian(taps[leaf], layer_inputs[leaf], deltas)
        return total

    return losses, vjp_fn, aux, gramian


def split_output(output: Any, has_aux: bool) -> tuple[Losses, Any]:
    """``(losses, aux)`` of a loss function's output (``aux`` is None without ``has_aux``).

    Raises (at trace time):
      ValueError: ``has_aux=True`` but the output is not a pair, or
        ``has_aux=False`` and the output looks like ``(losses, aux)``: a pair
        whose first element is itself a dict, sequence or array of losses.
      TypeError: a loss that is not floating point (it cannot be differentiated).
    """
    if has_aux:
        if not (isinstance(output, tuple) and len(output) == 2):
            raise ValueError("covjax: has_aux=True but loss_fn did not return (losses, aux).")
        losses, aux = output
    else:
        if isinstance(output, tuple) and len(output) == 2 and not _is_scalar(output[0]):
            raise ValueError(
                "covjax: loss_fn returned a pair whose first element holds several losses; if "
                "it returns (losses, aux), pass has_aux=True. To return losses only, return one "
                "dict, one flat tuple of scalars or one 1-D array."
            )
        losses, aux = output, None
    for path, leaf in jax.tree_util.tree_flatten_with_path(losses)[0]:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            name = path_name(path, "losses")
            raise TypeError(
                f"covjax: loss {name!r} has dtype {dtype}; a loss must be floating point to be "
                "differentiated (an integer loss has no gradient: compute it in float, or cast "
                "with .astype(jnp.float32) if its gradient is meant to be 0)."
            )
    return losses, aux


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, dict | list | tuple) and jnp.ndim(value) == 0


def _as_pytree(params: Any) -> tuple[PyTree, Callable[[PyTree], Any]]:
    """``(primal, model)``: an NNX module's ``nnx.Param`` state and how to rebuild it."""
    if _nnx.is_module(params):
        nnx = _nnx.nnx()
        graphdef, param_state, rest = nnx.split(params, nnx.Param, ...)
        return param_state, lambda p: nnx.merge(graphdef, p, rest, copy=True)
    return params, lambda p: p


def _differentiable(
    loss_fn: Callable[..., Any],
    params: Any,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    has_aux: bool,
    representation: Callable[..., Any] | None,
) -> tuple[Losses, VjpFn, PyTree, Any, Callable[[PyTree], Losses]]:
    """``(losses, vjp_fn, primal, aux, fn)``: the differentiated ``fn(primal) -> losses``.

    ``primal`` is the parameters, or z with a ``representation``.
    """
    params, model = _as_pytree(params)

    if representation is None:

        def fn(p: PyTree) -> tuple[Losses, Any]:
            return split_output(loss_fn(model(p), *args, **kwargs), has_aux)

        primal = params
    else:
        primal = representation(model(params), *args, **kwargs)

        def fn(rep: PyTree) -> tuple[Losses, Any]:
            return split_output(loss_fn(model(params), rep, *args, **kwargs), has_aux)

    losses, vjp_fn, aux = jax.vjp(fn, primal, has_aux=True)
    return losses, vjp_fn, primal, aux, lambda x: fn(x)[0]


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
      *args: passed on to ``loss_fn`` (and ``representation``).
      **kwargs: passed on to ``loss_fn`` (and ``representation``).
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
    losses, vjp_fn, primal, aux, _ = _differentiable(
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
    factorize: Factorize = "auto",
    group_losses: bool = True,
    **kwargs: Any,
) -> tuple[Losses, Array, Any]:
    """``(losses, gramian, aux)``: :func:`per_loss_jacobian`'s J reduced to G = J Jᵀ (K×K).

    ``factorize``: see :func:`vjp_and_gramian` (Dense kernels' blocks from
    layer inputs and output cotangents; parameters only, not z).
    ``group_losses``: see :func:`gramian_of_function`.
    """
    if representation is None:
        params, model = _as_pytree(params)

        def fn(p: PyTree) -> tuple[Losses, Any]:
            return split_output(loss_fn(model(p), *args, **kwargs), has_aux)

        losses, _, aux, gramian = vjp_and_gramian(
            fn,
            params,
            wrt=wrt,
            chunk_size=chunk_size,
            factorize=factorize,
            group_losses=group_losses,
        )
        return losses, gramian(), aux
    losses, head_vjp, z, aux, heads = _differentiable(
        loss_fn, params, args, kwargs, has_aux, representation
    )
    gramian = gramian_of_function(
        heads,
        z,
        losses,
        head_vjp,
        wrt=wrt,
        chunk_size=chunk_size,
        group_losses=group_losses,
    )
    return losses, gramian, aux
