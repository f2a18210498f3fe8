"""Multi-task network: shapes, the representation split, the shared layer, the Task protocol."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from precision import network_rtol

from experiments.common.task import EvaluatedTask, Task
from experiments.multitask import models, train
from experiments.multitask.configs import test as test_config

BATCH, HEIGHT, WIDTH, CLASSES = 2, 32, 64, 5


@functools.cache
def tiny_model() -> models.MultiTaskNet:
    return models.MultiTaskNet(
        CLASSES,
        width=1 / 16,
        stage_sizes=(1, 1, 1, 1),
        decoder_features=128,
        head_features=64,
        depth_scale=10.0,
        rngs=nnx.Rngs(0),
    )


def images() -> jax.Array:
    return jax.random.uniform(jax.random.key(1), (BATCH, HEIGHT, WIDTH, 3))


def test_output_shapes_and_unit_normals() -> None:
    # Training mode: batch statistics keep the tiny untrained heads' ReLUs alive
    # (a head whose raw output is exactly 0 yields a 0 normal).
    outputs = tiny_model()(images())
    chex.assert_shape(outputs.segmentation, (BATCH, HEIGHT, WIDTH, CLASSES))
    chex.assert_shape(outputs.depth, (BATCH, HEIGHT, WIDTH))
    chex.assert_shape(outputs.normals, (BATCH, HEIGHT, WIDTH, 3))
    np.testing.assert_allclose(jnp.linalg.norm(outputs.normals, axis=-1), 1.0, atol=1e-5)


def test_representation_split_reproduces_the_forward_pass() -> None:
    model = nnx.view(tiny_model(), use_running_average=True)
    z = model.features(images())
    chex.assert_shape(z, (BATCH, HEIGHT // 4, WIDTH // 4, model.representation_features))
    # The split and whole forwards are fused differently: float32 reordering, derived from the net.
    rtol = network_rtol(nnx.state(model, nnx.Param))
    split, whole = model.heads(z, HEIGHT, WIDTH), model(images())
    for got, want in zip(jax.tree.leaves(split), jax.tree.leaves(whole), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=rtol * float(np.abs(want).max()))


def test_shared_layer_exists_and_every_loss_depends_on_it() -> None:
    config = test_config.get_config()
    config.model.num_classes = CLASSES
    task = train.MultiTaskTask()
    assert isinstance(task, Task)
    assert isinstance(task, EvaluatedTask)
    model = task.create_model(config, nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(0)
    batch = {
        "left": np.asarray(images()),
        "semantic": rng.integers(0, CLASSES, (BATCH, HEIGHT, WIDTH)).astype(np.int32),
        "depth": rng.uniform(0.0, 20.0, (BATCH, HEIGHT, WIDTH)).astype(np.float32),
        "normals": np.tile(np.float32([0.0, -1.0, 0.0]), (BATCH, HEIGHT, WIDTH, 1)),
    }

    def losses(params: nnx.State) -> dict[str, jax.Array]:
        return task.losses(nnx.merge(graphdef, params, rest, copy=True), batch)

    values = jax.jit(losses)(params)
    assert set(values) == set(models.TASKS)
    z, carry = task.representation(nnx.merge(graphdef, params, rest, copy=True), batch)
    chex.assert_trees_all_close(
        task.losses_from_representation(
            nnx.merge(graphdef, params, rest, copy=True), z, carry, batch
        ),
        values,
        rtol=network_rtol(params),  # another fusion of the same float32 network
    )
    jacobian = jax.jit(jax.jacrev(losses))(params)
    for name in models.TASKS:
        layer = jacobian[name]
        for key in task.shared_layer():
            layer = layer[key]
        assert float(jnp.linalg.norm(layer[...])) > 0, name
        # Each head's parameters get gradient from its own loss only.
        for other in models.TASKS:
            head_norm = optax_norm(jacobian[name][f"{other}_head"])
            assert (head_norm > 0) == (other == name), (name, other)


def optax_norm(tree: nnx.State) -> float:
    return float(sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(tree)) ** 0.5)


def test_bad_inputs_are_named() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="divisible by 8"):
        model(jnp.zeros((1, 30, 64, 3)))
    with pytest.raises(ValueError, match="NHWC"):
        model(jnp.zeros((1, 32, 64)))
    with pytest.raises(ValueError, match="num_classes"):
        models.MultiTaskNet(0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="depth_scale"):
        models.MultiTaskNet(3, depth_scale=0.0, rngs=nnx.Rngs(0))
