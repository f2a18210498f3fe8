"""SDMGrad: the inner loop against an explicit-gradient oracle, its limits, and the recipe
(cross-Gramian of two independent batches) of its docstring, run as written."""

from __future__ import annotations

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from aggregator_cases import run64, two_batches, vmapped_weights64
from oracles import gramian_aggregators as oracle

import covjax


@pytest.mark.parametrize("lamda", [0.0, 0.3, 2.0])
def test_sdmgrad_matches_the_oracle_at_k32(lamda: float) -> None:
    batches = [two_batches(seed) for seed in range(3)]
    got = run64(covjax.sdmgrad(lamda), [a @ b.T for a, b in batches])
    simplex = np.full(32, 1 / 32)
    for (a, b), weights in zip(batches, got, strict=True):
        want, simplex = oracle.sdmgrad(a, b, simplex, lamda, 20, 5.0, 0.5)
        np.testing.assert_allclose(weights, want, rtol=0, atol=1e-5 * want.max())
        np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)


def test_sdmgrad_with_a_preference_vector() -> None:
    a, b = two_batches(8, k=32)
    preference = np.random.default_rng(0).dirichlet(np.ones(32))
    (weights,) = run64(covjax.sdmgrad(1.0, pref_vector=jnp.asarray(preference)), [a @ b.T])
    want, _ = oracle.sdmgrad(a, b, np.full(32, 1 / 32), 1.0, 20, 5.0, 0.5, preference)
    np.testing.assert_allclose(weights, want, rtol=0, atol=1e-5 * want.max())


def test_sdmgrad_without_pull_converges_to_mgda() -> None:
    """λ = 0 on the Gramian of one batch: the inner problem is MGDA's min-norm point."""
    a, _ = two_batches(4, k=8)
    gramian = a @ a.T
    (weights,) = run64(
        covjax.sdmgrad(0.0, num_steps=3000, learning_rate=0.5, momentum=0.5), [gramian]
    )
    with jax.enable_x64(True):
        mgda = np.asarray(covjax.min_norm_solver(jnp.asarray(gramian)), np.float64)
    np.testing.assert_allclose(weights @ gramian @ weights, mgda @ gramian @ mgda, rtol=1e-5)


def test_sdmgrad_vmaps_over_lamda() -> None:
    a, b = two_batches(5, k=6)
    lamdas = np.array([0.0, 0.5, 3.0])
    batched = vmapped_weights64(covjax.sdmgrad, lamdas, a @ b.T)
    for row, lamda in zip(batched, lamdas, strict=True):
        want, _ = oracle.sdmgrad(a, b, np.full(6, 1 / 6), lamda, 20, 5.0, 0.5)
        np.testing.assert_allclose(row, want, rtol=0, atol=1e-5 * want.max())


def docstring_example(constructor) -> str:
    """The indented code block after "Example ...::" in a constructor's docstring."""
    doc = constructor.__doc__
    lines = doc[doc.index("::\n", doc.index("Example")) + 3 :].splitlines()
    first = next(line for line in lines if line.strip())
    indent = len(first) - len(first.lstrip())
    block = []
    for line in lines:
        if line.strip() and len(line) - len(line.lstrip()) < indent:
            break
        block.append(line)
    return textwrap.dedent("\n".join(block))


@pytest.mark.parametrize("constructor", [covjax.sdmgrad, covjax.modo])
def test_the_docstring_recipe_runs_and_trains(constructor) -> None:
    namespace: dict = {}
    exec(compile(docstring_example(constructor), "<docstring>", "exec"), namespace)
    params, key, sample, loss_fn = (namespace[n] for n in ("params", "key", "sample", "loss_fn"))
    state, k = namespace["state"], namespace["losses"].shape[0]
    assert int(state.count) == 100  # every step accepted
    start = {"trunk": 0.5 * jax.random.normal(key, (4, 8)), "heads": jnp.zeros((8, k))}
    test_batch = sample(jax.random.PRNGKey(99))
    before, after = loss_fn(start, *test_batch), loss_fn(params, *test_batch)
    assert np.all(np.asarray(after) < 0.5 * np.asarray(before)), (before, after)
    # The cross-Gramian of the recipe is J(ξ) J(ξ')ᵀ of the explicit per-loss gradients.
    batch_a, batch_b = sample(jax.random.PRNGKey(1)), sample(jax.random.PRNGKey(2))
    _, jacobian_a, _ = covjax.per_loss_jacobian(loss_fn, params, *batch_a)
    _, jacobian_b, _ = covjax.per_loss_jacobian(loss_fn, params, *batch_b)

    def explicit(batch) -> np.ndarray:
        per_leaf = jax.jacrev(lambda p: loss_fn(p, *batch))(params)
        return np.concatenate([np.reshape(v, (k, -1)) for v in jax.tree.leaves(per_leaf)], axis=1)

    explicit_a, explicit_b = explicit(batch_a), explicit(batch_b)
    want = np.asarray(explicit_a, np.float64) @ np.asarray(explicit_b, np.float64).T
    got = np.asarray(covjax.cross_gramian(jacobian_a, jacobian_b))
    # float32 products of P = 56 terms: ~P·eps32 of the largest |C_ij| bound.
    np.testing.assert_allclose(got, want, rtol=0, atol=64 * 1.2e-7 * np.abs(want).max())


def test_cross_gramian_rejects_mismatched_jacobians() -> None:
    with pytest.raises(ValueError, match="same structure and shapes"):
        covjax.cross_gramian({"w": jnp.ones((3, 4))}, {"w": jnp.ones((3, 5))})
    with pytest.raises(ValueError, match="same structure and shapes"):
        covjax.cross_gramian({"w": jnp.ones((3, 4))}, {"v": jnp.ones((3, 4))})


def test_sdmgrad_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="lamda must be ≥ 0"):
        covjax.sdmgrad(-0.1)
    with pytest.raises(ValueError, match="num_steps must be an int ≥ 1"):
        covjax.sdmgrad(num_steps=0)
