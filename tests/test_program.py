"""The plan's walk index by index: which entry of a stacked value each loss reads.

Per-task copies of z stacked into ONE batched head (one ``dot_general`` with a
batch axis instead of K small products) are block-diagonal only if the walk
follows the stacked axis through the head to the entry each loss indexes.
The unit tests check the walk's masks on small programs; the end-to-end
tests check MGDA-UB on such a model, and on one whose heads read two copies
each (not block-diagonal), against a float64 oracle built from ``jax.grad``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from oracles import gradient_schemes as oracle
from precision import assert_trees_close64, float64

import covjax
from covjax._src import block_diagonal, gradients, program

K = 3
BATCH, INPUTS, WIDTH, CLASSES = 6, 4, 5, 3


def reached(fn: Callable[..., tuple[jax.Array, ...]], *args: jax.Array) -> list[set[int]]:
    """Per output of ``fn(*args)``, the positions of the arguments the walk finds it reads."""
    closed = jax.make_jaxpr(fn)(*args)
    traced = program.walk(closed, [True] * len(args), num_losses=len(closed.jaxpr.outvars))
    return [{i for i in range(len(args)) if mask >> i & 1} for mask in traced.loss_leaves]


def copies_and_z(seed: int = 0) -> tuple[jax.Array, ...]:
    """K copies (BATCH, WIDTH), then z of the same shape."""
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=(BATCH, WIDTH))) for _ in range(K + 1))


HEAD = jnp.asarray(np.random.default_rng(1).normal(size=(K, WIDTH, CLASSES)))
Z = K  # z's position among copies_and_z's arguments
MIXING = jnp.asarray(np.random.default_rng(2).normal(size=(K, K)))


# --- the walk's per-index masks ---


def test_stack_elementwise_batched_product_index() -> None:
    def fn(*args: jax.Array) -> tuple[jax.Array, ...]:
        *copies, z, w = args
        zs = jnp.exp(jnp.stack([z + c for c in copies]) * 2.0)  # (K, B, D)
        out = jnp.einsum("kbd,kdc->kbc", zs, w) + jnp.sum(w, axis=1)[:, None]
        return tuple(jnp.sum(out[k]) for k in range(K))

    # Loss k reads copy k, z and the (whole) stacked kernel: only its own copy.
    assert reached(fn, *copies_and_z(), HEAD) == [{k, Z, K + 1} for k in range(K)]


def test_axis_moved_by_transpose_and_reshape() -> None:
    def fn(*args: jax.Array) -> tuple[jax.Array, ...]:
        *copies, z = args
        zs = jnp.stack([z * c for c in copies]).transpose(1, 0, 2)  # (B, K, D)
        zs = zs.reshape(BATCH, K, 1, WIDTH).sum(axis=(0, 2))  # (K, D), summed over the rest
        return tuple(jnp.sum(zs[:, None, :][k]) for k in range(K))

    assert reached(fn, *copies_and_z()) == [{k, Z} for k in range(K)]


def test_concatenate_in_a_nested_jit_and_constant_dynamic_slices() -> None:
    def fn(*args: jax.Array) -> tuple[jax.Array, ...]:
        *copies, z = args
        zs = jnp.stack([z + c for c in copies])
        zs = zs + jnp.roll(zs, -1, axis=0)  # a nested jit of two slices and a concatenate
        first = jnp.sum(jax.lax.dynamic_slice_in_dim(zs, 0, 1))
        clamped = jnp.sum(jax.lax.dynamic_slice_in_dim(zs, 7, 1))  # start clamped to K - 1
        # The start computed inside a nested jit is not a constant there: merged.
        computed = jnp.sum(jax.lax.dynamic_index_in_dim(zs, 0, keepdims=False))
        return first, clamped, computed

    assert reached(fn, *copies_and_z()) == [{0, 1, Z}, {K - 1, 0, Z}, set(range(K + 1))]


def test_batched_cross_entropy_per_entry_of_a_loss_array() -> None:
    labels = jnp.zeros((K, BATCH), jnp.int32)

    def fn(*args: jax.Array) -> jax.Array:
        *copies, z = args
        logits = jnp.stack([z + c for c in copies])  # (K, B, D)
        # take_along_axis gathers along batching axes; the label term is then indexed [..., 0].
        cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return jnp.mean(cross_entropy, axis=1)  # (K,)

    closed = jax.make_jaxpr(fn)(*copies_and_z())
    traced = program.walk(closed, [True] * (K + 1), num_losses=1)
    assert traced.loss_leaves == [1 << k | 1 << Z for k in range(K)]
    assert [traced.reach(k) for k in range(K + 1)] == [1, 2, 4, 7]


def test_a_value_read_whole_joins_every_index() -> None:
    def fn(*args: jax.Array) -> tuple[jax.Array, ...]:
        *copies, z = args
        zs = jnp.stack([z + c for c in copies])  # (K, B, D)
        zs = zs * jnp.sum(copies[0]) + copies[1][None]  # a scalar, a size-1 axis broadcast
        return tuple(jnp.sum(zs[k]) for k in range(K))

    assert reached(fn, *copies_and_z()) == [{0, 1, Z}, {0, 1, Z}, {0, 1, 2, Z}]


def _nested_jit_doubling(zs: jax.Array) -> jax.Array:
    return jax.jit(lambda v: v * 2.0)(zs)


@pytest.mark.parametrize(
    ("mix", "kept"),
    [
        (lambda zs: jnp.cumsum(zs, axis=0), False),  # no rule: merged
        (lambda zs: zs[jnp.array([2, 0, 1])], False),  # a gather: merged
        (lambda zs: jnp.einsum("kbd,kj->jbd", zs, MIXING), False),  # contracted over k
        (lambda zs: zs.reshape(BATCH, K, WIDTH).transpose(1, 0, 2), False),  # not a transpose
        (lambda zs: jax.checkpoint(lambda v: v * 2.0)(zs), False),  # remat: merged
        (_nested_jit_doubling, True),  # a nested jit's body is walked: kept
    ],
    ids=["cumsum", "gather", "contracted", "reshape-mixing", "remat", "nested-jit"],
)
def test_ops_that_may_mix_the_indices_merge_them(
    mix: Callable[[jax.Array], jax.Array], kept: bool
) -> None:
    def fn(*args: jax.Array) -> tuple[jax.Array, ...]:
        *copies, z = args
        mixed = mix(jnp.stack([z + c for c in copies]))
        return tuple(jnp.sum(mixed[k]) for k in range(K))

    want = [{k, Z} for k in range(K)] if kept else [set(range(K + 1))] * K
    assert reached(fn, *copies_and_z()) == want


# --- MGDA-UB on per-task copies stacked into one batched head ---


def stacked_heads_loss(
    params: dict, x: jax.Array, labels: jax.Array, cross: bool, vector: bool
) -> tuple[jax.Array, ...] | jax.Array:
    """K cross-entropies of one batched head over K stacked copies of z (zero leaves added to
    z); ``cross``: head k reads copy k and copy (k + 1) mod K; ``vector``: one (K,) array of
    losses (a batched cross-entropy), else a tuple of K scalars (head k's entry indexed)."""
    z = jnp.tanh(x @ params["trunk"]["w"] + params["trunk"]["b"])
    zs = jnp.stack([z + copy for copy in params["copies"]])  # (K, B, D)
    if cross:
        zs = zs + 0.5 * jnp.concatenate([zs[1:], zs[:1]])
    logits = jnp.einsum("kbd,kdc->kbc", zs, params["heads"]["w"]) + params["heads"]["b"][:, None]
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels
    if vector:
        return jnp.mean(cross_entropy(logits, labels.T), axis=1)
    return tuple(jnp.mean(cross_entropy(logits[k], labels[:, k])) for k in range(K))


def traced_with_copies(
    loss_fn: Callable[..., Any], params: dict, x: jax.Array, labels: jax.Array
) -> tuple[Any, Any, gradients.Plan]:
    """``loss_fn``'s differentiable target w.r.t. its copies, its jaxpr over the target's
    leaves and the engine's plan for it."""
    target = gradients.differentiable(loss_fn, params, (x, labels), {}, has_aux=False, wrt="copies")
    leaves, treedef = jax.tree.flatten(target.primal)
    closed = jax.make_jaxpr(lambda *ls: target.fn(jax.tree.unflatten(treedef, ls)))(*leaves)
    return target, closed, gradients.prepare(target.fn, target.primal, target.selected).plan


def stacked_heads_problem() -> tuple[dict, jax.Array, jax.Array]:
    rng = np.random.default_rng(3)
    params = {
        "trunk": {
            "w": jnp.asarray(rng.normal(size=(INPUTS, WIDTH))),
            "b": jnp.asarray(rng.normal(size=WIDTH) * 0.1),
        },
        "heads": {
            "w": jnp.asarray(rng.normal(size=(K, WIDTH, CLASSES))),
            "b": jnp.asarray(rng.normal(size=(K, CLASSES)) * 0.1),
        },
        "copies": [jnp.zeros((BATCH, WIDTH))] * K,
    }
    x = jnp.asarray(rng.normal(size=(BATCH, INPUTS)))
    labels = jnp.asarray(rng.integers(0, CLASSES, size=(BATCH, K)), jnp.int32)
    return params, x, labels


@pytest.mark.parametrize("vector", [False, True], ids=["scalar-losses", "loss-array"])
@pytest.mark.parametrize("cross", [False, True], ids=["own-copy", "two-copies"])
def test_mgda_ub_on_stacked_copies_against_a_float64_oracle(cross: bool, vector: bool) -> None:
    scheme = covjax.mgda()

    def loss_fn(p: dict, x: jax.Array, labels: jax.Array) -> tuple[jax.Array, ...] | jax.Array:
        return stacked_heads_loss(p, x, labels, cross, vector)

    with jax.enable_x64(True):
        params, x, labels = float64(stacked_heads_problem())
        target, closed, plan = traced_with_copies(loss_fn, params, x, labels)
        copies = [i for i, name in enumerate(target.names) if name.startswith("copies/")]
        # Own copies: each reached by its loss only (one pull-back of Σ L_k gives all K rows);
        # a head reading two copies makes neither private.
        assert plan.owners == ({} if cross else {i: k for k, i in enumerate(copies)})
        assert plan.copies == (tuple(copies),)
        # Every loss reads the batched head: the shared/private split cannot serve the copies;
        # the cut where they are added to z does, when each is private.
        assert block_diagonal.split(closed, K, target.selected) is None
        num_outputs = len(closed.jaxpr.outvars)
        cut = block_diagonal.cut_at_copies(closed, num_outputs, copies, plan.owners)
        assert (cut is None) == cross

        step = jax.jit(covjax.value_and_grad(loss_fn, scheme, wrt="copies"))
        out, grads = step(params, scheme.init(loss_fn(params, x, labels)), x, labels)

        # Oracle: ∂L_k/∂z by K jax.grad calls, the exact min-norm point of their Gramian, and
        # the gradient of the weighted sum by one jax.grad.
        def loss_of_z(z_offset: jax.Array, k: int) -> jax.Array:
            return loss_fn({**params, "copies": [z_offset] * K}, x, labels)[k]

        zero = params["copies"][0]
        rows = np.stack([np.ravel(jax.grad(loss_of_z)(zero, k)) for k in range(K)])
        _, alpha = oracle.min_norm_by_enumeration(rows @ rows.T)
        weights = np.asarray(jax.tree.leaves(out.weights)).ravel()
        # Frank–Wolfe stops once a step moves α by less than its tolerance (1e-5, ℓ1).
        np.testing.assert_allclose(weights, alpha, atol=1e-5)
        assert np.ptp(weights) > 1e-3

        def weighted(p: dict) -> jax.Array:
            return jnp.sum(weights * jnp.stack(jax.tree.leaves(loss_fn(p, x, labels))).ravel())

        want = jax.grad(weighted)(params)
        assert_trees_close64(
            {key: grads[key] for key in ("trunk", "heads")},
            {key: want[key] for key in ("trunk", "heads")},
        )


def test_copy_cut_pull_backs_match_jax_vjp() -> None:
    """The cut's one pull-back gives each copy its loss's gradient, and its weighted pull-back
    equals ``jax.vjp``'s for any cotangent (an integer leaf and an aux output beside)."""

    def loss_fn(params: dict, x: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
        return stacked_heads_loss(params, x, labels, False, True), params["count"] + 1

    with jax.enable_x64(True):
        params, x, labels = float64(stacked_heads_problem())
        params = {**params, "count": jnp.asarray(3, jnp.int32)}
        leaves, treedef = jax.tree.flatten(params)
        copies = list(range(K))  # "copies" sorts first among the keys
        assert gradients.select_leaves(params, "copies")[0] == [True] * K + [False] * 5

        def flat_fn(*flat: jax.Array) -> tuple[jax.Array, jax.Array]:
            return loss_fn(jax.tree.unflatten(treedef, flat), x, labels)

        closed = jax.make_jaxpr(flat_fn)(*leaves)
        cut = block_diagonal.cut_at_copies(closed, 1, copies, {k: k for k in copies})
        assert cut is not None
        cut_pass = block_diagonal.run_cut(cut, leaves)
        losses = flat_fn(*leaves)[0]
        assert_trees_close64(cut_pass.outputs[0], losses)
        assert int(cut_pass.outputs[1]) == 4
        for k in range(K):
            want = jax.grad(lambda *flat, k=k: flat_fn(*flat)[0][k], argnums=k)(*leaves)
            assert_trees_close64(cut_pass.summed[k], want)
        _, vjp = jax.vjp(lambda *flat: flat_fn(*flat)[0], *leaves)
        floats = [i for i, leaf in enumerate(leaves) if leaf.dtype == jnp.float64]
        for cotangent in (np.ones(K), np.array([0.2, -1.5, 0.7])):
            want = vjp(jnp.asarray(cotangent))
            got = cut_pass.weighted([jnp.asarray(cotangent)])
            assert_trees_close64([got[i] for i in floats], [want[i] for i in floats])


def test_z_read_beside_its_copies_is_not_cut() -> None:
    """z also read whole (by every head): the copies stay private, the cut does not apply, and
    the weighted gradient (from the general block-diagonal path) is still the exact one."""

    def loss_fn(params: dict, x: jax.Array, labels: jax.Array) -> jax.Array:
        z = jnp.tanh(x @ params["trunk"]["w"] + params["trunk"]["b"])
        zs = jnp.stack([z + copy for copy in params["copies"]]) + 0.1 * jnp.sin(z)
        return jnp.mean(jnp.einsum("kbd,kdc->kbc", zs, params["heads"]["w"]) ** 2, axis=(1, 2))

    scheme = covjax.mgda()
    with jax.enable_x64(True):
        params, x, labels = float64(stacked_heads_problem())
        _, closed, plan = traced_with_copies(loss_fn, params, x, labels)
        assert plan.owners == {k: k for k in range(K)}
        assert block_diagonal.cut_at_copies(closed, 1, list(range(K)), plan.owners) is None
        step = jax.jit(covjax.value_and_grad(loss_fn, scheme, wrt="copies"))
        out, grads = step(params, scheme.init(jnp.zeros(K)), x, labels)
        want = jax.grad(lambda p: jnp.sum(out.weights * loss_fn(p, x, labels)))(params)
        assert_trees_close64(
            {key: grads[key] for key in ("trunk", "heads")},
            {key: want[key] for key in ("trunk", "heads")},
        )
        assert np.ptp(np.asarray(out.weights)) > 1e-3
