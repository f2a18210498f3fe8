"""Run by tests/test_sharding.py in a subprocess with 8 fake CPU devices.

Trains a small two-loss regression for a few steps with CoV-Weighting, once
with the batch sharded over a ``Mesh`` of all devices (parameters and the
weighting state replicated) and once on a single device, and prints the
largest differences in weights, weighting state and parameters as JSON.

Runs in float64: sharding is an identity, and in float32 the comparison would
measure the CPU's summation orders (the weights are still stored in float32).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import covjax

jax.config.update("jax_enable_x64", True)


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> dict:
    hidden = jnp.tanh(x @ params["w1"])
    prediction = hidden @ params["w2"]
    return {
        "fit": jnp.mean((prediction[:, 0] - y) ** 2),
        "aux": jnp.mean(jnp.abs(prediction[:, 1] + y)),
        "decay": 1e-3 * jnp.sum(params["w1"] ** 2),
    }


def train(devices: list, steps: int = 6) -> tuple[list, covjax.WeightingState, dict]:
    mesh = Mesh(np.array(devices), ("data",))
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sharded = NamedSharding(mesh, PartitionSpec("data"))
    rng = np.random.default_rng(0)
    params = {
        "w1": rng.normal(size=(5, 16)),
        "w2": rng.normal(size=(16, 2)) * 0.3,
    }
    params = jax.device_put(params, replicated)
    scheme = covjax.cov_weighting()
    x0 = jnp.zeros((1, 5))
    state = jax.device_put(scheme.init(loss_fn(params, x0, jnp.zeros(1))), replicated)
    step = covjax.value_and_grad(loss_fn, scheme)

    @jax.jit
    def train_step(params, state, x, y):
        out, grads = step(params, state, x, y)
        params = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
        return params, out.state, out.weights

    history = []
    for t in range(steps):
        batch_rng = np.random.default_rng(100 + t)
        x = batch_rng.normal(size=(64, 5))
        y = np.sin(x[:, 0]) + 0.1 * batch_rng.normal(size=64)
        x = jax.device_put(x, batch_sharded)
        y = jax.device_put(y, batch_sharded)
        params, state, weights = train_step(params, state, x, y)
        history.append(np.asarray(jnp.stack(jax.tree.leaves(weights))))
    return history, state, params


def max_diff(a, b) -> float:
    return max(
        float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def relative_diff(a, b) -> float:
    """The largest difference relative to the largest entry of ``b`` (its scale)."""
    scale = max(float(np.max(np.abs(np.asarray(leaf)))) for leaf in jax.tree.leaves(b))
    return max_diff(a, b) / scale


def main() -> None:
    devices = jax.devices()
    sharded_weights, sharded_state, sharded_params = train(devices)
    single_weights, single_state, single_params = train(devices[:1])

    print(
        json.dumps(
            {
                "devices": len(devices),
                "weights": max_diff(sharded_weights, single_weights),
                "state": relative_diff(sharded_state, single_state),
                "params": relative_diff(sharded_params, single_params),
                "dtype": str(jax.tree.leaves(sharded_params)[0].dtype),
                "last_weights": sharded_weights[-1].tolist(),
            }
        )
    )


if __name__ == "__main__":
    main()
