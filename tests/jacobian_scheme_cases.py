"""Shared cases of the tests of the per-loss-gradient aggregators (trimmed mean, GradDrop,
ConFIG, MoCo, ExcessMTL): random Jacobians and the end-to-end ``value_and_grad`` check."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from precision import assert_trees_close64

import covjax

K, P = 32, 300
#: Machine epsilon of float32: the weights are stored in float32 even in x64 mode.
EPS32 = float(np.finfo(np.float32).eps)


def random_jacobian(seed: int, k: int = K, p: int = P) -> np.ndarray:
    """A K×P float64 Jacobian with rows on scales 10^±1."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(k, p)) * 10.0 ** rng.uniform(-1, 1, size=(k, 1))


def drifting_jacobians(seed: int, steps: int, k: int = K, p: int = P) -> list[np.ndarray]:
    """``steps`` Jacobians around one random Jacobian (noise 30% of its mean entry)."""
    rng = np.random.default_rng(seed)
    J = random_jacobian(seed, k, p)
    return [J + 0.3 * rng.normal(size=J.shape) * np.abs(J).mean() for _ in range(steps)]


def run_steps64(
    scheme: covjax.Weighting, jacobians: list[np.ndarray], losses: list | None = None
) -> tuple[list, covjax.WeightingState]:
    """``update``'s outputs over the Jacobians, in float64 (jitted), and the final state."""
    with jax.enable_x64(True):
        k = jacobians[0].shape[0]
        losses = [np.ones(k)] * len(jacobians) if losses is None else losses
        state = scheme.init(jnp.asarray(losses[0], jnp.float64))
        update = jax.jit(scheme.update)
        outputs = []
        for J, loss in zip(jacobians, losses, strict=True):
            out, state = update(jnp.asarray(loss, jnp.float64), state, jacobian=jnp.asarray(J))
            outputs.append(jax.tree.map(np.asarray, out))
    return outputs, state


# A tiny two-level network: a shared layer (12 parameters) and one head per loss.
NUM_LOSSES, SHARED_PARAMS = 3, 12


def _loss_fn(params: dict, x: jax.Array) -> jax.Array:
    z = jnp.tanh(x @ params["shared"])
    return jnp.mean((z @ params["heads"].T - 0.5) ** 2, axis=0)


def check_value_and_grad(scheme: covjax.Weighting, steps: int = 2) -> None:
    """``covjax.value_and_grad(..., wrt="shared")`` over a few steps, in float64, equals
    ``update`` on the explicit per-loss Jacobian of the shared layer: the shared layer gets
    the scheme's direction (or Σ w_i ∇L_i), the heads ∇ Σ w_i L_i."""
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        params = {
            "shared": jnp.asarray(rng.normal(size=(4, 3))),
            "heads": jnp.asarray(rng.normal(size=(NUM_LOSSES, 3))),
        }
        step = jax.jit(covjax.value_and_grad(_loss_fn, scheme, wrt="shared"))
        state = reference_state = scheme.init(jnp.ones(NUM_LOSSES, jnp.float64))
        for index in range(steps):
            x = jnp.asarray(rng.normal(size=(8, 4)))
            out, grads = step(params, state, x)
            losses = _loss_fn(params, x)
            rows = jax.jacrev(lambda shared: _loss_fn({**params, "shared": shared}, x))
            jacobian = rows(params["shared"]).reshape(NUM_LOSSES, -1)
            if covjax.JACOBIAN in scheme.requires:
                reference, reference_state = scheme.update(
                    losses, reference_state, jacobian=jacobian
                )
            else:
                gramian = jacobian @ jacobian.T
                reference, reference_state = scheme.update(losses, reference_state, gramian=gramian)
            gives_direction = isinstance(reference, covjax.Aggregation)
            weights = reference.weights if gives_direction else reference
            np.testing.assert_array_equal(out.weights, weights)
            weighted = jax.grad(lambda p, w=weights, x=x: jnp.sum(w * _loss_fn(p, x)))(params)
            if gives_direction:
                weighted["shared"] = reference.direction.reshape(params["shared"].shape)
            assert_trees_close64(grads, weighted)
            assert bool(out.accepted), index
            state = out.state
            params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
