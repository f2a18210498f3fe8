"""Run by tests/test_sharding.py in a subprocess with 8 fake CPU devices.

Trains a small multi-head network for a few steps with MGDA (gradients w.r.t.
all parameters; Gramians factorized and materialised), with GradNorm (w.r.t.
one shared layer), with MGDA-UB over separate two-layer heads whose losses
are pulled back in groups (covjax._src.program), and with GradDrop's
direction w.r.t. the same heads' input z (its batch-separated form, which
sums over the sharded batch) pulled back through the trunk
(``feature_maps=True``), once with the
batch sharded over a ``Mesh`` of all devices (parameters and weighting state
replicated) and once on a single device, and prints the largest differences in
weights and parameters as JSON.

Runs in float64: sharding is an identity, and in float32 the comparison would
measure the CPU's summation orders, amplified by the min-norm solve (the weights
are still stored in float32).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from sharded_weighting_check import max_diff, relative_diff

import covjax
from covjax._src import gradients

jax.config.update("jax_enable_x64", True)

NUM_LOSSES = 4
SCHEMES = ("mgda", "mgda_materialised", "gradnorm", "mgda_ub_grouped", "graddrop_representation")


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    hidden = jnp.tanh(x @ params["shared"]["w1"])
    hidden = jnp.tanh(hidden @ params["shared"]["w2"])
    predictions = jnp.einsum("bd,kd->kb", hidden, params["heads"])
    targets = jnp.stack([y, -y, jnp.sin(3 * y), y**2])
    return jnp.mean((predictions - targets) ** 2, axis=1)


def trunk(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.tanh(jnp.tanh(x @ params["shared"]["w1"]) @ params["shared"]["w2"])


def separate_heads(params: dict, z: jax.Array, x: jax.Array, y: jax.Array) -> dict:
    """A dict of losses, each from its own two-layer head: one group per loss."""
    targets = (y, -y, jnp.sin(3 * y), y**2)
    losses = {}
    for i, target in enumerate(targets):
        head = params["separate"][f"head{i}"]
        prediction = jnp.tanh(z @ head["w1"]) @ head["w2"]
        losses[f"task{i}"] = jnp.mean((prediction - target) ** 2)
    return losses


def marked_heads(params: dict, x: jax.Array, y: jax.Array) -> dict:
    """separate_heads on z marked by a zero leaf: the per-loss gradients are taken w.r.t. z."""
    return separate_heads(params, trunk(params, x, y) + params["representation"], x, y)


def train(scheme_name: str, devices: list, steps: int = 4) -> tuple[list, dict]:
    mesh = Mesh(np.array(devices), ("data",))
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sharded = NamedSharding(mesh, PartitionSpec("data"))
    rng = np.random.default_rng(0)
    params = {
        "shared": {
            "w1": rng.normal(size=(5, 16)) * 0.5,
            "w2": rng.normal(size=(16, 16)) * 0.3,
        },
        "heads": rng.normal(size=(NUM_LOSSES, 16)) * 0.3,
        "separate": {
            f"head{i}": {
                "w1": rng.normal(size=(16, 32)) * 0.3,
                "w2": rng.normal(size=(32,)) * 0.3,
            }
            for i in range(NUM_LOSSES)
        },
    }
    params = jax.device_put(params, replicated)
    # Factorized Gramians (layer inputs × output cotangents) and materialised ones.
    if scheme_name == "mgda":
        scheme, wrt, factorize = covjax.mgda(normalization="l2"), None, "always"
    elif scheme_name == "mgda_materialised":
        scheme, wrt, factorize = covjax.mgda(normalization="l2"), None, "never"
    else:
        scheme, wrt, factorize = covjax.gradnorm(learning_rate=0.05), "shared/w2", "always"
    if scheme_name in ("mgda_ub_grouped", "graddrop_representation"):
        on_z = scheme_name == "graddrop_representation"
        scheme = covjax.graddrop(leak=0.3, batch_separated=True) if on_z else covjax.mgda()
        state = jax.device_put(
            scheme.init({f"task{i}": 1.0 for i in range(NUM_LOSSES)}), replicated
        )
        step = covjax.value_and_grad(
            marked_heads, scheme, wrt="representation", chunk_size=2, feature_maps=on_z
        )
    else:
        state = jax.device_put(scheme.init(jnp.ones(NUM_LOSSES)), replicated)
        step = covjax.value_and_grad(loss_fn, scheme, wrt=wrt, chunk_size=2)

    @jax.jit
    def train_step(params, state, x, y):
        if scheme_name in ("mgda_ub_grouped", "graddrop_representation"):
            z = jnp.zeros((x.shape[0], params["shared"]["w2"].shape[1]), x.dtype)
            out, grads = step({**params, "representation": z}, state, x, y)
            grads = {key: value for key, value in grads.items() if key != "representation"}
        else:
            out, grads = step(params, state, x, y)
        params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
        return params, out.state, out.weights

    history = []
    for t in range(steps):
        batch_rng = np.random.default_rng(100 + t)
        x = batch_rng.normal(size=(64, 5))
        y = np.tanh(x[:, 0] - x[:, 1])
        x = jax.device_put(x, batch_sharded)
        y = jax.device_put(y, batch_sharded)
        with gradients._engine_options(factorize=factorize):  # read when train_step traces
            params, state, weights = train_step(params, state, x, y)
        history.append(np.asarray(jax.tree.leaves(weights)))
    if scheme_name == "gradnorm":
        history.append(np.asarray(state.inner.weights))  # the learned weights moved
    return history, params


def main() -> None:
    devices = jax.devices()
    report: dict = {"devices": len(devices)}
    for scheme_name in SCHEMES:
        sharded_weights, sharded_params = train(scheme_name, devices)
        single_weights, single_params = train(scheme_name, devices[:1])
        report[scheme_name] = {
            "weights": max_diff(sharded_weights, single_weights),
            "params": relative_diff(sharded_params, single_params),
            "dtype": str(jax.tree.leaves(sharded_params)[0].dtype),
            "weight_spread": float(np.ptp(sharded_weights[-1])),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
