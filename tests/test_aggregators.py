"""Properties shared by the gradient aggregators (PCGrad, GradVac, CAGrad, IMTL-G,
Nash-MTL, Aligned-MTL, UPGrad, DB-MTL) against NumPy/SciPy oracles.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from aggregator_cases import EPS32, K, P, gramian_of, jacobian, run
from hypothesis import given, settings
from hypothesis import strategies as st

import covjax

ALL = ("pcgrad", "gradvac", "cagrad", "imtl_g", "nash_mtl", "aligned_mtl", "upgrad", "db_mtl")
ORDER_FREE = ("cagrad", "imtl_g", "nash_mtl", "aligned_mtl", "upgrad", "db_mtl")


@pytest.mark.parametrize("name", ALL)
def test_jit_equals_no_jit(name: str) -> None:
    J = jacobian("conflicting", seed=19)
    scheme = getattr(covjax, name)()
    # An identity, so in float64: fusion's reordered sums (eps64·cond(G)) then stay far below
    # the float32 rounding of the weights (one ulp at most, 2·eps32 relative).
    with jax.enable_x64(True):
        losses = jnp.asarray(np.linspace(0.5, 2.0, K))
        state = scheme.init(losses)
        eager, eager_state = scheme.update(losses, state, gramian=gramian_of(J))
        jitted, jitted_state = jax.jit(scheme.update)(losses, state, gramian=gramian_of(J))
    tol = 2 * EPS32
    np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), rtol=tol, atol=tol)
    for a, b in zip(jax.tree.leaves(eager_state), jax.tree.leaves(jitted_state), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ALL)
def test_all_zero_gradients_give_finite_weights_and_advance(name: str) -> None:
    weights, state = run(name, np.zeros((K, P)))
    assert np.all(np.isfinite(weights))
    assert int(state.count) == 1  # accepted, not discarded as non-finite


@pytest.mark.parametrize("name", ALL)
def test_requires_the_gramian(name: str) -> None:
    scheme = getattr(covjax, name)()
    assert scheme.requires == frozenset({covjax.GRAMIAN})
    losses = jnp.ones((3,))
    with pytest.raises(ValueError, match="Gramian"):
        scheme.update(losses, scheme.init(losses))


def test_bad_hyperparameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="c must be"):
        covjax.cagrad(c=-1.0)
    with pytest.raises(ValueError, match="beta"):
        covjax.gradvac(beta=0.0)
    with pytest.raises(ValueError, match="ridge"):
        covjax.nash_mtl(ridge=-1.0)
    with pytest.raises(ValueError, match="scale"):
        covjax.aligned_mtl(scale="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beta"):
        covjax.db_mtl(beta=1.0)
    with pytest.raises(ValueError, match="task_weights"):
        covjax.upgrad(task_weights=jnp.ones(2)).init(jnp.ones(3))


small_jacobians = st.builds(
    lambda k, p, values, zero_row: _small_jacobian(k, p, values, zero_row),
    st.sampled_from([2, 4]),  # two K only: every K compiles every scheme again
    st.integers(1, 5),
    st.lists(st.sampled_from([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0]), min_size=20, max_size=20),
    st.booleans(),
)


def _small_jacobian(k: int, p: int, values: list[float], zero_row: bool) -> np.ndarray:
    J = np.resize(np.asarray(values), (k, p))
    if zero_row:
        J[0] = 0.0
    return J


@settings(max_examples=15)
@given(J=small_jacobians)
def test_weights_are_always_finite(J: np.ndarray) -> None:
    # Degenerate by construction: repeated, opposing, zero and rank-deficient rows.
    for name in ALL:
        weights, state = run(name, J)
        assert np.all(np.isfinite(weights)), (name, J)
        assert int(state.count) == 1, name


@settings(max_examples=15)
@given(J=small_jacobians, data=st.data())
def test_order_free_schemes_are_permutation_equivariant(J: np.ndarray, data) -> None:
    k = J.shape[0]
    permutation = np.asarray(data.draw(st.permutations(range(k))))
    losses = np.linspace(1.0, 2.0, k)
    for name in ORDER_FREE:
        weights, _ = run(name, J, losses=losses.astype(np.float32))
        permuted, _ = run(name, J[permutation], losses=losses[permutation].astype(np.float32))
        scale = max(np.abs(weights).max(), 1.0)
        # Compare directions when the weights themselves are not unique (singular systems).
        d = weights @ J
        d_permuted = permuted @ J[permutation]
        np.testing.assert_allclose(
            d_permuted, d, atol=1e-4 * scale * max(np.abs(J).max(), 1.0), err_msg=name
        )


@pytest.mark.slow
def test_value_and_grad_applies_the_aggregated_direction() -> None:
    """End to end: the parameter gradient is Σ w_i ∇L_i with the Gramian of the true gradients."""
    rng = np.random.default_rng(21)
    features = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
    targets = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
    params = {"w": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)}

    def loss_fn(params, x, y):
        return jnp.mean((x @ params["w"] - y) ** 2, axis=0)  # 4 losses, one per output

    scheme = covjax.nash_mtl()
    step = jax.jit(covjax.value_and_grad(loss_fn, scheme))
    result, grads = step(params, scheme.init(jnp.ones(4)), features, targets)
    jac = jax.jacrev(loss_fn)(params, features, targets)["w"].reshape(4, -1)
    want_weights, _ = run("nash_mtl", np.asarray(jac, np.float64))
    np.testing.assert_allclose(np.asarray(result.weights), want_weights, rtol=1e-4)
    want = (np.asarray(result.weights) @ np.asarray(jac)).reshape(6, 4)
    np.testing.assert_allclose(np.asarray(grads["w"]), want, rtol=1e-4, atol=1e-6)
