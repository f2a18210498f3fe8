"""``covjax.value_and_grad``'s cross-Gramian (``covjax.CROSS_GRAMIAN``) against its definition.

C = J_a J_bᵀ with J_a, J_b the per-loss Jacobians of the loss function on the first and
second half of the batch, from :func:`covjax.per_loss_jacobian` (never factorised) and
:func:`covjax.cross_gramian`. The engine's C comes from the plan of the Gramian
(factorised Dense kernels: Σ (X_a X_bᵀ) ⊙ (Δ_a Δ_bᵀ)); these are identities, so both
sides run in float64 (:mod:`precision`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_factorized
import test_gradients
from flax import nnx
from precision import assert_trees_close64, float64

import covjax
from covjax._src import gradients


def recording_scheme() -> covjax.Weighting:
    """A CROSS_GRAMIAN scheme with constant weights 1/K whose state is the last C it got."""
    return covjax.make_weighting(
        lambda losses: jnp.zeros((losses.shape[0], losses.shape[0]), losses.dtype),
        lambda losses, state, count, cross: (jnp.full_like(losses, 1 / losses.shape[0]), cross),
        name="recording",
        requires={covjax.CROSS_GRAMIAN},
    )


def halves_cross_gramian(loss_fn, params, *args, **kwargs) -> jax.Array:
    """The definition: J(first half) J(second half)ᵀ from two per-loss Jacobians."""
    n = args[0].shape[0] // 2
    jacobians = [
        covjax.per_loss_jacobian(loss_fn, params, *(a[part] for a in args), **kwargs)[1]
        for part in (slice(None, n), slice(n, None))
    ]
    return covjax.cross_gramian(*jacobians)


@pytest.mark.parametrize("mode", ["always", "auto", "never"])
@pytest.mark.parametrize("jit", [True, False])
def test_cross_gramian_of_a_dense_network(mode: str, jit: bool) -> None:
    """A plain pytree MLP: Dense kernels factorised (or not), whole-batch losses and gradient."""
    with jax.enable_x64(True):
        params, x, y, _ = test_gradients.float64_case()
        scheme = recording_scheme()
        step = covjax.value_and_grad(test_gradients.loss_fn, scheme, wrt="encoder")
        with gradients._engine_options(factorize=mode):
            out, grads = (jax.jit(step) if jit else step)(
                params, scheme.init(test_gradients.loss_fn(params, x, y)), x, y
            )
        want = halves_cross_gramian(test_gradients.loss_fn, params, x, y, wrt="encoder")
        assert_trees_close64(out.state.inner, want)
        assert not np.allclose(want, want.T)  # a cross-Gramian, not a Gramian
        assert_trees_close64(out.losses, test_gradients.loss_fn(params, x, y))
        # The weights 1/K, stored in float32 like every scheme's.
        weights = np.array([out.weights[n] for n in test_gradients.NAMES])
        np.testing.assert_allclose(weights, 1 / test_gradients.K, rtol=test_gradients.EPS32)
        assert_trees_close64(
            test_gradients.flat(grads), test_gradients.expected_step(weights, params, x, y)
        )


@pytest.mark.parametrize("mode", ["always", "never"])
def test_cross_gramian_with_convolution_and_shared_weights(mode: str) -> None:
    """Materialised leaves (a convolution, a weight used twice) beside every tap kind."""
    with jax.enable_x64(True):
        params, x, y = float64((test_factorized.PARAMS, test_factorized.X, test_factorized.Y))
        scheme = recording_scheme()
        step = jax.jit(covjax.value_and_grad(test_factorized.loss_fn, scheme, chunk_size=2))
        with gradients._engine_options(factorize=mode):
            out, _ = step(params, scheme.init(jnp.ones(test_factorized.K)), x, y)
        assert_trees_close64(
            out.state.inner, halves_cross_gramian(test_factorized.loss_fn, params, x, y)
        )


def test_cross_gramian_of_an_nnx_module() -> None:
    """Per-task heads (one pull-back of Σ L_i), BatchNorm: each half's statistics its own;
    the module's running statistics move once, with the whole batch."""
    with jax.enable_x64(True):
        _, x, y, _ = test_gradients.float64_case()
        model = test_gradients.MultiHead(nnx.Rngs(0), dtype=jnp.float64)
        reference = nnx.clone(model)
        scheme = recording_scheme()
        step = nnx.jit(covjax.value_and_grad(test_gradients.module_loss, scheme))
        out, grads = step(model, scheme.init({n: 0.0 for n in test_gradients.NAMES}), x, y)
        want = halves_cross_gramian(test_gradients.module_loss, nnx.clone(reference), x, y)
        assert_trees_close64(out.state.inner, want)
        weights = out.weights  # 1/K in float32

        def total(m: nnx.Module) -> jax.Array:
            losses = test_gradients.module_loss(m, x, y)
            return sum(float(weights[n]) * losses[n] for n in test_gradients.NAMES)

        expected = nnx.grad(total)(nnx.clone(reference))
        assert_trees_close64(jax.tree.map(np.asarray, grads), jax.tree.map(np.asarray, expected))
        test_gradients.module_loss(reference, x, y)  # one whole-batch step of the statistics
        assert_trees_close64(model.norm.mean.value, np.asarray(reference.norm.mean.value))


def test_sdmgrad_and_modo_weigh_the_whole_batch_with_the_halves_cross_gramian() -> None:
    with jax.enable_x64(True):
        params, x, y, _ = test_gradients.float64_case()
        cross = halves_cross_gramian(test_gradients.loss_fn, params, x, y)
        losses = test_gradients.loss_fn(params, x, y)
        for scheme in (covjax.sdmgrad(), covjax.modo(gamma=0.1)):
            state = scheme.init(losses)
            out, _ = covjax.value_and_grad(test_gradients.loss_fn, scheme)(params, state, x, y)
            want, want_state = scheme.update(losses, state, gramian=cross)
            # Equal float64 maths, stored in float32 (one rounding, eps32 of values ≤ 1).
            for got_leaf, want_leaf in zip(
                jax.tree.leaves((out.weights, out.state.inner)),
                jax.tree.leaves((want, want_state.inner)),
                strict=True,
            ):
                np.testing.assert_allclose(got_leaf, want_leaf, rtol=0, atol=test_gradients.EPS32)


def test_batch_sizes_that_have_no_halves_are_named() -> None:
    scheme = covjax.modo()
    step = covjax.value_and_grad(test_gradients.loss_fn, scheme)
    state = scheme.init(test_gradients.loss_fn(test_gradients.PARAMS, *test_gradients.make_batch()))
    for size in (7, 1):
        x, y = test_gradients.make_batch(size=size)
        with pytest.raises(ValueError, match=f"it has {size} examples: use an even batch size"):
            jax.jit(step)(test_gradients.PARAMS, state, x, y)
    x, y = test_gradients.make_batch(size=8)
    with pytest.raises(ValueError, match=r"leading axes differ: \[6, 8\]"):
        step(test_gradients.PARAMS, state, x, y[:6])
    perturbed = test_gradients.PerturbedMultiHead(nnx.Rngs(0))
    module_step = covjax.value_and_grad(test_gradients.module_loss, scheme, wrt=nnx.Perturbation)
    with pytest.raises(ValueError, match=r"not nnx\.Perturbation"):
        module_step(perturbed, state, x, y)


def test_the_halves_of_the_first_examples() -> None:
    """With ``gramian_examples=n``, C is that of the first n examples' halves."""
    with jax.enable_x64(True):
        params, x, y, _ = test_gradients.float64_case()
        scheme = recording_scheme()
        step = covjax.value_and_grad(test_gradients.loss_fn, scheme, gramian_examples=4)
        out, _ = step(params, scheme.init(test_gradients.loss_fn(params, x, y)), x, y)
        assert_trees_close64(
            out.state.inner, halves_cross_gramian(test_gradients.loss_fn, params, x[:4], y[:4])
        )


def test_a_nan_loss_rejects_the_step() -> None:
    scheme = covjax.sdmgrad()
    x, y = test_gradients.make_batch()
    state = scheme.init(test_gradients.loss_fn(test_gradients.PARAMS, x, y))
    step = jax.jit(covjax.value_and_grad(test_gradients.loss_fn, scheme))
    accepted, _ = step(test_gradients.PARAMS, state, x, y)
    assert bool(accepted.accepted)
    out, _ = step(test_gradients.PARAMS, state, x, y.at[5, 0].set(jnp.nan))  # second half only
    assert not bool(out.accepted)
    assert int(out.state.count) == 0
    np.testing.assert_array_equal(out.state.inner.simplex, state.inner.simplex)
    np.testing.assert_array_equal(out.state.weights, state.weights)


def test_the_requirement_is_declared_and_checked() -> None:
    assert covjax.sdmgrad().requires == {covjax.CROSS_GRAMIAN}
    assert covjax.modo().requires == {covjax.CROSS_GRAMIAN}
    assert covjax.cr_mogm(covjax.modo()).requires == {covjax.CROSS_GRAMIAN}
    losses = jnp.ones(3)
    with pytest.raises(ValueError, match="needs the cross-Gramian"):
        covjax.modo().update(losses, covjax.modo().init(losses))
    with pytest.raises(ValueError, match="require one of the GRAMIAN, the CROSS_GRAMIAN"):
        covjax.make_weighting(
            lambda x: (),
            lambda *a: a,
            name="x",
            requires={covjax.GRAMIAN, covjax.CROSS_GRAMIAN},
        )
