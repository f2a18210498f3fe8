"""The loss-statistics schemes against their NumPy oracles, plus shared properties.

Covers static/equal, uncertainty, IMTL-L, RLW, GLS, FAMO, DWA, SoftAdapt,
ReLoBRaLo, LSB and multi-loss rebalancing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st
from oracles import loss_schemes as oracle
from precision import EPS32, assert_states_close, normalization_rtol, trace_rtol

import covjax

K = 32
STEPS = 300


def random_trace(seed: int, steps: int, k: int, spread: float = 3.0) -> np.ndarray:
    """Positive, decaying, noisy losses on scales 10^±spread."""
    rng = np.random.default_rng(seed)
    scales = 10.0 ** rng.uniform(-spread, spread, size=k)
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


def assert_weights_close(got: jax.Array, want: np.ndarray) -> None:
    """|w − w_oracle| ≤ T·eps32 relative to max(1, |w_oracle|) (weights may be large): the
    float32 scheme's roundings over the T steps of the trace (:func:`precision.trace_rtol`;
    measured ≤ 45 eps32, the Adam-learned log-weights, whose float32 rounding adds up)."""
    got = np.asarray(got, np.float64)
    error = np.abs(got - want) / np.maximum(1.0, np.abs(want))
    assert np.all(np.isfinite(got))
    assert error.max() <= trace_rtol(len(want)), (
        f"max scaled error {error.max():.3g} at {np.unravel_index(error.argmax(), error.shape)}"
    )


def rlw_draws(seed: int, steps: int, k: int) -> np.ndarray:
    key = jax.random.PRNGKey(seed)
    draws = []
    for _ in range(steps):
        key, sub = jax.random.split(key)
        draws.append(np.asarray(jax.random.normal(sub, (k,), jnp.float32)))
    return np.stack(draws)


def relobralo_draws(seed: int, steps: int, expected_rho: float) -> np.ndarray:
    key = jax.random.PRNGKey(seed)
    rho = np.ones(steps)
    for t in range(2, steps):
        key, sub = jax.random.split(key)
        rho[t] = float(jax.random.bernoulli(sub, expected_rho))
    return rho


def linear_ramp(update_index: int) -> float:
    return 0.7 * min(update_index / 3, 1.0)


# optax's float32 Adam bias correction 1 − b2^t loses ~1e-7/(1 − b2^t) relative
# (b2 = 0.999: ~1e-4/t), which the learned s carry into w = e^{±s} at ~1e-5;
# b2 = 0.99 keeps that float32 effect 10× below the oracle tolerance.
ADAM_B2 = 0.99


def learned_optimizer() -> optax.GradientTransformation:
    return optax.adam(0.05, b2=ADAM_B2)


# name -> (covjax scheme factory, oracle(trace) -> weights)
ORACLE_CASES: dict[
    str, tuple[Callable[[], covjax.Weighting], Callable[[np.ndarray], np.ndarray]]
] = {
    "uncertainty_reference": (
        lambda: covjax.uncertainty_weighting(learned_optimizer()),
        lambda tr: oracle.uncertainty(tr, lr=0.05, b2=ADAM_B2),
    ),
    "uncertainty_kendall": (
        lambda: covjax.uncertainty_weighting(learned_optimizer(), form="kendall"),
        lambda tr: oracle.uncertainty(tr, lr=0.05, form="kendall", b2=ADAM_B2),
    ),
    "imtl_l": (
        lambda: covjax.imtl_l(learned_optimizer()),
        lambda tr: oracle.imtl_l(tr, lr=0.05, b2=ADAM_B2),
    ),
    "gls": (covjax.gls, oracle.gls),
    "rlw": (lambda: covjax.rlw(seed=3), lambda tr: oracle.rlw(rlw_draws(3, *tr.shape))),
    "famo": (covjax.famo, lambda tr: oracle.famo(tr, lr=0.025, weight_decay=1e-3)),
    "famo_fast": (
        lambda: covjax.famo(learning_rate=0.2, weight_decay=0.01, min_losses=1e-6),
        lambda tr: oracle.famo(tr, lr=0.2, weight_decay=0.01, min_losses=1e-6),
    ),
    "dwa_period7": (
        lambda: covjax.dwa(period=7),
        lambda tr: oracle.dwa(tr, period=7, temperature=2.0),
    ),
    "dwa_per_step": (
        lambda: covjax.dwa(period=1, temperature=0.5),
        lambda tr: oracle.dwa(tr, period=1, temperature=0.5),
    ),
    **{
        f"softadapt_{variant}": (
            functools.partial(covjax.softadapt, beta=0.3, window=4, variant=variant),
            functools.partial(oracle.softadapt, beta=0.3, window=4, variant=variant),
        )
        for variant in ("plain", "normalized", "loss_weighted")
    },
    "relobralo": (
        lambda: covjax.relobralo(alpha=0.95, temperature=1.0, expected_rho=0.9, seed=5),
        lambda tr: oracle.relobralo(tr, 0.95, 1.0, relobralo_draws(5, tr.shape[0], 0.9)),
    ),
    "lsb": (lambda: covjax.lsb(period=20), lambda tr: oracle.lsb(tr, period=20)),
    "lsb_scale_only": (
        lambda: covjax.lsb(period=25, difficulty=False),
        lambda tr: oracle.lsb(tr, period=25, use_difficulty=False),
    ),
    "lsb_linear_unnormalized_priors": (
        lambda: covjax.lsb(
            period=15,
            beta=0.7,
            beta_schedule="linear",
            ramp_periods=3,
            normalize_difficulty=False,
            priors=jnp.linspace(0.5, 1.5, K) / K,
        ),
        lambda tr: oracle.lsb(
            tr,
            period=15,
            normalize=False,
            priors=np.linspace(0.5, 1.5, K) / K,
            beta_of_update=linear_ramp,
        ),
    ),
    "multi_loss_rebalancing": (
        lambda: covjax.multi_loss_rebalancing(steps_per_epoch=50),
        lambda tr: oracle.multi_loss_rebalancing(tr, 50, 4),
    ),
    "multi_loss_rebalancing_uneven": (
        lambda: covjax.multi_loss_rebalancing(steps_per_epoch=43, rebalances_per_epoch=3),
        lambda tr: oracle.multi_loss_rebalancing(tr, 43, 3),
    ),
}


@pytest.mark.parametrize("case", sorted(ORACLE_CASES))
def test_matches_numpy_oracle(case: str) -> None:
    make_scheme, oracle_fn = ORACLE_CASES[case]
    trace = random_trace(seed=len(case), steps=STEPS, k=K)
    got = run_trace(make_scheme(), jnp.asarray(trace))
    assert_weights_close(got, oracle_fn(trace))


def test_static_and_equal_weights() -> None:
    trace = jnp.asarray(random_trace(0, 5, 4))
    np.testing.assert_allclose(run_trace(covjax.equal_weighting(), trace), 0.25)
    fixed = jnp.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(run_trace(covjax.static_weighting(fixed), trace), 5 * [fixed])
    normalized = run_trace(covjax.static_weighting(fixed, normalize=True), trace)
    np.testing.assert_allclose(normalized, 5 * [fixed / 10], rtol=1e-6)


def test_static_weights_as_a_pytree() -> None:
    losses = {"depth": jnp.float32(2.0), "seg": {"ce": jnp.float32(1.0)}}
    scheme = covjax.static_weighting({"depth": 0.3, "seg": {"ce": 0.7}})
    weights, _ = scheme.update(losses, scheme.init(losses))
    assert float(weights["seg"]["ce"]) == pytest.approx(0.7)
    assert float(covjax.weighted_sum(losses, weights)) == pytest.approx(1.3)
    with pytest.raises(ValueError, match="weights are 2 losses named"):
        scheme.init({"depth": jnp.float32(1.0), "other": jnp.float32(1.0)})
    with pytest.raises(ValueError, match="1-D array of 3 losses"):
        covjax.static_weighting(jnp.ones(3)).init(jnp.ones(4))


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: covjax.static_weighting(jnp.array([1.0, -1.0])), "non-negative"),
        (lambda: covjax.static_weighting(jnp.array([1.0, jnp.nan])), "finite"),
        (lambda: covjax.uncertainty_weighting(form="gauss"), "form must be"),
        (lambda: covjax.dwa(period=0), "period must be a positive integer"),
        (lambda: covjax.dwa(period=2, temperature=0.0), "temperature must be positive"),
        (lambda: covjax.softadapt(window=1), "window must be an integer"),
        (lambda: covjax.softadapt(variant="max"), "variant must be"),
        (lambda: covjax.relobralo(alpha=1.5), "alpha must lie in"),
        (lambda: covjax.lsb(period=3, beta_schedule="cosine"), "beta_schedule"),
        (lambda: covjax.multi_loss_rebalancing(3, 4), "exceeds steps_per_epoch"),
        (lambda: covjax.rlw(distribution="cauchy"), "distribution must be"),
        (lambda: covjax.gls(epsilon=0.0), "epsilon must be positive"),
        (lambda: covjax.lsb(period=3, priors=jnp.ones(2)).init(jnp.ones(3)), "priors has shape"),
    ],
)
def test_bad_arguments_raise_clear_errors(factory: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory()


def test_gls_weights_are_the_gradient_of_the_geometric_mean() -> None:
    losses = jnp.asarray(random_trace(2, 1, 8)[0])
    weights, _ = covjax.gls().update(losses, covjax.gls().init(losses))
    geometric_mean = lambda x: jnp.prod(x ** (1.0 / x.shape[0]))  # noqa: E731
    # Two float32 evaluations of a product of K powers: ≤ 2K roundings each.
    rtol = 4 * losses.shape[0] * EPS32
    np.testing.assert_allclose(weights, jax.grad(geometric_mean)(losses), rtol=rtol)
    np.testing.assert_allclose(jnp.sum(weights * losses), geometric_mean(losses), rtol=rtol)


JOINT_TARGETS = jnp.linspace(-1.0, 2.0, 5)
JOINT_STEPS = 30


def joint_losses(theta: jax.Array) -> jax.Array:
    return (theta - JOINT_TARGETS) ** 2 + 0.1


def assert_reproduces_joint_training(
    make_scheme: Callable[[optax.GradientTransformation], covjax.Weighting],
    joint_objective: Callable[[tuple[jax.Array, jax.Array]], jax.Array],
) -> covjax.WeightingState:
    """Network Adam on Σ α L plus the scheme's Adam on its log-weights s == one Adam on (θ, s)
    for ``joint_objective((θ, s))``, on 5 losses (θ − target)² + 0.1; the final state."""
    adam = optax.adam(0.05)
    params = (jnp.zeros(5), jnp.zeros(5))
    joint_state = adam.init(params)
    theta = jnp.zeros(5)
    theta_state = adam.init(theta)
    scheme = make_scheme(adam)
    scheme_state = scheme.init(joint_losses(theta))
    for _ in range(JOINT_STEPS):
        updates, joint_state = adam.update(jax.grad(joint_objective)(params), joint_state)
        params = optax.apply_updates(params, updates)
        weights, scheme_state = scheme.update(joint_losses(theta), scheme_state)
        grads = jax.grad(lambda th, w=weights: covjax.weighted_sum(joint_losses(th), w))(theta)
        updates, theta_state = adam.update(grads, theta_state)
        theta = optax.apply_updates(theta, updates)
    # The same float32 maths arranged two ways, 30 Adam steps: trace_rtol of each leaf's scale.
    for got, want in ((theta, params[0]), (scheme_state.inner.log_weights, params[1])):
        atol = trace_rtol(JOINT_STEPS) * np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    return scheme_state


def test_uncertainty_reproduces_joint_training_with_adam() -> None:
    def joint_objective(params):
        theta, s = params
        return jnp.sum(jnp.exp(-s) * joint_losses(theta) + s)

    scheme_state = assert_reproduces_joint_training(covjax.uncertainty_weighting, joint_objective)
    log_weights = np.asarray(scheme_state.inner.log_weights)
    regularizer = covjax.uncertainty_regularizer(scheme_state)
    # Σ s over 5 log-weights: their error and the sum's own (≤ 5 roundings of max |s|).
    atol = (trace_rtol(JOINT_STEPS) + 5 * EPS32) * 5 * float(np.abs(log_weights).max())
    np.testing.assert_allclose(regularizer, log_weights.astype(np.float64).sum(), rtol=0, atol=atol)
    half = covjax.uncertainty_regularizer(scheme_state, form="kendall")
    np.testing.assert_allclose(half, 0.5 * regularizer, rtol=1e-6)
    with pytest.raises(TypeError, match="uncertainty_weighting"):
        covjax.uncertainty_regularizer(covjax.gls().init(jnp.ones(3)))


def test_lsb_equalises_loss_scales_after_the_first_period() -> None:
    """Constant losses: after period 1 every scale w_k L_k equals s_k · L̄ (difficulty 1)."""
    losses = jnp.array([0.01, 1.0, 100.0])
    trace = jnp.tile(losses, (9, 1))
    weights = np.asarray(run_trace(covjax.lsb(period=3), trace))
    np.testing.assert_allclose(weights[:3], 1 / 3, rtol=EPS32)  # 1/K rounded to float32
    scales = weights[3:] * np.asarray(losses)
    # w_k L_k = s_k L̄: the mean of 3, a ratio, a scale and a product, a rounding each (×2).
    np.testing.assert_allclose(scales, np.full_like(scales, np.mean(losses) / 3), rtol=8 * EPS32)


# ---------------------------------------------------------------------------
# Properties shared by every scheme, on small traces and compiled once each.

# name -> (factory, promised sum of the weights or None, permutation equivariant)
PROPERTY_CASES: dict[str, tuple[Callable[[], covjax.Weighting], float | None, bool]] = {
    "equal": (covjax.equal_weighting, 1.0, True),
    "static": (lambda: covjax.static_weighting(jnp.arange(1.0, 7.0), normalize=True), 1.0, False),
    "uncertainty": (lambda: covjax.uncertainty_weighting(optax.adam(0.1)), None, True),
    "imtl_l": (lambda: covjax.imtl_l(optax.adam(0.1)), None, True),
    "gls": (covjax.gls, None, True),
    "rlw": (covjax.rlw, 1.0, False),
    "famo": (lambda: covjax.famo(learning_rate=0.1), 1.0, True),
    "dwa": (lambda: covjax.dwa(period=2), 6.0, True),
    "softadapt": (lambda: covjax.softadapt(beta=1.0, variant="loss_weighted"), 1.0, True),
    "relobralo": (lambda: covjax.relobralo(expected_rho=0.5), 6.0, True),
    "lsb": (lambda: covjax.lsb(period=2), None, True),
    "rebalancing": (lambda: covjax.multi_loss_rebalancing(steps_per_epoch=4), None, True),
    "stch": (lambda: covjax.stch(mu=100.0), 1.0, True),
    "stch_warmup": (lambda: covjax.stch(warmup_steps=3), None, True),
    "pbi": (covjax.pbi, None, True),
    "cosmos": (covjax.cosmos, None, True),
    "lbpinn": (lambda: covjax.lbpinn(optax.adam(0.1)), None, True),
}
PROPERTY_K = 6
# Scalarizations whose gradient trades one loss off for the others: weights of either sign.
SIGNED_WEIGHTS = {"pbi", "cosmos"}


@functools.cache
def compiled_run(case: str) -> Callable[[np.ndarray], jax.Array]:
    scheme = PROPERTY_CASES[case][0]()
    return jax.jit(lambda trace: run_trace(scheme, trace))


small_traces = st.integers(0, 2**31 - 1).map(lambda seed: random_trace(seed, 12, PROPERTY_K))


@pytest.mark.parametrize("case", sorted(PROPERTY_CASES))
@given(trace=small_traces, seed=st.integers(0, 1000))
def test_weights_finite_non_negative_normalized_equivariant(
    case: str, trace: np.ndarray, seed: int
) -> None:
    _, promised_sum, equivariant = PROPERTY_CASES[case]
    run = compiled_run(case)
    weights = np.asarray(run(trace))
    assert np.all(np.isfinite(weights))
    assert case in SIGNED_WEIGHTS or np.all(weights >= 0)
    if promised_sum is not None:
        rtol = normalization_rtol(PROPERTY_K)
        np.testing.assert_allclose(weights.sum(axis=1), promised_sum, rtol=rtol)
    if equivariant:
        permutation = np.random.default_rng(seed).permutation(PROPERTY_K)
        # Each step's K-term sums in another order, through the T steps of the trace.
        rtol = trace_rtol(len(trace), normalization_rtol(PROPERTY_K))
        permuted = run(trace[:, permutation])
        atol = rtol * np.abs(weights).max()  # for weights near 0: relative to the largest
        np.testing.assert_allclose(permuted, weights[:, permutation], rtol=rtol, atol=atol)


@pytest.mark.parametrize("case", sorted(PROPERTY_CASES))
def test_jit_equals_no_jit(case: str) -> None:
    scheme = PROPERTY_CASES[case][0]()
    trace = random_trace(7, 6, PROPERTY_K)
    state_eager = state_jit = scheme.init(trace[0])
    update_jit = jax.jit(scheme.update)
    # Compiled as a whole, XLA may fuse multiply-adds and reorder the K-term sums.
    rtol = trace_rtol(len(trace), normalization_rtol(PROPERTY_K))
    for losses in jnp.asarray(trace):
        w_eager, state_eager = scheme.update(losses, state_eager)
        w_jit, state_jit = update_jit(losses, state_jit)
        np.testing.assert_allclose(w_eager, w_jit, rtol=rtol, atol=rtol * np.abs(w_jit).max())
    assert_states_close(state_eager, state_jit, rtol=rtol)


@pytest.mark.parametrize("case", sorted(PROPERTY_CASES))
def test_non_finite_step_leaves_state_unchanged(case: str) -> None:
    scheme = PROPERTY_CASES[case][0]()
    update = jax.jit(scheme.update)
    trace = random_trace(8, 5, PROPERTY_K)
    state = scheme.init(trace[0])
    for losses in trace:
        weights, state = update(losses, state)
    for bad in (np.nan, np.inf):
        poisoned = trace[-1].copy()
        poisoned[2] = bad
        poisoned_weights, poisoned_state = update(poisoned, state)
        chex.assert_trees_all_equal(poisoned_state, state)
        np.testing.assert_array_equal(poisoned_weights, weights)


@pytest.mark.parametrize("case", sorted(PROPERTY_CASES))
def test_zero_loss_gives_finite_weights(case: str) -> None:
    trace = random_trace(9, 12, PROPERTY_K)
    trace[5:, 3] = 0.0  # a loss that reaches exactly 0
    scheme = PROPERTY_CASES[case][0]()
    state = scheme.init(trace[0])
    update = jax.jit(scheme.update)
    for losses in trace:
        weights, state = update(losses, state)
        assert np.all(np.isfinite(weights))
    # Schemes that need positive losses reject the steps with a zero loss; the others use them.
    accepted = 5 if scheme.properties.positive_losses else trace.shape[0]
    assert int(state.count) == accepted


# ---------------------------------------------------------------------------
# Hyper-parameter sweeps as one vmap over traced hyper-parameters.


def test_vmap_sweep_over_hyper_parameters() -> None:
    """A sweep is one vmap over traced hyper-parameters; each slice equals a single run."""
    trace = jnp.asarray(random_trace(11, 40, 5))
    sweeps: dict[str, tuple[Callable[[jax.Array], covjax.Weighting], list[float]]] = {
        "dwa_temperature": (lambda v: covjax.dwa(period=4, temperature=v), [0.5, 2.0, 8.0]),
        "uncertainty_lr": (
            lambda v: covjax.uncertainty_weighting(optax.adam(v)),
            [1e-3, 1e-2, 1e-1],
        ),
        "famo_lr": (lambda v: covjax.famo(learning_rate=v), [0.01, 0.1, 0.5]),
        "lsb_beta": (lambda v: covjax.lsb(period=5, beta=v), [0.5, 1.0, 2.0]),
    }
    for name, (make, values) in sweeps.items():

        def run_one(value: jax.Array, make=make) -> jax.Array:
            scheme = make(value)
            state = scheme.init(trace[0])

            def body(state, losses):
                weights, state = scheme.update(losses, state)
                return state, weights

            return jax.lax.scan(body, state, trace)[1]

        values = jnp.asarray(values, jnp.float32)
        swept = jax.jit(jax.vmap(run_one))(values)
        single = jax.jit(run_one)
        # Batched and single programs may order each step's K-term sums differently.
        rtol = trace_rtol(trace.shape[0], normalization_rtol(trace.shape[1]))
        for index, value in enumerate(values):
            np.testing.assert_allclose(swept[index], single(value), rtol=rtol, err_msg=name)
        assert not np.allclose(swept[0], swept[-1]), f"{name}: the hyper-parameter has no effect"


@pytest.mark.parametrize("distribution", ["uniform", "dirichlet"])
def test_rlw_other_distributions_give_fresh_simplex_weights(distribution: str) -> None:
    weights = np.asarray(run_trace(covjax.rlw(seed=1, distribution=distribution), jnp.ones((4, 5))))
    assert np.all(weights > 0)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=normalization_rtol(5))
    assert np.ptp(weights, axis=0).min() > 1e-4  # a new draw every step


# ---------------------------------------------------------------------------
# End to end: every scheme drives a tiny multi-task regression through
# covjax.value_and_grad and optax.


TRAINING_SCHEMES: dict[str, Callable[[], covjax.Weighting]] = {
    "static": lambda: covjax.static_weighting(jnp.full(4, 0.25)),
    "uncertainty": lambda: covjax.uncertainty_weighting(optax.adam(0.05)),
    "imtl_l": lambda: covjax.imtl_l(optax.adam(0.05)),
    "rlw": covjax.rlw,
    "gls": covjax.gls,
    "famo": covjax.famo,
    "dwa": lambda: covjax.dwa(period=5),
    "softadapt": covjax.softadapt,
    "relobralo": covjax.relobralo,
    "lsb": lambda: covjax.lsb(period=5),
    "rebalancing": lambda: covjax.multi_loss_rebalancing(steps_per_epoch=10),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TRAINING_SCHEMES))
def test_trains_a_multi_task_model(name: str) -> None:
    rng = np.random.default_rng(0)
    inputs = jnp.asarray(rng.normal(size=(32, 3)), jnp.float32)
    true_heads = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
    targets = inputs @ true_heads.T
    loss_scales = jnp.array([0.1, 1.0, 10.0, 100.0])  # very different loss scales

    def loss_fn(params, x, y):
        prediction = (x @ params["shared"]) @ params["heads"].T
        return loss_scales * jnp.mean((prediction - y) ** 2, axis=0) + 1e-4  # (4,), positive

    scheme = TRAINING_SCHEMES[name]()
    optimizer = optax.adam(0.05)
    params = {"shared": jnp.eye(3), "heads": jnp.zeros((4, 3))}
    weighting_state = scheme.init(loss_fn(params, inputs, targets))
    step_fn = covjax.value_and_grad(loss_fn, scheme)

    @jax.jit
    def train(params, weighting_state):
        def body(carry, _):
            params, opt_state, weighting_state = carry
            out, grads = step_fn(params, weighting_state, inputs, targets)
            # The gradient is that of Σ α_i L_i with the weights of this step.
            expected = jax.grad(
                lambda p: covjax.weighted_sum(loss_fn(p, inputs, targets), out.weights)
            )(params)
            mismatch = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), grads, expected)
            updates, opt_state = optimizer.update(grads, opt_state)
            return (optax.apply_updates(params, updates), opt_state, out.state), (
                out.losses,
                jnp.max(jnp.stack(jax.tree.leaves(mismatch))),
            )

        carry = (params, optimizer.init(params), weighting_state)
        (_, _, final_state), (losses, mismatch) = jax.lax.scan(body, carry, None, length=60)
        return losses, mismatch, final_state

    losses, mismatch, final_state = train(params, weighting_state)
    assert float(jnp.max(mismatch)) < 1e-3 * float(jnp.max(losses[0]))
    assert int(final_state.count) == 60
    # Every task improves (relative to its own scale).
    assert np.all(np.asarray(losses[-1]) < 0.5 * np.asarray(losses[0])), np.asarray(
        losses[-1] / losses[0]
    )
