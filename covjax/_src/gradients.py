"""Per-loss gradients from one plan: one trace, one batched backward pass, one reduction.

Gradient-based schemes (MGDA, GradNorm, PCGrad, ...) need the K per-loss
gradients g_i = ∇_θ L_i, or only their Gramian G_ij = ⟨g_i, g_j⟩. The K rows of
the Jacobian J = ∂L/∂θ are the vector–Jacobian products eᵢᵀ J with the one-hot
cotangents eᵢ, so one forward pass and ONE vectorised backward pass give them
all::

    losses, vjp = jax.vjp(loss_fn, params)
    J = jax.vmap(vjp)(jnp.eye(K))          # never a Python loop of K grads

What the gradients are taken with respect to (``wrt``):

* all parameters (``wrt=None``);
* a subset: a regular expression matched (``re.match``) against the
  ``"/"``-joined parameter path (so a plain prefix such as
  ``"decoder/iconv4"`` works), a predicate ``(path: str, leaf) -> bool``, an
  NNX filter (``nnx.Param``, ``nnx.PathContains(...)``, ...) applied as NNX
  does to ``(path_tuple, variable)``, or a list/tuple of these (their union);
* an intermediate feature map z (MGDA-UB, Sener & Koltun 2018): an
  ``nnx.Module`` marks it with ``z = self.perturb("representation", z)`` and
  ``wrt=nnx.Perturbation`` selects it (Flax's own mechanism for gradients of
  intermediates); a plain pytree adds a zero leaf to it,
  ``z = z + params["representation"]``, passes zeros of z's shape there and
  selects it by path. Then ∂L_i/∂z needs only a backward pass through the
  heads, and the parameters still get ONE weighted backward pass through the
  whole network. Per-task copies (``self.perturb(f"representation/{task}",
  z)`` in each head, or one zero leaf per task added to the same z) are
  recognised as copies of z: the gradient w.r.t. z is the sum of theirs.

The plan. The loss function is traced to a jaxpr once, and that one program
decides, for every selected leaf:

* *block-diagonal*: a leaf (or a copy of z) that only one loss reaches has
  per-loss gradients that are zero for every other loss, so ONE pull-back of
  Σ_i L_i gives all of them (a task's own head, per-task copies of z). Who
  reaches what is followed index by index along a stacked axis: K copies
  stacked, ``jnp.stack([z + p_k ...])``, and read by ONE batched head (a
  ``dot_general`` with the stacked axis as a batch axis, elementwise ops,
  reductions, reshapes and transposes that keep the axis, a batched
  ``take_along_axis``), each loss indexing its entry (``logits[k]``, or one
  (K,) array of losses), leave copy k to loss k alone. Ops that may mix the
  indices (a contraction over the stacked axis, a cumulative sum, a gather
  by computed indices, ``scan``, ``cond``, remat, custom derivative rules —
  the body of a nested ``jit`` is followed) merge the axis: then every
  loss reaching the stack reaches every copy, which is never wrong, only
  slower. When every selected leaf is block-diagonal, the step's weighted
  backward pass reuses that pull-back: the heads are pulled back once and
  the trunk once, seeded with the heads' weighted cotangents
  (:mod:`covjax._src.block_diagonal`: the program split into the trunk and
  each head, or, for copies stacked into one batched head, cut where the
  copies are added to z), so MGDA-UB with per-task copies costs a static
  step plus the Gramian of the rows and the min-norm solve;
* *factorised*: a Dense-style kernel W, used once as an operand of a matrix
  product y = X W, gets its Gramian block from the layer input X and the
  per-loss output cotangents Δ_i as Σ (X Xᵀ) ⊙ (Δ_i Δ_jᵀ), so the batched
  backward stops at the layer outputs and the K per-loss weight gradients
  are never formed (:mod:`covjax._src.factorized`), where that is cheaper;
  for schemes that need the rows themselves, a kernel read in its own layout
  gets them as Xᵀ Δ_i from one batched product that puts K first (the
  batched backward pass would form them transposed and copy all K × P);
* *materialised*: every other leaf gets its K per-loss gradients from the
  batched backward pass;

and, for a pytree of scalar losses, which losses reach which layers: groups
of losses that reach different layers (monodepth's scales, a task's own
head) are pulled back separately, each through the transpose of one
linearisation restricted to the group's outputs, which JAX prunes to the
layers it reaches. One walk over the traced program collects every fact
these decisions read (:mod:`covjax._src.program`). Factorised kernels and
groups combine. One reduction then forms the Gramian (or, for schemes that
need them, the Jacobian's rows; with two batches prepared under one plan,
their cross-Gramian J_a J_bᵀ, a factorised kernel's block then
Σ (X_a X_bᵀ) ⊙ (Δ_a Δ_bᵀ): :func:`cross_gramian`), and one place decides chunking:
``chunk_size`` bounds the memory of the batched backward (its activations'
cotangents are K times those of a single backward) by running the K
cotangents through :func:`jax.lax.map` ``chunk_size`` at a time (``1`` is
sequential, ``None`` all at once). Every choice gives the same result up to
rounding. Under :func:`jax.jit`, gradients of unselected parameters are dead
code and are not computed.

References:
  Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
  NeurIPS 2018, https://arxiv.org/abs/1810.04650 (MGDA-UB).
  Goodfellow, "Efficient Per-Example Gradient Computations", 2015,
  https://arxiv.org/abs/1510.01799 (the factorised Dense Gramian).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.extend import core as jex_core

from covjax._src import block_diagonal, factorized, program
from covjax._src import nnx_support as _nnx
from covjax._src.base import Losses, PyTree, flatten_losses, path_name
from covjax._src.gramian import cross_gramian as cross_gramian_of_jacobians

#: Per-loss gradients: each selected leaf's path → its (K, *leaf.shape) gradients.
Jacobian = dict[str, Array]
#: Which parameters to differentiate: see the module docstring.
Selector = Any
VjpFn = Callable[[Losses], tuple[PyTree, ...]]

#: How Gramian blocks of Dense-style kernels are computed (benchmarks only).
Factorize = Literal["auto", "always", "never"]
FACTORIZE_MODES: tuple[str, ...] = ("auto", "always", "never")
#: What the per-loss gradients are reduced to.
Output = Literal["gramian", "jacobian"]

_VARIABLE_VALUE_KEY = jax.tree_util.GetAttrKey("value")


@dataclasses.dataclass
class _EngineOptions:
    """The plan's cost-model switches: for benchmarks and tests, not for users.

    ``factorize``: ``"auto"`` factorises a Dense-style kernel where the cost
    model says it is cheaper, ``"always"`` wherever possible, ``"never"``
    materialises every gradient. ``group_losses``: pull back groups of losses
    that reach different layers separately where that is cheaper.
    ``block_diagonal``: gradients of leaves that one loss reaches from one
    pull-back of Σ L_i. All give the same result up to rounding.
    """

    factorize: Factorize = "auto"
    group_losses: bool = True
    block_diagonal: bool = True


_OPTIONS = _EngineOptions()


@contextlib.contextmanager
def _engine_options(**changes: Any) -> Iterator[_EngineOptions]:
    """Within the block, steps traced use ``changes`` (see :class:`_EngineOptions`)."""
    unknown = set(changes) - {field.name for field in dataclasses.fields(_EngineOptions)}
    if unknown:
        raise TypeError(f"covjax: unknown engine options {sorted(unknown)}.")
    if changes.get("factorize", "auto") not in FACTORIZE_MODES:
        raise ValueError(
            f"covjax: factorize must be one of {FACTORIZE_MODES}, got {changes['factorize']!r}."
        )
    saved = dataclasses.replace(_OPTIONS)
    for name, value in changes.items():
        setattr(_OPTIONS, name, value)
    try:
        yield _OPTIONS
    finally:
        for field in dataclasses.fields(_EngineOptions):
            setattr(_OPTIONS, field.name, getattr(saved, field.name))


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


def _selection(tree: PyTree, wrt: Selector) -> tuple[list[bool], list[str]]:
    """``(mask, names)`` over ``tree``'s array leaves; ``wrt=None`` selects all."""
    nodes = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_nnx.is_variable)[0]
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
            names.append(path_name(path + sub_path, "params"))
    return mask, names


def _check_selection(mask: Sequence[bool], names: Sequence[str], wrt: Selector) -> None:
    if not mask:
        raise ValueError("covjax: the parameters have no array leaves to differentiate.")
    if not any(mask):
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        raise ValueError(f"covjax: wrt={wrt!r} selects no parameter; the paths are: {shown}.")


def select_leaves(params: PyTree, wrt: Selector = None) -> tuple[list[bool], list[str]]:
    """Which of ``params``' array leaves ``wrt`` selects, and every leaf's path name.

    Returns ``(mask, names)`` aligned with ``jax.tree.leaves(params)``.

    Raises:
      ValueError: ``params`` has no array leaves or ``wrt`` selects none of them
        (the message lists the available paths).
    """
    mask, names = _selection(params, wrt)
    _check_selection(mask, names, wrt)
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
    This reads a different program from the plan's walk (:mod:`covjax._src.program`):
    the batched pull-back, which exists only once the plan has chosen what to pull back.
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


class Plan(NamedTuple):
    """What one trace of the loss function decided (see the module docstring).

    Attributes:
      num_losses: K.
      selected: per primal leaf, whether its per-loss gradients are wanted.
      owners: selected leaves that at most one loss reaches → that loss
        (None: no loss reaches it, its gradients are zero): block-diagonal.
      copies: sets of selected leaves that are copies of one value (added to
        it), whose per-loss gradients are summed.
      taps: factorised Dense-style kernels, by leaf.
      groups: loss indices pulled back group by group, or None (one batch).
      marks: selected leaves used once as ``z + leaf`` (marks of a feature map
        z, ``nnx.Module.perturb``) → z's variable in the traced program.
    """

    num_losses: int
    selected: tuple[bool, ...]
    owners: dict[int, int | None]
    copies: tuple[tuple[int, ...], ...]
    taps: dict[int, factorized.Tap]
    groups: list[tuple[int, ...]] | None
    marks: dict[int, Any]

    @property
    def batched(self) -> list[int]:
        """The selected leaves whose rows come from the batched backward pass."""
        return [
            i
            for i, keep in enumerate(self.selected)
            if keep and i not in self.owners and i not in self.taps
        ]


def _num_losses(losses_shape: Any) -> int:
    """K from the abstract losses (a 1-D array or a pytree of scalars)."""
    leaves = jax.tree.leaves(losses_shape)
    if len(leaves) == 1 and len(leaves[0].shape) == 1:
        return leaves[0].shape[0]
    return len(leaves)


def make_plan(closed: Any, losses_shape: Any, selected: Sequence[bool], output: Output) -> Plan:
    """The plan for ``closed``: a ClosedJaxpr over the primal's leaves, the losses' leaves first
    among its outputs. ``output="jacobian"`` needs every row itself: a Dense-style kernel is
    tapped only where its rows come out of X and the Δ_i in its own layout
    (:func:`covjax._src.factorized.find_row_taps`)."""
    k = _num_losses(losses_shape)
    selected = tuple(selected)
    loss_leaves = jax.tree.leaves(losses_shape)
    scalar_losses = len(loss_leaves) == k and all(len(leaf.shape) == 0 for leaf in loss_leaves)
    if closed.effects:  # side effects (prints, callbacks): every row materialised, one batch
        return Plan(k, selected, {}, (), {}, None, {})
    traced = program.walk(closed, selected, len(loss_leaves))
    copies = tuple(traced.copies())
    owners: dict[int, int | None] = {}
    # Who reaches a leaf is known per loss for scalar losses, and for one array of losses
    # whose entries the walk followed (one batched head over stacked copies of z).
    per_loss_reach = scalar_losses or (len(loss_leaves) == 1 and len(traced.loss_leaves) == k)
    if _OPTIONS.block_diagonal and per_loss_reach:
        for i, keep in enumerate(selected):
            if keep and (reach := traced.reach(i)).bit_count() <= 1:
                owners[i] = reach.bit_length() - 1 if reach else None
    remaining = [keep and i not in owners for i, keep in enumerate(selected)]
    taps: dict[int, factorized.Tap] = {}
    if output == "gramian" and _OPTIONS.factorize != "never":
        taps = factorized.find_taps(traced, remaining, k, always=_OPTIONS.factorize == "always")
    elif output == "jacobian" and _OPTIONS.factorize != "never":
        taps = factorized.find_row_taps(traced, remaining)
    groups = None
    if _OPTIONS.group_losses and scalar_losses and any(remaining):
        groups = traced.groups(remaining)
    return Plan(k, selected, owners, copies, taps, groups, traced.marks())


def _block_diagonal_pass(
    plan: Plan, closed: Any, losses_shape: Any
) -> Callable[[Sequence[Array]], block_diagonal.Pass] | None:
    """The step's pass when every selected leaf is block-diagonal, else None.

    Then the step's weighted backward pass reuses the one pull-back of Σ L_i
    (:mod:`covjax._src.block_diagonal`) instead of pulling back through the
    heads again: the program split into its shared and private parts, or,
    where every loss reads one shared batched head (copies stacked for it),
    cut where the copies are added to z.
    """
    chosen = [i for i, keep in enumerate(plan.selected) if keep]
    if not plan.owners or not all(i in plan.owners for i in chosen) or plan.taps:
        return None
    num_outputs = len(jax.tree.leaves(losses_shape))
    # The split weighs each loss output by its own cotangent: scalar losses only.
    split = None
    if num_outputs == plan.num_losses:
        split = block_diagonal.split(closed, num_outputs, plan.selected)
    if split is not None:
        return lambda leaves: block_diagonal.run(split, leaves)
    if plan.copies and sorted(plan.copies[0]) == chosen:
        cut = block_diagonal.cut_at_copies(closed, num_outputs, chosen, plan.owners)
        if cut is not None:
            return lambda leaves: block_diagonal.run_cut(cut, leaves)
    return None


class Prepared(NamedTuple):
    """One forward pass under a plan, ready for the per-loss gradients and a weighted VJP.

    Attributes:
      losses, aux: the loss function's outputs.
      vjp_fn: ``vjp_fn(cotangent) -> (grads,)`` as from ``jax.vjp`` over the primal.
      per_loss: ``per_loss()`` → ``[(leaf, rows)]``: each selected leaf's
        (K, *leaf.shape) per-loss gradients in leaf order, copies of one value
        merged under the first copy's index; what :func:`gramian` and
        :func:`flat_jacobian` reduce. With factorised kernels use ``gramian``.
      gramian: ``gramian()`` → the K×K Gramian of the selected leaves.
      factors: ``factors()`` → the :class:`GramianFactors` that :func:`gramian`
        reduces; two batches' factors under one plan give their cross-Gramian
        (:func:`cross_gramian`).
      plan: the plan.
      marked_vjp: with ``prepare(..., expose_marks=True)``,
        ``marked_vjp(cotangent, value_cotangents) -> (grads,)``: the VJP of
        the losses and of the marked values z (one per entry of ``per_loss()``,
        whose leaves are all marks of a value): Σ_i c_i ∇L_i + Σ_z J_zᵀ c_z,
        from the same forward pass; else None.
      marked_values: with ``expose_marks=True``, the values of the marked z,
        one per entry of ``per_loss()``, from the forward pass; else empty.
    """

    losses: Losses
    vjp_fn: VjpFn
    aux: Any
    per_loss: Callable[[], list[tuple[int, Array]]]
    gramian: Callable[[], Array]
    factors: Callable[[], GramianFactors]
    plan: Plan
    marked_vjp: Callable[[Losses, Sequence[Array]], tuple[PyTree]] | None = None
    marked_values: Sequence[Array] = ()


class GramianFactors(NamedTuple):
    """One batch's per-loss gradient pieces under a plan, before the reduction.

    Attributes:
      leaves: the primal's leaves (shapes of the zero rows of unreached leaves).
      dense: batched rows (K, ...) by leaf (non-K axes maybe permuted).
      owned: the gradient of the one loss that reaches a leaf, by leaf.
      deltas: each tap's output cotangents Δ_i (K, *out_shape), by leaf.
      layer_inputs: each tap's other operand X, by leaf.
    """

    leaves: Sequence[Array]
    dense: dict[int, Array]
    owned: dict[int, Array]
    deltas: dict[int, Array]
    layer_inputs: dict[int, Array]


def prepare(
    fn: Callable[[PyTree], tuple[Losses, Any]],
    primal: PyTree,
    selected: Sequence[bool],
    *,
    chunk_size: int | None = None,
    output: Output = "gramian",
    plan: Plan | None = None,
    expose_marks: bool = False,
    names: Sequence[str] = (),
) -> Prepared:
    """Trace ``fn(primal) -> (losses, aux)`` once, plan, and run its forward pass.

    ``selected`` is aligned with ``jax.tree.leaves(primal)``. ``plan``: use
    this plan (made for a program of the same shapes, e.g. the other half of
    a batch) instead of making one. ``expose_marks``: every selected leaf
    marks a value z (``z + leaf``, :attr:`Plan.marks`); the values become
    extra outputs of the one forward pass, so that a cotangent can be given
    to them (:attr:`Prepared.marked_vjp`: a direction w.r.t. z pulled back
    through the part of the program that computes z). ``names``: the leaves'
    names, for errors.
    """
    _validate_chunk_size(chunk_size)
    leaves, treedef = jax.tree.flatten(primal)

    def flat_fn(*flat_leaves: Array) -> Any:
        return fn(jax.tree.unflatten(treedef, flat_leaves))

    closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*leaves)
    out_tree = jax.tree.structure(out_shape)
    if plan is None:
        plan = make_plan(closed, out_shape[0], selected, output)
    marked_values = _marked_values(plan, names) if expose_marks else []
    if marked_values:
        closed = jex_core.ClosedJaxpr(
            closed.jaxpr.replace(
                outvars=[*closed.jaxpr.outvars, *marked_values],
                debug_info=closed.jaxpr.debug_info.with_unknown_names(),
            ),
            closed.consts,
        )
    run = factorized.tapped_function(closed, plan.taps)
    num_outputs = out_tree.num_leaves

    def forward_with_marks(
        p: PyTree, perturbations: dict[int, Array]
    ) -> tuple[tuple[Losses, list[Array]], Any]:
        """``fn`` with a zero perturbation on each tap's output (the cotangent there is Δ_i),
        and the marked values."""
        if not plan.taps and not marked_values:
            losses, aux = fn(p)
            return (losses, []), (aux, {})
        outputs, layer_inputs = run(jax.tree.leaves(p), perturbations)
        losses, aux = jax.tree.unflatten(out_tree, outputs[:num_outputs])
        return (losses, outputs[num_outputs:]), (aux, layer_inputs)

    def forward(p: PyTree, perturbations: dict[int, Array]) -> tuple[Losses, Any]:
        (losses, _), aux = forward_with_marks(p, perturbations)
        return losses, aux

    perturbations = factorized.zero_perturbations(plan.taps)
    # A cotangent on the marked values needs the whole program's pull-back.
    block_diagonal_pass = (
        None if marked_values else _block_diagonal_pass(plan, closed, out_shape[0])
    )
    marked_vjp = None
    values: list[Array] = []
    if block_diagonal_pass is None:
        (losses, values), vjp_with_values, (aux, layer_inputs) = jax.vjp(
            forward_with_marks, primal, perturbations, has_aux=True
        )
        no_value_cotangents = [jnp.zeros_like(value) for value in values]

        def full_vjp(cotangent: Losses) -> tuple[PyTree, dict[int, Array]]:
            return vjp_with_values((cotangent, no_value_cotangents))

        if marked_values:

            def marked_vjp(cotangent: Losses, value_cotangents: Sequence[Array]) -> tuple[PyTree]:
                return (vjp_with_values((cotangent, list(value_cotangents)))[0],)

        def summed() -> list[Array]:
            return jax.tree.leaves(full_vjp(jax.tree.map(jnp.ones_like, losses))[0])

    else:
        # Every selected leaf block-diagonal: the heads are pulled back once, the trunk once.
        split_pass = block_diagonal_pass(leaves)
        losses, aux = jax.tree.unflatten(out_tree, split_pass.outputs)
        layer_inputs: dict[int, Array] = {}

        def full_vjp(cotangent: Losses) -> tuple[PyTree, dict[int, Array]]:
            weighted = split_pass.weighted(jax.tree.leaves(cotangent))
            return jax.tree.unflatten(treedef, weighted), {}

        def summed() -> list[Array]:
            return split_pass.summed

    def vjp_fn(cotangent: Losses) -> tuple[PyTree]:
        return (full_vjp(cotangent)[0],)

    def rows(reorderable: bool) -> tuple[dict[int, Array], dict[int, Array], dict[int, Array]]:
        return _rows(
            plan,
            leaves,
            treedef,
            forward,
            perturbations,
            losses,
            full_vjp,
            summed,
            chunk_size,
            reorderable,
        )

    def per_loss() -> list[tuple[int, Array]]:
        if plan.taps and output != "jacobian":
            raise ValueError("covjax: factorised kernels have no rows; reduce with gramian().")
        dense, owned, deltas = rows(reorderable=False)
        dense = _with_tap_rows(plan, leaves, dense, deltas, layer_inputs)
        return _merged_rows(plan, leaves, dense, owned)

    def factors() -> GramianFactors:
        dense, owned, deltas = rows(reorderable=True)
        return GramianFactors(leaves, dense, owned, deltas, layer_inputs)

    def gramian() -> Array:
        one = factors()
        return _gramian(plan, one, one)

    return Prepared(losses, vjp_fn, aux, per_loss, gramian, factors, plan, marked_vjp, values)


def _marked_values(plan: Plan, names: Sequence[str]) -> list[Any]:
    """The values z marked by the selected leaves, one per entry of ``per_loss()`` (copies of
    one value share it), in its order."""
    values = []
    for leaf in _entry_leaves(plan):
        if leaf not in plan.marks:
            raise ValueError(
                "covjax: a direction w.r.t. feature maps needs each selected leaf to be added "
                "to its feature map z once, at the top level of the loss function (z + leaf of "
                "z's shape and dtype, e.g. z = self.perturb(name, z) outside any nested "
                f"jax.jit); {names[leaf] if leaf < len(names) else f'leaf {leaf}'} is not."
            )
        values.append(plan.marks[leaf])
    return values


def cross_gramian(a: Prepared, b: Prepared) -> Array:
    """C = J_a J_bᵀ (K×K) of two batches prepared under ONE plan (``prepare(..., plan=a.plan)``).

    The same reduction as the Gramian, with batch a's pieces on the left and
    b's on the right: a factorised kernel's block is Σ (X_a X_bᵀ) ⊙ (Δ_a Δ_bᵀ)
    (the a-b example pairs only), a one-loss leaf adds ⟨∇L_i(a), ∇L_i(b)⟩ to
    C_ii, every other leaf adds its rows' products J_a J_bᵀ.
    """
    if a.plan != b.plan:
        raise ValueError("covjax: a cross-Gramian needs both batches prepared under one plan.")
    return _gramian(a.plan, a.factors(), b.factors())


def _with_tap_rows(
    plan: Plan,
    leaves: Sequence[Array],
    dense: dict[int, Array],
    deltas: dict[int, Array],
    layer_inputs: dict[int, Array],
) -> dict[int, Array]:
    """``dense`` plus the rows of a ``output="jacobian"`` plan's taps, formed from X and Δ_i."""
    tap_rows = {
        i: factorized.tap_rows(tap, layer_inputs[i], deltas[i], leaves[i])
        for i, tap in plan.taps.items()
    }
    return {**dense, **tap_rows}


def _copy_sets(plan: Plan) -> dict[int, tuple[int, ...]]:
    return {member: members for members in plan.copies for member in members}


def _rows(
    plan: Plan,
    leaves: Sequence[Array],
    treedef: Any,
    forward: Callable[[PyTree, dict[int, Array]], tuple[Losses, Any]],
    perturbations: dict[int, Array],
    losses: Losses,
    full_vjp: Callable[[Losses], tuple[PyTree, dict[int, Array]]],
    summed: Callable[[], list[Array]],
    chunk_size: int | None,
    reorderable: bool,
) -> tuple[dict[int, Array], dict[int, Array], dict[int, Array]]:
    """``(dense, owned, deltas)``: batched rows by leaf, one-loss gradients, taps' Δ_i.

    ``summed()``: every leaf's gradient of Σ L_i. ``reorderable``: the non-K
    axes of batched rows may come permuted (enough for a Gramian, cheaper),
    except for copies (summed with each other).
    """
    owned: dict[int, Array] = {}
    if any(owner is not None for owner in plan.owners.values()):
        # Block-diagonal: ONE pull-back of Σ L_i; a leaf that only L_i reaches gets ∇L_i.
        grad_leaves = summed()
        owned = {i: grad_leaves[i] for i, owner in plan.owners.items() if owner is not None}
    batched = plan.batched
    tapped = sorted(plan.taps)  # a dict's pytree leaves come in key order
    if not batched and not tapped:
        return {}, owned, {}
    copies = _copy_sets(plan)
    if plan.groups is None:
        wanted = set(batched)
        mask = [i in wanted for i in range(len(leaves))] + [True] * len(tapped)
        flags = [reorderable and i not in copies for i in batched] + [False] * len(tapped)
        rows = per_loss_rows(full_vjp, losses, mask, chunk_size, flags)
    else:
        rows = _grouped_rows(plan, leaves, treedef, forward, perturbations, losses, chunk_size)
    dense = dict(zip(batched, rows[: len(batched)], strict=True))
    deltas = dict(zip(tapped, rows[len(batched) :], strict=True))
    return dense, owned, deltas


def _grouped_rows(
    plan: Plan,
    leaves: Sequence[Array],
    treedef: Any,
    forward: Callable[[PyTree, dict[int, Array]], tuple[Losses, Any]],
    perturbations: dict[int, Array],
    losses: Losses,
    chunk_size: int | None,
) -> list[Array]:
    """The batched rows, each group of losses pulled back through its own (pruned) transpose.

    One linearisation w.r.t. the batched leaves and the taps' perturbations;
    a group's pull-back is the transpose of the JVP restricted to its outputs,
    which JAX prunes to the equations those outputs depend on (the other
    outputs' cotangents are symbolic zeros). Rows come back in loss order.
    """
    batched, tapped = plan.batched, sorted(plan.taps)
    values = [leaves[i] for i in batched] + [perturbations[t] for t in tapped]

    def of_values(new_values: list[Array]) -> list[Array]:
        full = list(leaves)
        for i, value in zip(batched, new_values, strict=False):
            full[i] = value
        new_perturbations = dict(zip(tapped, new_values[len(batched) :], strict=True))
        return jax.tree.leaves(forward(jax.tree.unflatten(treedef, full), new_perturbations)[0])

    _, jvp_fn = jax.linearize(of_values, values)
    loss_leaves = jax.tree.leaves(losses)
    blocks = []
    for group in plan.groups or ():

        def group_jvp(tangent: list[Array], group: tuple[int, ...] = group) -> list[Array]:
            outputs = jvp_fn(tangent)
            return [outputs[i] for i in group]

        pull_back = jax.linear_transpose(group_jvp, values)
        group_losses = [loss_leaves[i] for i in group]
        blocks.append(per_loss_rows(pull_back, group_losses, [True] * len(values), chunk_size))
    order = [i for group in plan.groups or () for i in group]
    inverse = jnp.asarray([order.index(i) for i in range(len(order))])
    return [jnp.concatenate([block[j] for block in blocks])[inverse] for j in range(len(values))]


def _dense(plan: Plan, leaves: Sequence[Array], dense: dict, owned: dict, i: int) -> Array:
    """Leaf i's (K, ...) rows: batched, or one loss's gradient in its row and zeros elsewhere."""
    if i in dense:
        return dense[i]
    rows = jnp.zeros((plan.num_losses, *leaves[i].shape), leaves[i].dtype)
    owner = plan.owners[i]
    return rows if owner is None else rows.at[owner].set(owned[i])


def _entry_leaves(plan: Plan) -> list[int]:
    """The selected leaves that head an entry of ``per_loss()``, in its order: every selected
    leaf but the copies of one value after the first, which it stands for."""
    copies = _copy_sets(plan)
    return [
        i
        for i, keep in enumerate(plan.selected)
        if keep and not (i in copies and copies[i][0] != i)
    ]


def _merged_rows(
    plan: Plan, leaves: Sequence[Array], dense: dict, owned: dict
) -> list[tuple[int, Array]]:
    """``[(leaf, rows)]`` in leaf order; the rows of copies of one value summed at the first.

    A factorised kernel (``plan.taps``) has rows only once :func:`_with_tap_rows`
    formed them into ``dense``; until then its Gramian block comes from X and Δ_i.
    """
    copies = _copy_sets(plan)
    merged = []
    for i in _entry_leaves(plan):
        if i in plan.taps and i not in dense:
            continue
        members = copies.get(i, (i,))
        private = [m for m in members if plan.owners.get(m) is not None]
        rows = None
        if len(private) > 1:
            # Copies that one loss each reaches: their gradients ARE rows; one scatter.
            by_owner = sorted(private, key=lambda m: plan.owners[m])
            if [plan.owners[m] for m in by_owner] == list(range(plan.num_losses)):
                # One copy per loss (MGDA-UB's per-task copies): the rows are their stack.
                rows = jnp.stack([owned[m] for m in by_owner])
            else:
                owners = jnp.asarray([plan.owners[m] for m in private])
                stacked = jnp.stack([owned[m] for m in private])
                rows = jnp.zeros((plan.num_losses, *stacked.shape[1:]), stacked.dtype)
                rows = rows.at[owners].add(stacked)
            members = tuple(m for m in members if m not in private)
        for member in members:
            member_rows = _dense(plan, leaves, dense, owned, member)
            rows = member_rows if rows is None else rows + member_rows
        merged.append((i, rows))
    return merged


def _gramian(plan: Plan, left: GramianFactors, right: GramianFactors) -> Array:
    """The one reduction: Σ_blocks of every kind of J_left J_rightᵀ (module docstring).

    ``left is right`` gives the Gramian; two batches' factors their cross-Gramian.
    """
    k = plan.num_losses
    selected = [leaf for leaf, keep in zip(left.leaves, plan.selected, strict=True) if keep]
    dtype = jnp.promote_types(selected[0].dtype, jnp.float32)
    gramian = jnp.zeros((k, k), dtype)
    copies = _copy_sets(plan)
    for i, tap in plan.taps.items():
        second = () if right is left else (right.layer_inputs[i], right.deltas[i])
        block = factorized.tap_gramian(tap, left.layer_inputs[i], left.deltas[i], *second)
        gramian = gramian + block.astype(dtype)
    # A leaf that one loss reaches adds only ⟨∇L_i, ∇L_i⟩ to G_ii.
    for i, gradient in left.owned.items():
        if i not in copies:
            flat_right = right.owned[i].ravel().astype(dtype)
            product = jnp.dot(
                gradient.ravel().astype(dtype), flat_right, precision=jax.lax.Precision.HIGHEST
            )
            gramian = gramian.at[plan.owners[i], plan.owners[i]].add(product)

    def rows(factors: GramianFactors) -> list[Array]:
        merged = _merged_rows(plan, factors.leaves, factors.dense, factors.owned)
        return [row for i, row in merged if i in copies or i in factors.dense]

    left_rows = rows(left)
    if left_rows:
        right_rows = left_rows if right is left else rows(right)
        gramian = gramian + cross_gramian_of_jacobians(left_rows, right_rows).astype(dtype)
    return gramian


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


class Differentiable(NamedTuple):
    """A loss function ready for :func:`prepare`.

    Attributes:
      fn: ``fn(primal) -> (losses, (aux, new_rest))``.
      primal: the parameters (and, for an ``nnx.Module``, its perturbations).
      selected: ``wrt``'s mask over ``jax.tree.leaves(primal)``.
      names: every leaf's path name, aligned with ``selected``.
      grads_of: the parameters' gradients out of the primal's gradients.
      finish: ``finish(new_rest)``: updates an ``nnx.Module``'s other variables
        (batch statistics...) in place; a no-op for a pytree.
    """

    fn: Callable[[PyTree], tuple[Losses, Any]]
    primal: PyTree
    selected: list[bool]
    names: list[str]
    grads_of: Callable[[PyTree], PyTree]
    finish: Callable[[Any], None]

    @property
    def num_params(self) -> int:
        """How many of the primal's leaves are parameters (the perturbations come after)."""
        return len(jax.tree.leaves(self.grads_of(self.primal)))


def _may_select_perturbations(wrt: Any) -> bool:
    """Whether ``wrt`` can select ``nnx.Perturbation`` variables: only then are they looked for
    (one abstract evaluation of the loss). A path regex selects parameters only."""
    if wrt is None or isinstance(wrt, str):
        return False
    if isinstance(wrt, list | tuple):
        return any(_may_select_perturbations(item) for item in wrt)
    return True


def differentiable(
    loss_fn: Callable[..., Any],
    params: Any,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    *,
    has_aux: bool,
    wrt: Selector,
    needs_selection: bool = True,
) -> Differentiable:
    """``loss_fn(params, *args, **kwargs)`` as a function of a pytree, with ``wrt``'s selection.

    For an ``nnx.Module`` the primal is ``(its nnx.Param state, its
    perturbations)``: the ``self.perturb(name, z)`` calls of ``loss_fn`` are
    found by one abstract evaluation (when ``wrt`` can select them), each gets
    a zero of z's shape, and ``loss_fn`` runs on a copy of the module that
    carries them as its ``nnx.Perturbation`` variables, which ``perturb`` adds
    to z (the module itself is left unchanged but for its other variables).
    """
    if not _nnx.is_module(params):

        def fn(p: PyTree) -> tuple[Losses, Any]:
            losses, aux = split_output(loss_fn(p, *args, **kwargs), has_aux)
            return losses, (aux, None)

        mask, names = _selection(params, wrt) if needs_selection else ([], [])
        if needs_selection:
            _check_selection(mask, names, wrt)
        return Differentiable(fn, params, mask, names, lambda grads: grads, lambda rest: None)

    nnx = _nnx.nnx()
    module = params
    graphdef, param_state, rest = nnx.split(module, nnx.Param, ...)
    perturbations = (
        _nnx.find_perturbations(graphdef, param_state, rest, loss_fn, args, kwargs)
        if needs_selection and _may_select_perturbations(wrt)
        else nnx.State({})
    )

    def module_fn(primal: tuple[PyTree, PyTree]) -> tuple[Losses, Any]:
        output, new_rest, _ = _nnx.call(graphdef, *primal, rest, loss_fn, args, kwargs)
        losses, aux = split_output(output, has_aux)
        return losses, (aux, new_rest)

    mask: list[bool] = []
    names: list[str] = []
    if needs_selection:
        for part in (param_state, perturbations):
            part_mask, part_names = _selection(part, wrt)
            mask += part_mask
            names += part_names
        _check_selection(mask, names, wrt)
    return Differentiable(
        module_fn,
        (param_state, perturbations),
        mask,
        names,
        lambda grads: grads[0],
        lambda new_rest: nnx.update(module, new_rest),
    )


def per_loss_jacobian(
    loss_fn: Callable[..., Any],
    params: Any,
    *args: Any,
    wrt: Selector = None,
    chunk_size: int | None = None,
    has_aux: bool = False,
    **kwargs: Any,
) -> tuple[Losses, Jacobian, Any]:
    """The K losses and their per-loss gradients, from one batched backward pass.

    Args:
      loss_fn: ``loss_fn(params, *args, **kwargs) -> losses`` (or
        ``(losses, aux)`` with ``has_aux``). ``params`` may be a pytree or an
        ``nnx.Module`` (then its ``nnx.Param`` variables, and with
        ``wrt=nnx.Perturbation`` its perturbations, are differentiated; other
        variables are not updated).
      params: the parameters.
      *args: passed on to ``loss_fn``.
      **kwargs: passed on to ``loss_fn``.
      wrt: which parameters or intermediates (module docstring).
      chunk_size: cotangents per backward pass (memory bound); ``None``: all K.
      has_aux: whether ``loss_fn`` returns ``(losses, aux)``.

    Returns:
      ``(losses, jacobian, aux)`` with ``jacobian = {path: (K, *shape)}``; the
      copies of one value (module docstring) share the entry of their common
      path prefix (``"representation"`` for ``"representation/depth"``, ...).
    """
    target = differentiable(loss_fn, params, args, kwargs, has_aux=has_aux, wrt=wrt)
    prepared = prepare(
        target.fn, target.primal, target.selected, chunk_size=chunk_size, output="jacobian"
    )
    copies = _copy_sets(prepared.plan)
    jacobian = {}
    for i, rows in prepared.per_loss():
        members = copies.get(i, (i,))
        jacobian[_common_prefix([target.names[m] for m in members])] = rows
    return prepared.losses, jacobian, prepared.aux[0]


def _common_prefix(names: Sequence[str]) -> str:
    """The longest common ``"/"``-prefix of path names (the name itself when alone)."""
    parts = [name.split("/") for name in names]
    common = []
    for pieces in zip(*parts, strict=False):
        if len(set(pieces)) != 1:
            break
        common.append(pieces[0])
    return "/".join(common) or names[0]


def per_loss_gramian(
    loss_fn: Callable[..., Any],
    params: Any,
    *args: Any,
    wrt: Selector = None,
    chunk_size: int | None = None,
    has_aux: bool = False,
    **kwargs: Any,
) -> tuple[Losses, Array, Any]:
    """``(losses, gramian, aux)``: :func:`per_loss_jacobian`'s J reduced to G = J Jᵀ (K×K).

    Dense-style kernels' blocks come from their layer inputs and output
    cotangents where that is cheaper (module docstring); same result.
    """
    target = differentiable(loss_fn, params, args, kwargs, has_aux=has_aux, wrt=wrt)
    prepared = prepare(target.fn, target.primal, target.selected, chunk_size=chunk_size)
    return prepared.losses, prepared.gramian(), prepared.aux[0]
