"""covjax.conflict_free (ConFIG, M-ConFIG) against float64 oracles, and its contract."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jacobian_scheme_cases import (
    EPS32,
    SHARED_PARAMS,
    K,
    P,
    check_value_and_grad,
    drifting_jacobians,
    random_jacobian,
    run_steps64,
)
from oracles import jacobian_aggregators as oracle

import covjax


def config_direction(J: np.ndarray, x64: bool = True, **kwargs) -> np.ndarray:
    scheme = covjax.conflict_free(**kwargs)
    with jax.enable_x64(x64):
        dtype = jnp.float64 if x64 else jnp.float32
        losses = jnp.ones(J.shape[0], dtype)
        gramian = jnp.asarray(J @ J.T, dtype)
        weights, state = jax.jit(scheme.update)(losses, scheme.init(losses), gramian=gramian)
        assert int(state.count) == 1
        return np.asarray(weights, np.float64) @ J


def assert_direction_close(got: np.ndarray, want: np.ndarray, tol: float) -> None:
    scale = np.linalg.norm(want)
    np.testing.assert_allclose(got / scale, want / scale, atol=tol, rtol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_config_matches_oracle_in_float64(seed: int) -> None:
    J = random_jacobian(seed)
    preference = np.random.default_rng(seed + 10).uniform(0.5, 2.0, size=K)
    # The float64 results go through float32 weights: K·eps32 of the direction's scale.
    tol = K * EPS32 * 10
    assert_direction_close(config_direction(J), oracle.config(J), tol)
    want = oracle.config(J, preference)
    assert_direction_close(config_direction(J, preference=preference), want, tol)


def test_config_makes_equal_angles_in_float32() -> None:
    J = random_jacobian(2)
    d = config_direction(J, x64=False)
    cosines = (J @ d) / np.linalg.norm(J, axis=1) / np.linalg.norm(d)
    assert np.all(cosines > 0)
    # Equal angles up to the float32 solve: K·cond(C)·eps32 relative.
    units = J / np.linalg.norm(J, axis=1, keepdims=True)
    tol = K * np.linalg.cond(units @ units.T) * EPS32
    np.testing.assert_allclose(cosines, cosines.mean(), rtol=tol)
    # Its length is the sum of the projections of the gradients on it.
    np.testing.assert_allclose(np.linalg.norm(d), np.sum(J @ d) / np.linalg.norm(d), rtol=tol)


def test_config_compensates_a_loss_scale() -> None:
    J = random_jacobian(3, k=6, p=40)
    scaled = J.copy()
    scaled[2] *= 8.0
    tol = 10 * 6 * EPS32  # float64 maths, weights stored in float32
    assert_direction_close(config_direction(scaled), oracle.config(scaled), tol)
    # Only the length changes: the unit gradients, hence u, are the same.
    a, b = config_direction(J), config_direction(scaled)
    np.testing.assert_allclose(a / np.linalg.norm(a), b / np.linalg.norm(b), atol=tol)


def test_config_dead_and_zero_gradients() -> None:
    J = random_jacobian(4, k=5, p=20)
    J[1] = 0.0
    assert_direction_close(config_direction(J), oracle.config(J), 10 * 5 * EPS32)
    np.testing.assert_array_equal(config_direction(np.zeros((5, 20))), np.zeros(20))


def test_config_vmaps_over_preference() -> None:
    J = random_jacobian(5, k=6, p=30)
    preferences = np.random.default_rng(5).uniform(0.5, 2.0, size=(3, 6))

    def weights(preference):
        scheme = covjax.conflict_free(preference=preference)
        losses = jnp.ones(6)
        return scheme.update(losses, scheme.init(losses), gramian=jnp.asarray(J @ J.T))[0]

    with jax.enable_x64(True):
        swept = np.asarray(jax.jit(jax.vmap(weights))(jnp.asarray(preferences)), np.float64)
    for index, preference in enumerate(preferences):
        assert_direction_close(swept[index] @ J, oracle.config(J, preference), 10 * 6 * EPS32)


def test_m_config_matches_oracle_in_float64() -> None:
    jacobians = drifting_jacobians(6, 4)
    scheme = covjax.conflict_free(momentum=True, num_params=P)
    got = [out.direction for out in run_steps64(scheme, jacobians)[0]]
    for g, want in zip(got, oracle.m_config(jacobians), strict=True):
        # Adam-normalized directions are O(1) per coordinate; weights passed through float32.
        np.testing.assert_allclose(g, want, atol=K * EPS32 * 10 * np.abs(want).max())


def test_m_config_vmaps_over_beta1() -> None:
    jacobians = drifting_jacobians(7, 2, k=4, p=10)
    scheme_for = lambda b: covjax.conflict_free(momentum=True, num_params=10, beta1=b)  # noqa: E731

    def last_direction(beta1):
        scheme = scheme_for(beta1)
        losses = jnp.ones(4)
        state = scheme.init(losses)
        for J in jacobians:
            out, state = scheme.update(losses, state, jacobian=jnp.asarray(J))
        return out.direction

    with jax.enable_x64(True):
        swept = np.asarray(jax.jit(jax.vmap(last_direction))(jnp.array([0.5, 0.9])))
    for index, beta1 in enumerate((0.5, 0.9)):
        want = oracle.m_config(jacobians, beta1=beta1)[-1]
        np.testing.assert_allclose(swept[index], want, atol=4 * 10 * EPS32 * np.abs(want).max())


def test_m_config_needs_num_params_and_checks_it() -> None:
    with pytest.raises(ValueError, match="num_params must be P"):
        covjax.conflict_free(momentum=True)
    scheme = covjax.conflict_free(momentum=True, num_params=5)
    assert scheme.requires == {covjax.JACOBIAN, covjax.DIRECTION}
    state = scheme.init(jnp.ones(3))
    with pytest.raises(
        ValueError, match="has 4 columns but the scheme was built with num_params=5"
    ):
        scheme.update(jnp.ones(3), state, jacobian=jnp.ones((3, 4)))
    # A rejected step keeps the moments.
    out, rejected = scheme.update(jnp.ones(3), state, jacobian=jnp.full((3, 5), jnp.nan))
    assert not covjax.step_accepted(state, rejected)
    np.testing.assert_array_equal(out.direction, np.zeros(5))
    with pytest.raises(ValueError, match=r"preference has shape \(2,\)"):
        covjax.conflict_free(preference=jnp.ones(2)).init(jnp.ones(3))


@pytest.mark.parametrize("momentum", [False, True])
def test_value_and_grad_end_to_end(momentum: bool) -> None:
    num_params = SHARED_PARAMS if momentum else None
    check_value_and_grad(covjax.conflict_free(momentum=momentum, num_params=num_params))
