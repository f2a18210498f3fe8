"""The weighting API: ``Weighting(init, update)`` over an immutable state pytree.

A weighting scheme maps the K loss values of a training step (and, for the
gradient-based schemes, the K×K Gramian of the per-loss gradients) to K weights
α_i; the network is then trained on Σ stop_gradient(α_i) L_i.

Every scheme is written once, on a flat float32 vector of losses, by a pair of
private functions ``init_fn(losses) -> inner`` and
``update_fn(losses, inner, count, gramian) -> (weights, inner)``.
:func:`make_weighting` wraps them into the public :class:`Weighting`, which
owns, in one place for all schemes:

* the loss structure: a 1-D array of K losses or any pytree of scalar losses;
  mismatches between ``init`` and ``update`` and non-scalar losses are errors
  raised at trace time;
* dtype: bf16/f16 losses are promoted and all statistics live in float32;
* the step counter (int32: float32 counters stop at 2²⁴ steps);
* robustness: a step with a NaN/±Inf loss or Gramian entry, a loss ≤ 0 for a
  scheme whose maths needs positive losses (``positive_losses=True``: ratios,
  logarithms or divisions by a loss), or whose update would produce a
  non-finite weight, is rejected: the state stays exactly as it was and the
  previous weights are returned (uniform before the first accepted step);
* the scheme's user-facing facts (:class:`WeightingProperties`: what the
  weights sum to, how they respond to a loss's scale, whether losses must be
  positive), which the README's scheme table lists.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Collection, Sequence
from typing import Any, Final, Literal, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import optax
from jax import Array

#: The requirement of the gradient-based schemes: ``GRAMIAN in scheme.requires``
#: means ``update`` needs ``gramian=``, the K×K Gramian of the per-loss gradients.
GRAMIAN: Final = "gramian"

#: ``CROSS_GRAMIAN in scheme.requires`` means ``update`` needs ``gramian=`` to be
#: the K×K cross-Gramian C = J_a J_bᵀ of the per-loss gradients on two
#: independent batches a and b (C_ij = ⟨∇L_i(a), ∇L_j(b)⟩, not symmetric;
#: :func:`covjax.cross_gramian`): an unbiased estimate of the true gradients'
#: Gramian, for the stochastic MGDA variants (SDMGrad, MoDo).
#: :func:`covjax.value_and_grad` takes a and b as the two halves of the batch.
CROSS_GRAMIAN: Final = "cross_gramian"

#: ``JACOBIAN in scheme.requires`` means ``update`` needs ``jacobian=``: the K×P
#: matrix whose row i is ∇L_i with respect to the selected parameters, flattened
#: leaf by leaf (in ``jax.tree.leaves`` order) and concatenated. For schemes
#: that use more than inner products of gradients (per-coordinate statistics,
#: tracked gradient estimates).
JACOBIAN: Final = "jacobian"

#: ``DIRECTION in scheme.requires`` (with :data:`JACOBIAN`) means the scheme's
#: update direction is not Σ α_i ∇L_i: ``update`` returns an
#: :class:`Aggregation` whose ``direction`` (P,) replaces the gradient of the
#: selected parameters, while its ``weights`` weigh the losses for every other
#: parameter (and are what is reported).
DIRECTION: Final = "direction"

#: ``FEATURE_MAPS in scheme.requires`` (with :data:`JACOBIAN`) means the Jacobian's
#: columns must be the entries of feature maps z (the per-loss gradients w.r.t. the
#: maps a module marks, :func:`covjax.value_and_grad` with ``feature_maps``) and
#: ``update`` also needs ``feature_maps=``: the values of those maps, a sequence of
#: arrays in the order of the Jacobian's columns, each with its batch axis first
#: (GradDrop's batch-separated form reads the activations' signs and pools over the
#: batch).
FEATURE_MAPS: Final = "feature_maps"

#: The requirements whose matrix is passed as ``gramian=``.
GRAMIAN_REQUIREMENTS: Final = frozenset({GRAMIAN, CROSS_GRAMIAN})
#: The requirements that make a scheme gradient-based: ``GRADIENT_REQUIREMENTS &
#: scheme.requires`` is non-empty when ``update`` needs per-loss gradients (a
#: Gramian, a cross-Gramian or the Jacobian), which :func:`covjax.value_and_grad`
#: provides; otherwise the loss values are all it reads.
GRADIENT_REQUIREMENTS: Final = frozenset({GRAMIAN, CROSS_GRAMIAN, JACOBIAN})

PyTree = Any
Losses = PyTree  # a 1-D array of K losses, or a pytree whose leaves are scalar losses
Weights = PyTree  # same structure as the losses


@dataclasses.dataclass(frozen=True)
class LossStructure:
    """Static description of how a scheme's losses are laid out."""

    treedef: jax.tree_util.PyTreeDef
    num_losses: int
    names: tuple[str, ...]
    is_vector: bool  # a single 1-D array of K losses rather than a pytree of scalars

    def unflatten(self, vector: Array) -> PyTree:
        """Turn a (K,) vector back into the losses' structure."""
        if self.is_vector:
            return vector
        return jax.tree_util.tree_unflatten(self.treedef, list(vector))

    def describe(self) -> str:
        if self.is_vector:
            return f"a 1-D array of {self.num_losses} losses"
        return f"{self.num_losses} losses named {list(self.names)}"


def path_name(path: jax.tree_util.KeyPath, root: str = "") -> str:
    """The ``"/"``-joined name of a pytree key path (``"l1/left"``, ``"layers/0/kernel"``).

    The one namer of losses and parameters; ``root`` names the empty path (a
    pytree that is a single leaf).
    """
    return jax.tree_util.keystr(path, simple=True, separator="/") or root


def flatten_losses(losses: Losses) -> tuple[Array, LossStructure]:
    """Validate ``losses`` and return them as a float32 (K,) vector with their structure.

    ``losses`` is either ONE 1-D array of K losses, or a pytree (dict, list,
    tuple, ...) whose every leaf is a scalar loss.

    Raises:
      ValueError: no losses, a loss that is None, a non-scalar loss (a 1-D
        array is a vector of losses only when it is passed by itself, not
        inside a container), or a loss array that is not 1-D.
      TypeError: a leaf that is not a numeric array.
    """
    with_nones, _ = jax.tree_util.tree_flatten_with_path(losses, is_leaf=lambda x: x is None)
    missing = [path_name(path, "loss") for path, leaf in with_nones if leaf is None]
    if missing:
        raise ValueError(
            f"covjax: loss {missing[0]!r} is None; every loss must be a number (drop the entry "
            "if that loss is not computed in this step)."
        )
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(losses)
    if not leaves_with_path:
        raise ValueError("covjax: got zero losses; a weighting needs at least one loss.")
    if jax.tree_util.treedef_is_leaf(treedef) and jnp.ndim(leaves_with_path[0][1]) == 1:
        vector = jnp.asarray(leaves_with_path[0][1])
        if vector.shape[0] == 0:
            raise ValueError("covjax: got an empty loss vector; a weighting needs at least one.")
        names = tuple(f"loss_{i}" for i in range(vector.shape[0]))
        structure = LossStructure(treedef, int(vector.shape[0]), names, is_vector=True)
        return _as_float(vector, "losses"), structure
    names = tuple(path_name(path, "loss") for path, _ in leaves_with_path)
    for name, (_, leaf) in zip(names, leaves_with_path, strict=True):
        if jnp.ndim(leaf) != 0:
            raise ValueError(
                f"covjax: loss {name!r} has shape {jnp.shape(leaf)}; a loss must be a scalar "
                "(reduce it with a mean or sum first). To pass a vector of K losses, pass the "
                "1-D array itself, not inside a dict, list or tuple."
            )
    vector = jnp.stack([_as_float(jnp.asarray(leaf), name) for _, leaf in leaves_with_path])
    return vector, LossStructure(treedef, len(names), names, is_vector=False)


def _as_float(x: Array, name: str) -> Array:
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        raise TypeError(f"covjax: loss {name!r} has dtype {x.dtype}; losses must be real numbers.")
    # bf16/f16 losses accumulate in float32; float64 (x64 mode) is kept.
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def loss_names(losses: Losses) -> tuple[str, ...]:
    """The names covjax gives to ``losses`` (``"a/b"`` for ``{"a": {"b": ...}}``)."""
    return flatten_losses(losses)[1].names


def named(values: PyTree) -> dict[str, Array]:
    """A flat ``{name: value}`` dict of losses or weights, for logging.

    Leading batch axes are kept: the weights of a ``jax.vmap``-ed sweep (a
    (B, K) array, or a dict of (B,) arrays) give one (B,) array per name.
    """
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(values)
    if jax.tree_util.treedef_is_leaf(treedef) and jnp.ndim(leaves_with_path[0][1]) >= 1:
        array = _as_float(jnp.asarray(leaves_with_path[0][1]), "losses")
        return {f"loss_{i}": array[..., i] for i in range(array.shape[-1])}
    if not leaves_with_path:
        raise ValueError("covjax.named: got no values.")
    shapes = {jnp.shape(leaf) for _, leaf in leaves_with_path}
    if len(shapes) != 1:
        raise ValueError(
            f"covjax.named: the values have different shapes {sorted(shapes)}; each must be a "
            "scalar, or share the same leading batch axes."
        )
    return {
        path_name(path, "loss"): _as_float(jnp.asarray(leaf), path_name(path, "loss"))
        for path, leaf in leaves_with_path
    }


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["count", "weights", "inner"],
    meta_fields=["structure", "scheme"],
)
@dataclasses.dataclass(frozen=True)
class WeightingState:
    """State of any covjax weighting: only arrays, plus static structure metadata.

    Attributes:
      count: int32, number of steps accepted so far (rejected steps are not
        counted).
      weights: (K,) float32, the weights returned by the last accepted step.
      inner: the scheme's own state (a NamedTuple of arrays; ``optax.EmptyState()``
        for a scheme that keeps none).
      structure: the loss structure seen at ``init`` (static, not a leaf).
      scheme: the name of the scheme whose ``init`` made it (static).
    """

    count: Array
    weights: Array
    inner: Any
    structure: LossStructure
    scheme: str = ""

    def replace(self, **changes: Any) -> WeightingState:
        """A copy with ``changes`` applied (:func:`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)


class InitFn(Protocol):
    def __call__(self, losses: Losses) -> WeightingState: ...


class UpdateFn(Protocol):
    def __call__(
        self, losses: Losses, state: WeightingState, gramian: Array | None = None
    ) -> tuple[Weights, WeightingState]: ...


WeightsSum = Literal["1", "K", "free"]
LossScale = Literal["compensated", "unchanged", "learned", "no"]


class Aggregation(NamedTuple):
    """What ``update`` of a :data:`DIRECTION` scheme returns in place of the weights.

    Attributes:
      weights: the loss weights (structured like the losses): they weigh the
        losses in the backward pass of the parameters outside ``wrt`` and are
        what is reported and logged.
      direction: (P,) the update direction for the selected parameters, in the
        layout of the Jacobian's rows (:data:`JACOBIAN`); zero on a rejected step.
    """

    weights: Weights
    direction: Array


class AggregatorPromises(NamedTuple):
    """What a scheme promises about its update direction d, as an aggregator of gradients.

    The definitions are those of Quinton & Rey, "Jacobian Descent for
    Multi-Objective Optimization" (2024, https://arxiv.org/abs/2406.16232),
    and of TorchJD's property tests; J is the K×P matrix whose rows are the
    per-loss gradients g_i, and d = A(J) = Σ_i w_i g_i (or a :data:`DIRECTION`
    scheme's direction) the scheme's update from a fresh state. Every field
    defaults to False: "not promised" (the property may still hold on some
    inputs; the shared property suite only checks what is promised).

    Attributes:
      non_conflicting: J d ≥ 0: no loss increases to first order along d.
      permutation_invariant: permuting the losses (the rows of J, and the
        loss values with them) leaves d unchanged; the weights permute along.
      linear_under_scaling: for positive per-loss factors c ∈ ℝ^K, A(diag(c) J)
        is linear in c: A(diag(a·c + b·c′) J) = a·A(diag(c) J) + b·A(diag(c′) J)
        for a, b > 0. In particular d(cJ) = c·d(J) for c > 0, and the update
        neither ignores nor over-reacts to one loss's gradient scale.
      strongly_stationary: d = 0 only when J is strongly stationary: some
        strictly positive u has Jᵀu = 0 (0 lies in the relative interior of
        the convex hull of the gradients). So a zero step never stops a
        descent that some loss could still take without harming the others.
    """

    non_conflicting: bool = False
    permutation_invariant: bool = False
    linear_under_scaling: bool = False
    strongly_stationary: bool = False


#: The default declaration: nothing promised.
NO_PROMISES: Final = AggregatorPromises()


class WeightingProperties(NamedTuple):
    """What a user needs to know to switch to a scheme in one line.

    Attributes:
      weights_sum: what the weights sum to at every step: ``"1"``, ``"K"``
        (the number of losses) or ``"free"`` (not normalized: their scale acts
        as a learning-rate factor).
      loss_scale: what happens to the weights when one loss L_i (and, for the
        gradient-based schemes, its gradient) is multiplied by c > 0 at every
        step: ``"compensated"`` (α_i is divided by c, up to a factor common to
        all weights, so the weighted gradient keeps its direction: the scheme
        balances loss scales), ``"unchanged"`` (the weights do not move, so
        that loss's gradient counts c times more), ``"learned"`` (compensated
        once the learned weights reach their equilibrium), ``"no"`` (neither).
      positive_losses: whether every loss must be > 0 (above its minimum for
        FAMO): a step with a loss ≤ 0 is then rejected like a non-finite one.
        Otherwise any finite loss is accepted.
      promises: the update direction's properties as an aggregator of the
        per-loss gradients (:class:`AggregatorPromises`), checked for every
        gradient scheme by one shared property suite and listed in the
        README's promises table.
    """

    weights_sum: WeightsSum | None = None
    loss_scale: LossScale | None = None
    positive_losses: bool = False
    promises: AggregatorPromises = NO_PROMISES


class Weighting(NamedTuple):
    """A loss weighting scheme, optax-style.

    ``state = init(losses)``; ``weights, state = update(losses, state)``.
    ``requires`` names what the scheme needs besides the losses:
    :data:`covjax.GRAMIAN` (the K×K Gramian of the per-loss gradients, passed
    as ``gramian=``), :data:`covjax.CROSS_GRAMIAN` (the K×K cross-Gramian of
    two batches' per-loss gradients, passed as ``gramian=``),
    :data:`covjax.JACOBIAN` (the K×P per-loss gradients,
    passed as ``jacobian=``; with :data:`covjax.FEATURE_MAPS`, w.r.t. feature
    maps whose values come as ``feature_maps=``); with :data:`covjax.DIRECTION`
    ``update`` returns an :class:`Aggregation` (weights and a direction)
    instead of the weights.
    ``properties`` are its user-facing facts (:class:`WeightingProperties`).
    """

    init: InitFn
    update: UpdateFn
    requires: frozenset[str] = frozenset()
    properties: WeightingProperties = WeightingProperties()


FlatInit = Callable[[Array], Any]
FlatUpdate = Callable[[Array, Any, Array, Array | None], tuple[Array, Any]]
FlatWeights = Callable[[Array, Array | None], Array]


def make_weighting(
    init_fn: FlatInit,
    update_fn: FlatUpdate,
    *,
    name: str,
    requires: Collection[str] = frozenset(),
    positive_losses: bool = False,
    loss_minimum: float | Array = 0.0,
    weights_sum: WeightsSum | None = None,
    loss_scale: LossScale | None = None,
    promises: AggregatorPromises = NO_PROMISES,
) -> Weighting:
    """Build a public :class:`Weighting` from flat-vector ``init_fn``/``update_fn``.

    Args:
      init_fn: ``(losses (K,) float32) -> inner_state``; the values are those
        given to ``init`` and only their shape should usually matter.
      update_fn: ``(losses (K,), inner_state, count int32, gradients)
        -> (weights (K,), inner_state)`` where ``gradients`` is the Gramian
        (K, K) for a :data:`GRAMIAN` scheme, the cross-Gramian (K, K) for a
        :data:`CROSS_GRAMIAN` scheme, the Jacobian (K, P) for a
        :data:`JACOBIAN` scheme, else None; a :data:`FEATURE_MAPS` scheme gets
        the feature maps' values as a fifth argument (a list of arrays, batch
        axis first); a :data:`DIRECTION` scheme returns
        ``(weights (K,), inner_state, direction (P,))``. Its results are used
        only for accepted steps (finite inputs, positive losses where required);
        on the others it gets harmless losses and Gramian but the Jacobian as
        given (maybe non-finite), so no loop over it may run without a cap.
      name: the scheme's name, used in error messages.
      requires: ``{GRAMIAN}`` for schemes that need the Gramian of the per-loss
        gradients; ``{CROSS_GRAMIAN}`` for the cross-Gramian of two batches';
        ``{JACOBIAN}`` for the per-loss gradients themselves,
        ``{JACOBIAN, DIRECTION}`` when the scheme also forms the direction,
        plus :data:`FEATURE_MAPS` when it also reads the feature maps.
      positive_losses: the scheme's maths needs L_i > ``loss_minimum``
        (ratios, logarithms or divisions by a loss): a step with any loss at
        or below it is rejected exactly like a non-finite one.
      loss_minimum: the bound of ``positive_losses`` (0; FAMO's known
        minima), a scalar or (K,), possibly traced.
      weights_sum, loss_scale: facts for :class:`WeightingProperties`.
      promises: the aggregator properties the scheme guarantees
        (:class:`AggregatorPromises`); the default promises nothing.
    """
    needs_jacobian = JACOBIAN in requires
    needs_gramian = bool(GRAMIAN_REQUIREMENTS & set(requires)) and not needs_jacobian
    gives_direction = DIRECTION in requires
    needs_feature_maps = FEATURE_MAPS in requires
    if gives_direction and not needs_jacobian:
        raise ValueError(f"covjax.{name}: a DIRECTION scheme must also require the JACOBIAN.")
    if needs_feature_maps and not needs_jacobian:
        raise ValueError(f"covjax.{name}: a FEATURE_MAPS scheme must also require the JACOBIAN.")
    if len(GRADIENT_REQUIREMENTS & set(requires)) > 1:
        raise ValueError(
            f"covjax.{name}: require one of the GRAMIAN, the CROSS_GRAMIAN or the JACOBIAN "
            "(each is passed to update on its own)."
        )
    properties = WeightingProperties(weights_sum, loss_scale, positive_losses, promises)

    def check_state(state: Any, vector: Array) -> None:
        if not isinstance(state, WeightingState):
            raise TypeError(
                f"covjax.{name}: update expects the state returned by init, got {type(state)}."
            )
        if state.scheme and state.scheme != name:
            raise TypeError(
                f"covjax.{name}: the state was made by covjax.{state.scheme}'s init, not by "
                f"covjax.{name}'s; initialise the state with the scheme that updates it."
            )
        expected = jax.tree.structure(jax.eval_shape(init_fn, vector))
        if jax.tree.structure(state.inner) != expected:
            raise TypeError(
                f"covjax.{name}: the state holds a {type(state.inner).__name__} whose structure "
                f"differs from the one this covjax.{name} makes at init (a state from a "
                "differently configured scheme, e.g. another optimizer?)."
            )

    def init(losses: Losses) -> WeightingState:
        vector, structure = flatten_losses(losses)
        k = structure.num_losses
        # Uniform weights until the first accepted step, on the scheme's scale.
        uniform = 1.0 if weights_sum == "K" else 1.0 / k
        return WeightingState(
            count=jnp.zeros((), jnp.int32),
            weights=jnp.full((k,), uniform, jnp.float32),
            inner=init_fn(vector),
            structure=structure,
            scheme=name,
        )

    def update(
        losses: Losses,
        state: WeightingState,
        gramian: Array | None = None,
        jacobian: Array | None = None,
        feature_maps: Sequence[Array] | None = None,
    ) -> tuple[Weights | Aggregation, WeightingState]:
        vector, structure = flatten_losses(losses)
        check_state(state, vector)
        if structure != state.structure:
            raise ValueError(
                f"covjax.{name}: update got {structure.describe()}, but the state was "
                f"initialised with {state.structure.describe()}."
            )
        k = structure.num_losses
        finite = jnp.all(jnp.isfinite(vector))
        if positive_losses:
            # A loss at or below its minimum has no ratio or logarithm: the
            # step is rejected like a non-finite one (never a huge weight).
            finite = finite & jnp.all(vector > jnp.asarray(loss_minimum, vector.dtype))
        # Rejected steps are discarded below; feed the scheme harmless values
        # so that iterative solvers do not spin on NaNs meanwhile.
        safe_vector = jnp.where(finite, vector, jnp.ones_like(vector) + loss_minimum)
        if needs_gramian:
            if gramian is None:
                what = "cross-Gramian" if CROSS_GRAMIAN in requires else "Gramian"
                raise ValueError(
                    f"covjax.{name} needs the {what} of the per-loss gradients: call "
                    "update(losses, state, gramian=G) or use covjax.value_and_grad."
                )
            gramian = jnp.asarray(gramian)
            if gramian.shape != (k, k):
                raise ValueError(
                    f"covjax.{name}: gramian has shape {gramian.shape}, expected ({k}, {k})."
                )
            gramian = gramian.astype(jnp.promote_types(gramian.dtype, jnp.float32))
            gramian_finite = jnp.all(jnp.isfinite(gramian))
            finite = finite & gramian_finite
            gramian = jnp.where(gramian_finite, gramian, jnp.eye(k, dtype=gramian.dtype))
        gradients = gramian
        if needs_jacobian:
            if jacobian is None:
                raise ValueError(
                    f"covjax.{name} needs the per-loss gradients: call "
                    "update(losses, state, jacobian=J) with J of shape (K, P), or use "
                    "covjax.value_and_grad."
                )
            jacobian = jnp.asarray(jacobian)
            if jacobian.ndim != 2 or jacobian.shape[0] != k:
                raise ValueError(
                    f"covjax.{name}: jacobian has shape {jacobian.shape}, expected ({k}, P): "
                    "one flattened gradient per loss."
                )
            gradients = jacobian.astype(jnp.promote_types(jacobian.dtype, jnp.float32))
            # Passed on as it is, unlike the Gramian: cleaning it would copy all K×P entries
            # each step, and what a non-finite one yields is discarded with the step.
            finite = finite & _all_finite(gradients)
        if needs_feature_maps:
            maps = _checked_feature_maps(name, feature_maps, gradients.shape[1])
            finite = finite & jnp.all(jnp.stack([jnp.all(jnp.isfinite(z)) for z in maps]))
            outputs = update_fn(safe_vector, state.inner, state.count, gradients, maps)
        else:
            outputs = update_fn(safe_vector, state.inner, state.count, gradients)
        new_weights, new_inner = outputs[:2]
        new_weights = new_weights.astype(state.weights.dtype)
        accept = finite & jnp.all(jnp.isfinite(new_weights))
        if gives_direction:
            direction = outputs[2]
            accept = accept & jnp.all(jnp.isfinite(direction))
        keep = lambda new, old: jnp.where(accept, new, old)  # noqa: E731
        new_state = WeightingState(
            count=state.count + accept.astype(jnp.int32),
            weights=keep(new_weights, state.weights),
            inner=jax.tree.map(keep, new_inner, state.inner),
            structure=state.structure,
            scheme=state.scheme,
        )
        weights = structure.unflatten(new_state.weights)
        if gives_direction:
            return Aggregation(weights, jnp.where(accept, direction, 0.0)), new_state
        return weights, new_state

    return Weighting(init=init, update=update, requires=frozenset(requires), properties=properties)


def _checked_feature_maps(
    name: str, feature_maps: Sequence[Array] | None, num_columns: int
) -> list[Array]:
    """The feature maps of a :data:`FEATURE_MAPS` scheme's update, checked against J's columns."""
    if feature_maps is None:
        raise ValueError(
            f"covjax.{name} needs the feature maps whose per-loss gradients the Jacobian holds: "
            "call update(losses, state, jacobian=J, feature_maps=[z, ...]), or use "
            "covjax.value_and_grad with wrt=nnx.Perturbation (or feature_maps=True)."
        )
    maps = [jnp.asarray(z) for z in feature_maps]
    sizes = [z.size for z in maps]
    if not maps or sum(sizes) != num_columns or any(z.ndim < 1 for z in maps):
        raise ValueError(
            f"covjax.{name}: feature maps of shapes {[z.shape for z in maps]} ({sum(sizes)} "
            f"entries, each with a batch axis first) do not match the Jacobian's {num_columns} "
            "columns."
        )
    return maps


def _all_finite(array: Array) -> Array:
    """``jnp.all(jnp.isfinite(array))`` at the cost of one sum over a large array.

    The sum is finite when every entry is, so the entry-wise test (which
    XLA:CPU runs as a K × P boolean array and a cascade of reductions, 5× the
    sum's time) runs only when it is not: an overflowing sum of finite entries.
    """
    return jax.lax.cond(
        jnp.isfinite(jnp.sum(array)),
        lambda: jnp.asarray(True),
        lambda: jnp.all(jnp.isfinite(array)),
    )


def stateless(
    weights_fn: FlatWeights,
    *,
    name: str,
    requires: Collection[str] = frozenset(),
    positive_losses: bool = False,
    weights_sum: WeightsSum | None = None,
    loss_scale: LossScale | None = None,
    promises: AggregatorPromises = NO_PROMISES,
) -> Weighting:
    """A scheme that keeps no state of its own, as ``optax.stateless`` builds a transformation.

    ``weights_fn(losses (K,), gramian (K,K) | None) -> weights (K,)``; the
    scheme's inner state is ``optax.EmptyState()``. The other arguments are
    those of :func:`make_weighting`.
    """

    def init_fn(losses: Array) -> optax.EmptyState:
        del losses
        return optax.EmptyState()

    def update_fn(
        losses: Array, inner: optax.EmptyState, count: Array, gramian: Array | None
    ) -> tuple[Array, optax.EmptyState]:
        del count
        return weights_fn(losses, gramian), inner

    return make_weighting(
        init_fn,
        update_fn,
        name=name,
        requires=requires,
        positive_losses=positive_losses,
        weights_sum=weights_sum,
        loss_scale=loss_scale,
        promises=promises,
    )


def step_accepted(old: WeightingState, new: WeightingState) -> Array:
    """Whether the update from ``old`` to ``new`` accepted its losses.

    False for a step with a non-finite loss or Gramian entry, or a loss ≤ 0
    for a scheme with ``properties.positive_losses``.
    """
    return new.count > old.count


def weighted_sum(losses: Losses, weights: Weights) -> Array:
    """``Σ stop_gradient(w_i) · L_i`` in at least float32."""
    loss_vector, loss_structure = flatten_losses(losses)
    weight_vector, weight_structure = flatten_losses(weights)
    if loss_structure.num_losses != weight_structure.num_losses or (
        not weight_structure.is_vector and weight_structure.treedef != loss_structure.treedef
    ):
        raise ValueError(
            f"covjax.weighted_sum: weights are {weight_structure.describe()} but losses are "
            f"{loss_structure.describe()}."
        )
    return jnp.sum(jax.lax.stop_gradient(weight_vector).astype(loss_vector.dtype) * loss_vector)
