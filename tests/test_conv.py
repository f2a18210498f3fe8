"""Tests of experiments/common/conv.py: small-map convolutions off XLA:CPU's naive loop."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from experiments.common import sharding
from experiments.common.conv import conv_general_dilated, naive_loop_convolutions
from experiments.common.train import Trainer
from experiments.depth.configs import test as depth_test_config
from experiments.depth.train import DepthTask
from experiments.multitask import train as multitask_train
from experiments.multitask.configs import test as multitask_test_config
from experiments.segmentation import train as segmentation_train
from experiments.segmentation.configs import test as segmentation_test_config

EPS32 = float(jnp.finfo(jnp.float32).eps)
IN_FEATURES, OUT_FEATURES, BATCH = 5, 6, 2

#: (kernel, stride, dilation, map): the models' kernel/stride/dilation combinations
#: (3×3, strided 3×3, the dilated backbone's 3×3, the 7×7 stem) on maps smaller
#: than, as large as, and larger than the kernel; ``detour`` says whether XLA would
#: otherwise swap an operand (kernel area above the input or the output map's).
CASES = [
    pytest.param(3, 1, 1, (1, 2), True, id="3x3-1x2"),
    pytest.param(3, 1, 1, (2, 4), True, id="3x3-2x4"),
    pytest.param(3, 1, 1, (3, 3), False, id="3x3-3x3"),
    pytest.param(3, 1, 1, (8, 8), False, id="3x3-8x8"),
    pytest.param(3, 2, 1, (2, 4), True, id="3x3-stride2-2x4"),
    pytest.param(3, 2, 1, (3, 3), True, id="3x3-stride2-3x3"),
    pytest.param(3, 2, 1, (8, 8), False, id="3x3-stride2-8x8"),
    pytest.param(3, 1, 2, (2, 4), True, id="3x3-dilation2-2x4"),
    pytest.param(3, 1, 4, (8, 8), False, id="3x3-dilation4-8x8"),
    pytest.param(7, 2, 1, (4, 4), True, id="7x7-stride2-4x4"),
    pytest.param(7, 2, 1, (16, 16), False, id="7x7-stride2-16x16"),
    pytest.param(1, 2, 1, (1, 2), False, id="1x1-stride2-1x2"),
]


def _conv_pair(kernel: int, stride: int, dilation: int) -> tuple[nnx.Conv, nnx.Conv]:
    """nnx.Conv with lax's convolution and with ours, same parameters (the models' padding)."""
    pad = dilation * (kernel - 1) // 2

    def make(conv: Callable[..., jax.Array]) -> nnx.Conv:
        return nnx.Conv(
            IN_FEATURES,
            OUT_FEATURES,
            (kernel, kernel),
            strides=(stride, stride),
            padding=((pad, pad), (pad, pad)),
            kernel_dilation=(dilation, dilation),
            conv_general_dilated=conv,
            bias_init=nnx.initializers.normal(1.0),
            rngs=nnx.Rngs(0),
        )

    return make(jax.lax.conv_general_dilated), make(conv_general_dilated)


def _value_and_grads(
    layer: nnx.Conv, x: jax.Array, cotangent: jax.Array, *, absolute: bool = False
) -> list[jax.Array]:
    """Output and the gradients of ⟨output, cotangent⟩ (kernel, bias, input), as a list.

    With ``absolute``, of |parameters|, |x| and |cotangent|: each entry is then
    the sum of the absolute values of the terms the entry is a sum of.
    """
    graphdef, params = nnx.split(layer)
    if absolute:
        params, x, cotangent = jax.tree.map(jnp.abs, (params, x, cotangent))
    out, pullback = jax.vjp(lambda p, inputs: nnx.merge(graphdef, p)(inputs), params, x)
    param_grads, input_grad = pullback(cotangent)
    return [out, param_grads["kernel"].value, param_grads["bias"].value, input_grad]


@pytest.mark.parametrize(("kernel", "stride", "dilation", "spatial", "detour"), CASES)
def test_conv_matches_nnx_conv_and_its_gradients(
    kernel: int, stride: int, dilation: int, spatial: tuple[int, int], detour: bool
) -> None:
    reference, ours = _conv_pair(kernel, stride, dilation)
    rng = np.random.default_rng(kernel * 100 + stride * 10 + dilation)
    x = jnp.asarray(rng.normal(size=(BATCH, *spatial, IN_FEATURES)), jnp.float32)
    out_shape = jax.eval_shape(reference, x).shape
    cotangent = jnp.asarray(rng.normal(size=out_shape), jnp.float32)

    expected = _value_and_grads(reference, x, cotangent)
    got = _value_and_grads(ours, x, cotangent)
    # The same sums in another order: each result is a float32 sum of R products,
    # R at most the largest reduction (forward k²·C_in, input gradient k²·C_out,
    # kernel gradient N·H_out·W_out), so two orders differ by ≤ 2·R·eps32·Σ|terms|,
    # and Σ|terms| is what the same convolution gives on absolute values.
    terms = math.prod(out_shape[:3])
    reduction = max(kernel * kernel * max(IN_FEATURES, OUT_FEATURES), terms)
    magnitudes = _value_and_grads(reference, x, cotangent, absolute=True)
    for name, a, b, size in zip(
        ("output", "kernel grad", "bias grad", "input grad"), expected, got, magnitudes, strict=True
    ):
        assert a.shape == b.shape, name
        bound = 2 * reduction * EPS32 * size + 1e-30
        assert np.all(np.abs(np.asarray(a) - np.asarray(b)) <= bound), name

    jaxpr = str(jax.make_jaxpr(ours)(x))
    assert ("optimization_barrier" in jaxpr) == detour


def test_detector_flags_the_swapped_convolution() -> None:
    """A 3×3 convolution on a 2×4 map: XLA:CPU's swapped form for lax's, none for ours."""
    x = jnp.ones((BATCH, 2, 4, IN_FEATURES))
    kernel = jnp.ones((3, 3, IN_FEATURES, OUT_FEATURES))

    def loss(conv: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
        def value(x: jax.Array, kernel: jax.Array) -> jax.Array:
            out = conv(
                x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            return jnp.sum(out**2)

        return value

    def compiled(conv: Callable[..., jax.Array]) -> str:
        step = jax.jit(jax.grad(loss(conv), argnums=(0, 1)))
        return step.lower(x, kernel).compile().as_text()

    naive = naive_loop_convolutions(compiled(jax.lax.conv_general_dilated))
    # Forward and input gradient are swapped; if this starts failing, XLA no longer
    # swaps small-map convolutions and the detour may be unnecessary.
    assert len(naive) == 2 and all("rhs_reversal" in line for line in naive)
    assert naive_loop_convolutions(compiled(conv_general_dilated)) == []


def _first_batch(task: Any, config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    batches = task.train_batches(config, start_step=0, process_index=0, process_count=1)
    return next(iter(batches))


def _crop(batch: dict[str, np.ndarray], height: int, width: int) -> dict[str, np.ndarray]:
    """The top-left ``height × width`` of every image-like entry (B, H, W, ...)."""
    return {
        key: value[:, :height, :width] if value.ndim >= 3 else value for key, value in batch.items()
    }


@pytest.mark.parametrize("task_name", ["depth", "segmentation", "multitask"])
def test_compiled_train_steps_have_no_naive_loop_convolution(task_name: str) -> None:
    """Each task's test-config train step (forward, backward, Adam), compiled for CPU.

    The depth test config (64×128, stride 32) already ends on 2×4 maps under
    3×3 kernels; segmentation and multi-task (dilated backbone, stride 8) are
    cropped to 16×32 so that theirs are 2×4 too.
    """
    if task_name == "depth":
        config = depth_test_config.get_config()
        task: Any = DepthTask()
        batch = _first_batch(task, config)
    else:
        module, config_module = {
            "segmentation": (segmentation_train, segmentation_test_config),
            "multitask": (multitask_train, multitask_test_config),
        }[task_name]
        config = config_module.get_config()
        task = module.make_task(config)
        batch = _first_batch(task, config)
        config.image_height, config.image_width = 16, 32
        batch = _crop(batch, config.image_height, config.image_width)
    mesh = sharding.make_mesh()
    trainer = Trainer(task, config, mesh)
    batch = sharding.shard_batch(batch, mesh)
    state = trainer.init_state(batch)
    hlo = trainer.train_step.lower(state, batch).compile().as_text()
    assert " convolution(" in hlo
    assert naive_loop_convolutions(hlo) == []
