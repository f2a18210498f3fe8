"""COSMOS's cosine-penalized scalarization (Ruchte & Grabocka, ICDM 2021): float64 oracle,
gradient identity, sweeps."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from oracles import scalarizations as oracle
from scalarization_support import (
    K,
    assert_matches_oracle,
    assert_vmap_sweep,
    assert_weighted_gradient_is_the_objective_gradient,
)

import covjax

PREFERENCE = np.random.default_rng(4).dirichlet(np.full(K, 1.2))


@pytest.mark.parametrize(
    ("arguments", "oracle_arguments"),
    [
        ({}, {"penalty": 1.0}),
        (
            {"penalty": 8.0, "preference": jnp.asarray(PREFERENCE, jnp.float32)},
            {"penalty": 8.0, "preference": np.float32(PREFERENCE).astype(np.float64)},
        ),
    ],
)
def test_matches_numpy_oracle(arguments: dict, oracle_arguments: dict) -> None:
    assert_matches_oracle(
        covjax.cosmos(**arguments), lambda tr: oracle.cosmos(tr, **oracle_arguments), seed=3
    )


def test_weights_are_the_gradient_of_the_cosmos_objective() -> None:
    preference = jnp.array([0.1, 0.3, 0.2, 0.25, 0.15])

    def objective(losses):
        cosine = jnp.dot(losses, preference) / (
            jnp.linalg.norm(losses) * jnp.linalg.norm(preference)
        )
        return jnp.dot(preference, losses) - 3.0 * cosine

    scheme = covjax.cosmos(penalty=3.0, preference=preference)
    assert_weighted_gradient_is_the_objective_gradient(scheme, objective)


def test_zero_losses_give_the_preference() -> None:
    """A zero loss vector has no angle: the cosine term is 0 there, never NaN."""
    weights, state = covjax.cosmos().update(jnp.zeros(4), covjax.cosmos().init(jnp.zeros(4)))
    assert int(state.count) == 1
    np.testing.assert_array_equal(weights, np.full(4, 0.25, np.float32))


def test_vmap_sweep_over_the_penalty() -> None:
    assert_vmap_sweep(lambda penalty: covjax.cosmos(penalty=penalty), [0.1, 1.0, 10.0])


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: covjax.cosmos(penalty=0.0), "penalty must be positive"),
        (lambda: covjax.cosmos(preference=jnp.array([0.5, -0.5])), "non-negative"),
    ],
)
def test_bad_arguments_raise_clear_errors(factory, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory()
