"""covjax.trimmed_mean against its float64 oracle, and its contract."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jacobian_scheme_cases import K, check_value_and_grad, random_jacobian
from oracles import jacobian_aggregators as oracle

import covjax


@pytest.mark.parametrize("trim", [0, 1, 5, 15])
def test_matches_oracle_in_float64(trim: int) -> None:
    J = random_jacobian(trim)
    scheme = covjax.trimmed_mean(trim)
    with jax.enable_x64(True):
        losses = jnp.ones(K, jnp.float64)
        initial = scheme.init(losses)
        out, state = jax.jit(scheme.update)(losses, initial, jacobian=jnp.asarray(J))
        direction = np.asarray(out.direction)
        weights = np.asarray(out.weights)
    assert direction.dtype == np.float64
    np.testing.assert_allclose(
        direction, oracle.trimmed_mean(J, trim), rtol=1e-12, atol=1e-13 * np.abs(J).max()
    )
    np.testing.assert_array_equal(weights, np.full(K, 1.0 / K, np.float32))
    assert covjax.step_accepted(initial, state)


def test_no_trim_is_the_mean_and_one_outlier_is_removed() -> None:
    J = random_jacobian(1, k=5, p=7).astype(np.float32)
    losses = jnp.ones(5)
    plain = covjax.trimmed_mean(0)
    out, _ = plain.update(losses, plain.init(losses), jacobian=J)
    # A 5-term float32 mean: a few roundings of the largest entry.
    np.testing.assert_allclose(out.direction, J.mean(axis=0), atol=8 * 1.2e-7 * np.abs(J).max())
    robust = covjax.trimmed_mean(1)
    attacked = J.copy()
    attacked[3] = 1e30  # one arbitrary gradient
    out, _ = robust.update(losses, robust.init(losses), jacobian=attacked)
    # The outlier never enters a sum: a few float32 roundings of the remaining entries.
    want = oracle.trimmed_mean(attacked.astype(np.float64), 1)
    np.testing.assert_allclose(out.direction, want, atol=8 * 1.2e-7 * np.abs(J).max())


def test_vmaps_over_trim() -> None:
    J = random_jacobian(2, k=9, p=20)
    losses = jnp.ones(9)

    def direction(trim):
        scheme = covjax.trimmed_mean(trim)
        return scheme.update(losses, scheme.init(losses), jacobian=jnp.asarray(J))[0].direction

    with jax.enable_x64(True):
        swept = np.asarray(jax.jit(jax.vmap(direction))(jnp.arange(4)))
    for trim in range(4):
        np.testing.assert_allclose(swept[trim], oracle.trimmed_mean(J, trim), rtol=1e-12)


def test_non_finite_jacobian_is_rejected() -> None:
    scheme = covjax.trimmed_mean(1)
    losses = jnp.ones(3)
    state = scheme.init(losses)
    J = jnp.ones((3, 4)).at[1, 2].set(jnp.inf)
    out, new_state = jax.jit(scheme.update)(losses, state, jacobian=J)
    np.testing.assert_array_equal(out.direction, np.zeros(4))
    assert not covjax.step_accepted(state, new_state)


def test_bad_trim_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="integer ≥ 0"):
        covjax.trimmed_mean(-1)
    with pytest.raises(ValueError, match=r"2·trim \+ 1 ≤ K \(at most 1 for K = 4\)"):
        covjax.trimmed_mean(2).init(jnp.ones(4))


def test_ties_keep_exactly_k_minus_two_trim_values() -> None:
    J = np.array([[1.0, 2.0], [1.0, 2.0], [1.0, -3.0], [0.0, 2.0]])
    scheme = covjax.trimmed_mean(1)
    losses = jnp.ones(4)
    out, _ = scheme.update(losses, scheme.init(losses), jacobian=jnp.asarray(J, jnp.float32))
    np.testing.assert_array_equal(out.direction, [1.0, 2.0])


def test_value_and_grad_end_to_end() -> None:
    check_value_and_grad(covjax.trimmed_mean(1))
