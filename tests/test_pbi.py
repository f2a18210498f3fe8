"""PBI (Zhang & Li, 2007) as a loss scalarization: float64 oracle, gradient identity, sweeps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracles import scalarizations as oracle
from precision import EPS32
from scalarization_support import (
    K,
    assert_matches_oracle,
    assert_vmap_sweep,
    assert_weighted_gradient_is_the_objective_gradient,
)

import covjax

PREFERENCE = np.linspace(0.2, 2.0, K)


@pytest.mark.parametrize(
    ("arguments", "oracle_arguments"),
    [
        ({}, {"theta": 5.0}),
        (
            {"theta": 0.5, "preference": jnp.asarray(PREFERENCE), "ideal": 0.01},
            {"theta": 0.5, "preference": PREFERENCE, "ideal": 0.01},
        ),
    ],
)
def test_matches_numpy_oracle(arguments: dict, oracle_arguments: dict) -> None:
    assert_matches_oracle(
        covjax.pbi(**arguments), lambda tr: oracle.pbi(tr, **oracle_arguments), seed=2
    )


def test_weights_are_the_gradient_of_pbi() -> None:
    preference = jnp.array([1.0, 2.0, 1.0, 0.5, 3.0])
    direction = preference / jnp.linalg.norm(preference)

    def objective(losses):
        along = jnp.dot(losses, direction)
        return along + 2.0 * jnp.linalg.norm(losses - along * direction)

    scheme = covjax.pbi(theta=2.0, preference=preference)
    assert_weighted_gradient_is_the_objective_gradient(scheme, objective)


def test_on_the_preference_ray_the_weights_are_the_unit_preference() -> None:
    """d2 = 0 has no gradient direction: the subgradient 0 is taken, never NaN."""
    preference = jnp.array([1.0, 2.0, 3.0])
    unit = preference / jnp.linalg.norm(preference)
    scheme = covjax.pbi(preference=preference)
    for losses in (3.0 * preference, jnp.zeros(3)):
        weights, state = scheme.update(losses, scheme.init(losses))
        assert int(state.count) == 1
        # A rounding of the unit vector (norm, division) per entry, and of the ray test.
        np.testing.assert_allclose(weights, unit, rtol=4 * EPS32)


def test_a_loss_ahead_of_its_share_gets_a_negative_weight() -> None:
    """PBI pulls the losses back onto the ray: the loss below it is traded off (α < 0)."""
    losses = jnp.array([0.1, 1.0])
    weights, _ = covjax.pbi().update(losses, covjax.pbi().init(losses))
    assert float(weights[0]) < 0 < float(weights[1])


def test_vmap_sweep_over_theta() -> None:
    assert_vmap_sweep(lambda theta: covjax.pbi(theta=theta), [0.5, 5.0, 50.0])


def update_of(scheme: covjax.Weighting):
    return lambda losses: scheme.update(losses, scheme.init(losses))


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: covjax.pbi(theta=-1.0), "theta must be positive"),
        (lambda: covjax.pbi(preference=jnp.array([1.0, jnp.inf])), "finite"),
        (
            lambda: jax.eval_shape(update_of(covjax.pbi(preference=jnp.ones(4))), jnp.ones(3)),
            "preference has shape",  # at trace time
        ),
    ],
)
def test_bad_arguments_raise_clear_errors(factory, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory()
