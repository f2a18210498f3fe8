"""Grouped pull-backs (loss groups) against the one-batch engine and a float64 loop.

The network below has a shared trunk, a coarse branch (one conv) and a fine
branch (two convs and a matrix product, on a bigger map), and its losses are a
dict: the coarse losses never reach the fine branch, so pulling the groups
back separately is cheaper, and must give the same Gramian.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import covjax
from covjax._src import gradients, program


def conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def make_params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> jax.Array:
        return jnp.asarray(rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1])), jnp.float32)

    return {
        "trunk": normal(3, 3, 2, 4),
        "coarse": normal(3, 3, 4, 2),
        "fine1": normal(3, 3, 4, 8),
        "fine2": normal(3, 3, 8, 8),
        "fine_dense": normal(8, 2),
    }


def representation(params: dict, images: jax.Array) -> jax.Array:
    return jnp.tanh(conv(images, params["trunk"]))  # (B, 8, 8, 4)


def heads(params: dict, z: jax.Array, images: jax.Array) -> dict:
    coarse = jnp.tanh(conv(z[:, ::2, ::2], params["coarse"]))  # (B, 4, 4, 2)
    fine_map = jax.image.resize(z, (z.shape[0], 16, 16, 4), "bilinear")
    fine = jnp.tanh(conv(jnp.tanh(conv(fine_map, params["fine1"])), params["fine2"]))
    fine = fine @ params["fine_dense"]  # (B, 16, 16, 2)
    target = jnp.mean(images)
    return {
        "coarse": {"a": jnp.mean((coarse[..., 0] - target) ** 2), "b": jnp.mean(coarse[..., 1])},
        "fine": {"a": jnp.mean((fine[..., 0] - target) ** 2), "b": jnp.mean(fine[..., 1] ** 2)},
        "both": jnp.mean(coarse) * jnp.mean(fine),
    }


def loss_fn(params: dict, images: jax.Array) -> dict:
    return heads(params, representation(params, images), images)


def marked_loss(params: dict, images: jax.Array) -> dict:
    """loss_fn with z marked by a zero leaf (the plain-pytree way to gradients w.r.t. z)."""
    return heads(params, representation(params, images) + params["representation"], images)


def images(seed: int = 1) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (2, 8, 8, 2))


def trace(fn, primal) -> program.TracedProgram:
    """The walked program of ``fn`` (which returns losses), every leaf selected."""
    leaves, treedef = jax.tree.flatten(primal)
    closed, out_shape = jax.make_jaxpr(
        lambda *flat: jax.tree.leaves(fn(jax.tree.unflatten(treedef, flat))), return_shape=True
    )(*leaves)
    return program.walk(closed, [True] * len(leaves), len(out_shape))


def oracle_gramian(fn, primal) -> np.ndarray:
    """Gramian of a Python loop of jax.grad, one loss at a time, reduced in float64 NumPy."""
    names = covjax.loss_names(fn(primal))
    rows = []
    for name in names:
        grads = jax.grad(lambda p, name=name: covjax.named(fn(p))[name])(primal)
        rows.append(np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)]))
    jacobian = np.stack(rows).astype(np.float64)
    return jacobian @ jacobian.T


def test_groups_follow_the_branches_each_loss_reaches() -> None:
    params, x = make_params(), images()
    traced = trace(lambda p: loss_fn(p, x), params)
    groups = traced.groups([True] * len(jax.tree.leaves(params)))
    # Leaves in key order: both, coarse/a, coarse/b, fine/a, fine/b.
    assert groups is not None
    assert sorted(groups) == [(0,), (1, 2), (3, 4)]


def test_no_groups_when_every_loss_reaches_everything_or_saving_is_small() -> None:
    params, x = make_params(), images()
    mask = [True] * len(jax.tree.leaves(params))

    def stacked(p: dict) -> jax.Array:  # one output: nothing to split
        return jnp.stack(jax.tree.leaves(loss_fn(p, x)))

    traced = trace(stacked, params)
    # The walk follows the stacked losses entry by entry (each reaches its own leaves), but
    # products are per whole value: every entry runs through every product, so one cone.
    assert len(traced.loss_leaves) == 5 and len(set(traced.loss_leaves)) > 1
    assert traced.groups(mask) is None
    traced = trace(lambda p: loss_fn(p, x), params)
    assert traced.groups(mask, min_saving=0.99) is None
    assert traced.groups(mask, max_groups=2) is None
    # Only the coarse kernel differentiated: the fine losses have no backward pass at all.
    only_coarse = [name == "coarse" for name in sorted(params)]
    assert sorted(traced.groups(only_coarse)) == [(0, 1, 2), (3, 4)]


def test_no_groups_when_a_shared_trunk_dominates() -> None:
    rng = np.random.default_rng(0)
    trunk, tiny_heads = (
        jnp.asarray(rng.normal(size=(64, 64))),
        jnp.asarray(rng.normal(size=(64, 3))),
    )
    x = jnp.asarray(rng.normal(size=(32, 64)))

    def fn(p: dict) -> dict:
        h = jnp.tanh(x @ p["trunk"])
        return {f"task{i}": jnp.mean(h @ p["heads"][:, i]) for i in range(3)}

    traced = trace(fn, {"heads": tiny_heads, "trunk": trunk})
    # Three groups (one head each), but the shared 32×64×64 product is in every cone.
    assert traced.groups([True, True]) is None
    # Differentiating the heads alone, the groups do pay.
    assert sorted(traced.groups([True, False])) == [(0,), (1,), (2,)]


def test_equation_cost_counts_multiply_adds() -> None:
    x, w = jnp.ones((4, 8, 8, 3)), jnp.ones((3, 3, 3, 5))
    (eqn,) = jax.make_jaxpr(conv)(x, w).jaxpr.eqns
    assert program.equation_cost(eqn) == 4 * 8 * 8 * 5 * (3 * 3 * 3)
    (eqn,) = jax.make_jaxpr(jnp.matmul)(jnp.ones((6, 7)), jnp.ones((7, 2))).jaxpr.eqns
    assert program.equation_cost(eqn) == 6 * 2 * 7
    nested = jax.make_jaxpr(jax.jit(jnp.matmul))(jnp.ones((6, 7)), jnp.ones((7, 2)))
    assert program.equation_cost(nested.jaxpr.eqns[0]) == 6 * 2 * 7


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_grouped_gramian_matches_the_batched_engine_and_the_oracle(chunk_size) -> None:
    params, x = make_params(), images()
    fn = lambda p: loss_fn(p, x)  # noqa: E731
    expected = oracle_gramian(fn, params)
    for group in (True, False):
        with gradients._engine_options(group_losses=group):
            _, gramian, _ = gradients.per_loss_gramian(loss_fn, params, x, chunk_size=chunk_size)
        np.testing.assert_allclose(np.asarray(gramian), expected, rtol=2e-4, atol=1e-6)


def test_grouped_representation_gramian_matches_the_oracle() -> None:
    params, x = make_params(), images()
    z = representation(params, x)
    expected = oracle_gramian(lambda rep: heads(params, rep, x), z)
    marked = {**params, "representation": jnp.zeros_like(z)}
    _, gramian, _ = gradients.per_loss_gramian(marked_loss, marked, x, wrt="representation")
    np.testing.assert_allclose(np.asarray(gramian), expected, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("use_representation", [False, True])
def test_value_and_grad_is_the_same_with_and_without_groups(use_representation: bool) -> None:
    params, x = make_params(), images()
    fn, options = (marked_loss, {"wrt": "representation"}) if use_representation else (loss_fn, {})
    if use_representation:
        params = {**params, "representation": jnp.zeros_like(representation(params, x))}
    scheme = covjax.mgda()
    results = []
    # An identity, so in float64: the float32 Gramians' reordered sums would otherwise reach
    # the weights amplified by the min-norm problem's conditioning (4e-5 seen on an EPYC).
    with jax.enable_x64(True):
        params, x = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (params, x))
        for group in (True, False):
            with gradients._engine_options(group_losses=group):
                step = jax.jit(covjax.value_and_grad(fn, scheme, **options))
                results.append(step(params, scheme.init(loss_fn(params, x)), x))
    (out_a, grads_a), (out_b, grads_b) = results
    # Left: the weights' float32 rounding (one ulp), and that of Σ w_i ∇L_i.
    eps32 = float(np.finfo(np.float32).eps)
    chex.assert_trees_all_close(out_a.weights, out_b.weights, rtol=2 * eps32, atol=2 * eps32)
    chex.assert_trees_all_close(grads_a, grads_b, rtol=1e-5, atol=1e-7)


class TwoHeads(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.trunk = nnx.Linear(3, 16, rngs=rngs)
        self.norm = nnx.BatchNorm(16, rngs=rngs)
        self.first = nnx.Linear(16, 64, rngs=rngs)
        self.first_out = nnx.Linear(64, 1, rngs=rngs)
        self.second = nnx.Linear(16, 64, rngs=rngs)
        self.second_out = nnx.Linear(64, 1, rngs=rngs)

    def encode(self, x: jax.Array) -> jax.Array:
        return self.norm(jnp.tanh(self.trunk(x)))

    def losses(self, z: jax.Array, y: jax.Array) -> dict:
        first = self.first_out(jnp.tanh(self.first(z)))[:, 0]
        second = self.second_out(jnp.tanh(self.second(z)))[:, 0]
        return {"first": jnp.mean((first - y) ** 2), "second": jnp.mean((second + y) ** 2)}


class MarkedTwoHeads(TwoHeads):
    def __call__(self, x: jax.Array, y: jax.Array) -> dict:
        return self.losses(self.perturb("representation", self.encode(x)), y)


def test_nnx_module_heads_are_grouped_with_the_same_result() -> None:
    x = jax.random.normal(jax.random.key(0), (8, 3))
    y = jnp.sin(x[:, 0])
    scheme = covjax.mgda()
    results = []
    for group in (True, False):
        model = MarkedTwoHeads(nnx.Rngs(0))
        with gradients._engine_options(group_losses=group):
            step = covjax.value_and_grad(lambda m, x, y: m(x, y), scheme, wrt=nnx.Perturbation)
            out, grads = nnx.jit(step)(model, scheme.init({"first": 0.0, "second": 0.0}), x, y)
        results.append((out.weights, grads, nnx.state(model, nnx.BatchStat)))
    chex.assert_trees_all_close(results[0], results[1], rtol=1e-5, atol=1e-6)
    # Each loss reaches only its own head from z: two groups.
    model = TwoHeads(nnx.Rngs(0))
    z = model.encode(x)
    traced = trace(lambda rep: model.losses(rep, y), z)
    assert sorted(traced.groups([True])) == [(0,), (1,)]
