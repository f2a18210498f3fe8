"""Random per-step gradients for the PINN balancers' tests, and a runner over them."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import covjax

K = 32
STEPS = 60
PARAMETERS = 40
ORACLE_RTOL = 1e-5  # the float32 scheme against the float64 oracle, relative to max(1, |w|)


def random_jacobians(seed: int, steps: int = STEPS, k: int = K, p: int = PARAMETERS) -> np.ndarray:
    """(T, K, P) per-loss gradients, each loss's on its own scale 10^±2, drifting over steps
    (weights up to ~1e5, below the schemes' caps)."""
    rng = np.random.default_rng(seed)
    scales = 10.0 ** rng.uniform(-2, 2, size=(1, k, 1))
    drift = np.exp(-0.02 * np.arange(steps))[:, None, None]
    return (scales * (0.2 + drift) * rng.normal(size=(steps, k, p))).astype(np.float32)


def gramians_of(jacobians: np.ndarray) -> np.ndarray:
    """Their Gramians, formed in float64 and rounded once to float32."""
    jacobians = jacobians.astype(np.float64)
    return np.einsum("tip,tjp->tij", jacobians, jacobians).astype(np.float32)


@functools.partial(jax.jit, static_argnums=(0, 1))
def run_gradients(scheme: covjax.Weighting, keyword: str, gradients: jax.Array) -> jax.Array:
    """Weights of every step, the per-step gradients passed as ``keyword`` (gramian/jacobian)."""
    losses = jnp.ones(gradients.shape[1])
    state = scheme.init(losses)

    def body(state, step_gradients):
        weights, state = scheme.update(losses, state, **{keyword: step_gradients})
        return state, weights

    return jax.lax.scan(body, state, gradients)[1]


def assert_close_to_oracle(got: jax.Array, want: np.ndarray) -> None:
    got = np.asarray(got, np.float64)
    error = np.abs(got - want) / np.maximum(1.0, np.abs(want))
    assert np.all(np.isfinite(got))
    assert error.max() < ORACLE_RTOL, (
        f"max scaled error {error.max():.3g} at {np.unravel_index(error.argmax(), error.shape)}"
    )


def assert_vmap_sweep_over_alpha(make, keyword: str, gradients: np.ndarray) -> None:
    """A sweep over α is one vmap; each slice equals a single run."""
    gradients = jnp.asarray(gradients)

    def run_one(alpha: jax.Array) -> jax.Array:
        return run_gradients.__wrapped__(make(alpha), keyword, gradients)

    alphas = jnp.array([0.0, 0.5, 0.9], jnp.float32)
    swept = jax.jit(jax.vmap(run_one))(alphas)
    for index, alpha in enumerate(alphas):
        single = jax.jit(run_one)(alpha)
        # Batched and single programs may order the K-term sums differently: K·eps32 a step.
        rtol = gradients.shape[1] * float(np.finfo(np.float32).eps) * gradients.shape[0]
        np.testing.assert_allclose(swept[index], single, rtol=rtol)
    assert not np.allclose(swept[0], swept[-1]), "alpha has no effect"
