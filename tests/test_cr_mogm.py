"""CR-MOGM: the moving average of a wrapped scheme's weights, against the oracle of the wrapped
scheme averaged in NumPy; rejection, α limits, vmap, facts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from aggregator_cases import random_gramian, run64, vmapped_weights64
from oracles import gramian_aggregators as oracle

import covjax


@pytest.mark.parametrize("initial", [False, True])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9])
def test_cr_mogm_of_dualproj_matches_the_oracle_at_k32(alpha: float, initial: bool) -> None:
    gramians = [random_gramian(seed) * np.outer(s, s) for seed, s in enumerate(signs(4))]
    start = np.random.default_rng(1).dirichlet(np.ones(32)) if initial else None
    scheme = covjax.cr_mogm(covjax.dualproj(), alpha, None if start is None else jnp.asarray(start))
    got = run64(scheme, gramians)
    raw = [oracle.dualproj(g, np.full(32, 1 / 32)) for g in gramians]
    for weights, want in zip(got, oracle.cr_mogm(raw, alpha, start), strict=True):
        np.testing.assert_allclose(weights, want, rtol=0, atol=1e-5 * want.max())


def signs(steps: int) -> list[np.ndarray]:
    """Per step, signs flipping some gradients, so that the projections differ between steps."""
    rng = np.random.default_rng(0)
    return [np.where(rng.uniform(size=32) < 0.3, -1.0, 1.0) for _ in range(steps)]


def test_cr_mogm_of_fairgrad_and_alpha_limits() -> None:
    gramians = [random_gramian(seed, k=6) for seed in range(3)]
    raw = [oracle.fairgrad(g, 2.0) for g in gramians]
    got = run64(covjax.cr_mogm(covjax.fairgrad(2.0), 0.7), gramians)
    for weights, want in zip(got, oracle.cr_mogm(raw, 0.7, None), strict=True):
        np.testing.assert_allclose(weights, want, rtol=1e-5)
    frozen = run64(covjax.cr_mogm(covjax.fairgrad(2.0), 1.0, jnp.full(6, 0.5)), gramians)
    np.testing.assert_allclose(frozen[-1], 0.5)
    verbatim = run64(covjax.cr_mogm(covjax.fairgrad(2.0), 0.0), gramians)
    np.testing.assert_allclose(verbatim[-1], raw[-1], rtol=1e-5)


def test_cr_mogm_vmaps_over_alpha() -> None:
    gramian = random_gramian(3, k=5)
    batched = vmapped_weights64(lambda a: covjax.cr_mogm(covjax.fairgrad(), a), [0.2, 0.8], gramian)
    # One step from λ_0 = λ̂_1: the wrapped weights, whatever α.
    np.testing.assert_allclose(batched, np.tile(oracle.fairgrad(gramian, 1.0), (2, 1)), rtol=1e-5)


def test_cr_mogm_rejects_what_the_wrapped_scheme_rejects() -> None:
    # FAMO's known minima are invisible to the wrapper: the wrapped scheme rejects the step.
    scheme = covjax.cr_mogm(covjax.famo(min_losses=0.5), 0.5)
    state = scheme.init(jnp.ones(3))
    step = jax.jit(scheme.update)
    weights, state = step(jnp.array([1.0, 2.0, 3.0]), state)
    bad_weights, bad_state = step(jnp.array([1.0, 0.4, 3.0]), state)
    assert not bool(covjax.step_accepted(state, bad_state))
    np.testing.assert_array_equal(bad_weights, weights)
    jax.tree.map(np.testing.assert_array_equal, bad_state, state)
    # A non-finite Gramian: rejected by the wrapper itself.
    scheme = covjax.cr_mogm(covjax.upgrad())
    state = scheme.init(jnp.ones(3))
    _, new_state = scheme.update(jnp.ones(3), state, gramian=jnp.full((3, 3), jnp.nan))
    assert not bool(covjax.step_accepted(state, new_state))


def test_cr_mogm_keeps_the_wrapped_facts() -> None:
    # The loss facts carry over; no aggregator promise survives averaging weights over steps.
    smoothed, wrapped = covjax.cr_mogm(covjax.mgda()).properties, covjax.mgda().properties
    assert smoothed._replace(promises=wrapped.promises) == wrapped
    assert smoothed.promises == covjax.AggregatorPromises()
    assert covjax.cr_mogm(covjax.mgda()).requires == {covjax.GRAMIAN}
    assert covjax.cr_mogm(covjax.gls()).properties.positive_losses
    assert covjax.cr_mogm(covjax.imtl_g()).properties.loss_scale == "no"  # was compensated
    assert covjax.cr_mogm(covjax.uncertainty_weighting(optax.sgd(0.1))).requires == frozenset()


def test_cr_mogm_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="alpha must be in"):
        covjax.cr_mogm(covjax.mgda(), 1.5)
    with pytest.raises(TypeError, match=r"must be a covjax\.Weighting"):
        covjax.cr_mogm(covjax.mgda)
    with pytest.raises(ValueError, match="initial_weights has shape"):
        covjax.cr_mogm(covjax.mgda(), initial_weights=jnp.ones(2)).init(jnp.ones(3))
