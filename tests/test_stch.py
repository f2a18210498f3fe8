"""STCH (Lin et al., ICML 2024): its float64 oracle, the gradient identity, warm-up, sweeps."""

from __future__ import annotations

import jax
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

PREFERENCE = np.linspace(0.5, 1.5, K)


@pytest.mark.parametrize(
    ("arguments", "oracle_arguments"),
    [
        ({}, {"mu": 1.0}),
        ({"mu": 100.0}, {"mu": 100.0}),  # smooth: every loss counts
        (
            {"mu": 30.0, "preference": jnp.asarray(PREFERENCE), "ideal": 0.5},
            {"mu": 30.0, "preference": PREFERENCE, "ideal": 0.5},
        ),
        ({"mu": 0.5, "warmup_steps": 7}, {"mu": 0.5, "warmup_steps": 7}),
        (
            {"mu": 2.0, "warmup_steps": 3, "preference": jnp.asarray(PREFERENCE)},
            {"mu": 2.0, "warmup_steps": 3, "preference": PREFERENCE},
        ),
    ],
)
def test_matches_numpy_oracle(arguments: dict, oracle_arguments: dict) -> None:
    assert_matches_oracle(
        covjax.stch(**arguments), lambda tr: oracle.stch(tr, **oracle_arguments), seed=1
    )


@pytest.mark.parametrize("mu", [0.3, 3.0])
def test_weights_are_the_gradient_of_the_smooth_tchebycheff_objective(mu: float) -> None:
    def objective(losses):
        return mu * jax.scipy.special.logsumexp(losses / mu)

    assert_weighted_gradient_is_the_objective_gradient(covjax.stch(mu=mu), objective)


def test_warmup_then_log_normalized_scalarization() -> None:
    """Σ log L during the warm-up (α = 1/L); then α_i L_i = K softmax(log(L/n)/μ)_i."""
    trace = np.array([[1.0, 4.0], [3.0, 2.0], [2.0, 3.0], [8.0, 1.0]], np.float32)
    scheme = covjax.stch(mu=0.5, warmup_steps=2)
    state = scheme.init(jnp.asarray(trace[0]))
    weights = []
    for losses in trace:
        w, state = scheme.update(jnp.asarray(losses), state)
        weights.append(np.asarray(w))
    np.testing.assert_allclose(weights[:2], 1.0 / trace[:2], rtol=1e-6)
    nadir = trace[:2].mean(axis=0)
    for step in (2, 3):
        logits = np.log(trace[step] / nadir) / 0.5
        shares = 2 * np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        np.testing.assert_allclose(weights[step] * trace[step], shares, rtol=1e-5)


def test_small_mu_approaches_the_tchebycheff_max() -> None:
    losses = jnp.array([0.3, 2.0, 1.9])
    weights, _ = covjax.stch(mu=1e-3).update(losses, covjax.stch(mu=1e-3).init(losses))
    np.testing.assert_allclose(weights, [0.0, 1.0, 0.0], atol=1e-6)


def test_vmap_sweep_over_mu() -> None:
    assert_vmap_sweep(lambda mu: covjax.stch(mu=mu, warmup_steps=3), [0.1, 1.0, 10.0])
    assert_vmap_sweep(lambda mu: covjax.stch(mu=mu), [1.0, 10.0, 100.0])


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: covjax.stch(mu=0.0), "mu must be positive"),
        (lambda: covjax.stch(warmup_steps=-1), "warmup_steps must be"),
        (lambda: covjax.stch(warmup_steps=2, ideal=1.0), "takes no ideal point"),
        (lambda: covjax.stch(preference=jnp.array([1.0, -1.0])), "non-negative"),
        (lambda: covjax.stch(preference=jnp.zeros(2)), "positive entry"),
        (lambda: covjax.stch(preference=jnp.ones(2)).init(jnp.ones(3)), "preference has shape"),
    ],
)
def test_bad_arguments_raise_clear_errors(factory, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory()
