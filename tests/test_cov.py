"""CoV-Weighting against its NumPy oracle, plus its properties and numerics."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from oracles import cov as cov_oracle
from precision import EPS32, assert_states_close, normalization_rtol, trace_rtol

import covjax


def random_trace(seed: int, steps: int, k: int) -> np.ndarray:
    """Positive, decaying, noisy losses on very different scales."""
    rng = np.random.default_rng(seed)
    scales = 10.0 ** rng.uniform(-3, 3, size=k)
    rates = rng.uniform(1e-3, 2e-2, size=k)
    t = np.arange(steps)[:, None]
    noise = rng.lognormal(0.0, rng.uniform(0.05, 0.5, size=k), size=(steps, k))
    return (scales * (0.1 + np.exp(-rates * t)) * noise).astype(np.float32)


@functools.partial(jax.jit, static_argnums=0)
def run_trace(scheme: covjax.Weighting, trace: jax.Array) -> jax.Array:
    """Weights of every step of a (T, K) trace, in one compiled scan."""
    state = scheme.init(trace[0])

    def body(state, losses):
        weights, state = scheme.update(losses, state)
        return state, weights

    return jax.lax.scan(body, state, trace)[1]


VARIANTS = {
    "reference": {},
    "decay": {"decay": 0.9},
    "reference_decay": {"decay": 0.95, "reference_decay": True},
    "loss_statistic": {"statistic": "loss"},
    "inverse": {"inverse": True},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_matches_numpy_oracle(variant: str) -> None:
    kwargs = VARIANTS[variant]
    trace = random_trace(seed=1, steps=300, k=32)
    if variant == "loss_statistic":
        trace = trace / trace.max(axis=0)  # the raw-loss statistic is scale dependent
    got = np.asarray(run_trace(covjax.cov_weighting(**kwargs), jnp.asarray(trace)))
    want = cov_oracle.cov_weights(trace, **kwargs)
    # float32 over 300 steps vs the float64 oracle (measured ≤ 30 eps32 relative).
    np.testing.assert_allclose(got, want, rtol=trace_rtol(300), atol=0)


def test_first_two_steps_are_uniform_then_not() -> None:
    weights = np.asarray(run_trace(covjax.cov_weighting(), jnp.asarray(random_trace(0, 4, 5))))
    np.testing.assert_allclose(weights[:2], 0.2, rtol=EPS32)  # 1/K rounded to float32
    assert np.ptp(weights[2]) > 1e-3


@functools.cache
def _jitted_trace_fn():
    return jax.jit(lambda trace: run_trace(covjax.cov_weighting(), trace))


traces = st.integers(0, 2**31 - 1).map(lambda seed: random_trace(seed, steps=12, k=6))


@given(trace=traces, factor=st.floats(1e-5, 1e5), index=st.integers(0, 5))
def test_scale_invariance(trace: np.ndarray, factor: float, index: int) -> None:
    scaled = trace.copy()
    scaled[:, index] *= np.float32(factor)
    run = _jitted_trace_fn()
    np.testing.assert_allclose(run(scaled), run(trace), rtol=2e-4, atol=1e-6)


@given(trace=traces, seed=st.integers(0, 1000))
def test_permutation_equivariance_and_simplex(trace: np.ndarray, seed: int) -> None:
    permutation = np.random.default_rng(seed).permutation(trace.shape[1])
    run = _jitted_trace_fn()
    weights = np.asarray(run(trace))
    assert np.all(np.isfinite(weights)) and np.all(weights >= 0)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=normalization_rtol(6))
    # Permuting the losses reorders each step's K-term sums: ≤ normalization_rtol per step.
    np.testing.assert_allclose(
        run(trace[:, permutation]),
        weights[:, permutation],
        rtol=trace_rtol(len(trace), normalization_rtol(6)),
        atol=0,
    )


def test_jit_equals_no_jit() -> None:
    trace = random_trace(3, 8, 4)
    scheme = covjax.cov_weighting(decay=0.8)
    state_eager = state_jit = scheme.init(trace[0])
    update_jit = jax.jit(scheme.update)
    # Compiled as a whole, XLA may fuse multiply-adds and reorder the K-term sums.
    rtol = trace_rtol(len(trace), normalization_rtol(4))
    for losses in trace:
        w_eager, state_eager = scheme.update(jnp.asarray(losses), state_eager)
        w_jit, state_jit = update_jit(jnp.asarray(losses), state_jit)
        np.testing.assert_allclose(w_eager, w_jit, rtol=rtol, atol=rtol * np.abs(w_jit).max())
    assert_states_close(state_eager, state_jit, rtol=rtol)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_step_is_skipped(bad: float) -> None:
    scheme = covjax.cov_weighting()
    update = jax.jit(scheme.update)
    trace = random_trace(4, 6, 3)
    state = scheme.init(trace[0])
    # Before any finite step: uniform weights, untouched state.
    poisoned = trace[0].copy()
    poisoned[1] = bad
    weights, new_state = update(poisoned, state)
    np.testing.assert_allclose(weights, 1 / 3, rtol=EPS32)  # 1/K rounded to float32
    chex.assert_trees_all_equal(new_state, state)
    for losses in trace:
        previous_weights, state = update(losses, state)
    weights, new_state = update(poisoned, state)
    chex.assert_trees_all_equal(new_state, state)
    np.testing.assert_array_equal(weights, previous_weights)
    # And training continues normally afterwards.
    weights, _ = update(trace[1], new_state)
    assert np.all(np.isfinite(weights))


def test_value_and_grad_reports_non_finite_step() -> None:
    scheme = covjax.cov_weighting()

    def loss_fn(params, poison):
        return {"a": params["x"] ** 2 + poison, "b": (params["x"] - 1.0) ** 2}

    params = {"x": jnp.float32(0.3)}
    state = scheme.init(loss_fn(params, 0.0))
    step = jax.jit(covjax.value_and_grad(loss_fn, scheme))
    out, _ = step(params, state, 0.0)
    assert bool(out.accepted)
    out_bad, _ = step(params, out.state, jnp.nan)
    assert not bool(out_bad.accepted)
    chex.assert_trees_all_equal(out_bad.state, out.state)


def test_zero_losses_give_finite_weights() -> None:
    trace = random_trace(5, 40, 4)
    trace[:, 0] = 0.0  # always exactly zero
    trace[20:, 1] = 0.0  # reaches exactly zero mid-run (NaN in the reference code)
    for kwargs in VARIANTS.values():
        weights = np.asarray(run_trace(covjax.cov_weighting(**kwargs), jnp.asarray(trace)))
        assert np.all(np.isfinite(weights)), kwargs
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=normalization_rtol(4))


def test_bf16_losses_accumulate_in_float32() -> None:
    trace = random_trace(6, 50, 4)
    scheme = covjax.cov_weighting()
    state = scheme.init(jnp.asarray(trace[0], jnp.bfloat16))
    for leaf in jax.tree.leaves(state.inner):
        assert leaf.dtype == jnp.float32
    weights_bf16 = run_trace(scheme, jnp.asarray(trace, jnp.bfloat16))
    assert weights_bf16.dtype == jnp.float32
    want = cov_oracle.cov_weights(np.asarray(jnp.asarray(trace, jnp.bfloat16), np.float64))
    np.testing.assert_allclose(weights_bf16, want, rtol=1e-4, atol=1e-6)


def test_decay_is_a_traced_hyper_parameter_vmap_sweep() -> None:
    trace = jnp.asarray(random_trace(7, 60, 5))
    decays = jnp.asarray([0.5, 0.9, 0.99])
    swept = jax.jit(
        jax.vmap(lambda d: run_trace.__wrapped__(covjax.cov_weighting(decay=d), trace))
    )(decays)
    for i, decay in enumerate([0.5, 0.9, 0.99]):
        want = cov_oracle.cov_weights(np.asarray(trace), decay=decay)
        np.testing.assert_allclose(swept[i], want, rtol=trace_rtol(len(trace)), atol=0)


@pytest.mark.slow
def test_ten_million_steps_stay_accurate_in_float32() -> None:
    steps, k = 10_000_000, 3
    rng = np.random.default_rng(8)
    trace = np.array([1.0, 1e-3, 50.0]) * rng.lognormal(0.0, [0.1, 0.3, 0.6], size=(steps, k))
    trace = trace.astype(np.float32)
    scheme = covjax.cov_weighting()

    @jax.jit
    def final_weights(trace):
        state = scheme.init(trace[0])
        state, _ = jax.lax.scan(lambda s, x: (scheme.update(x, s)[1], None), state, trace)
        return scheme.update(trace[-1], state)[0], state

    weights, state = final_weights(jnp.asarray(trace))
    assert int(state.count) == steps + 0
    # The oracle's weights for "the step after the trace" use all `steps` ratios;
    # our extra update of trace[-1] is the step that reads them.
    want = cov_oracle.cumulative_ratio_weights(trace.astype(np.float64))
    np.testing.assert_allclose(weights, want, rtol=1e-4)
    np.testing.assert_allclose(
        state.inner.loss_mean.value, trace.astype(np.float64).mean(axis=0), rtol=1e-5
    )


def test_counter_is_an_integer() -> None:
    state = covjax.cov_weighting().init(jnp.ones(3))
    assert state.count.dtype == jnp.int32
