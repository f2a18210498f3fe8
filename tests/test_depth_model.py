"""Tests of experiments/depth/models.py: monodepth's ResNet encoder/decoder in NNX."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from precision import network_rtol

from experiments.depth import models
from experiments.depth.models import GRADNORM_LAYER, MonoDepth, count_parameters

HEIGHT, WIDTH = 64, 128
TINY = 0.125


def _numpy_initialised(encoder: str, batch_norm: bool, seed: int = 0) -> MonoDepth:
    """A tiny model whose parameters are drawn with NumPy.

    Eager ``MonoDepth(...)`` compiles one RNG program per parameter shape
    (tens of seconds on a loaded 2-core CPU); the tests only need some
    well-scaled parameters, so they fill the abstract model instead.
    """
    abstract = nnx.eval_shape(
        lambda: MonoDepth(encoder, width=TINY, batch_norm=batch_norm, rngs=nnx.Rngs(0))
    )
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)

    def fill(path: tuple, leaf: jax.ShapeDtypeStruct) -> jax.Array:
        names = [key.key for key in path if isinstance(key, jax.tree_util.DictKey)]
        name = names[-1]
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(0.0, 1.0 / np.sqrt(fan_in), leaf.shape), leaf.dtype)
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        if name == "bias":
            return jnp.asarray(rng.uniform(-0.1, 0.1, leaf.shape), leaf.dtype)
        return jnp.zeros(leaf.shape, leaf.dtype)  # batch-norm running means

    state = jax.tree_util.tree_map_with_path(fill, state)
    return nnx.merge(graphdef, state)


@functools.cache
def _tiny_model(encoder: str, batch_norm: bool) -> MonoDepth:
    return _numpy_initialised(encoder, batch_norm)


@nnx.jit
def _forward(model: MonoDepth, left: jax.Array):
    return model(left)


@nnx.jit
def _forward_split(model: MonoDepth, left: jax.Array):
    iconv4, skips = model.encode(left)
    return iconv4, model.decode_from_iconv4(iconv4, skips)


def _images(batch: int = 2, seed: int = 0) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (batch, HEIGHT, WIDTH, 3))


@pytest.mark.parametrize(("encoder", "batch_norm"), [("resnet50", False), ("resnet18", True)])
def test_output_shapes_and_range(encoder: str, batch_norm: bool) -> None:
    model = _tiny_model(encoder, batch_norm)
    disparities = _forward(model, _images())
    assert len(disparities) == 4
    for scale, disp in enumerate(disparities):
        chex.assert_shape(disp, (2, HEIGHT // 2**scale, WIDTH // 2**scale, 2))
        assert disp.dtype == jnp.float32
        chex.assert_tree_all_finite(disp)
        # 0.3·sigmoid: strictly inside (0, 0.3), not saturated at initialisation.
        assert float(disp.min()) > 0.0 and float(disp.max()) < models.MAX_DISPARITY
        assert float(disp.std()) > 0.0


def test_split_reproduces_forward_and_carries_gradient() -> None:
    model = _tiny_model("resnet18", False)
    left = _images(seed=1)
    full = _forward(model, left)
    iconv4, split = _forward_split(model, left)
    chex.assert_shape(iconv4, (2, HEIGHT // 8, WIDTH // 8, models.scaled_channels(128, TINY)))
    # Two jitted programs that XLA fuses differently: float32 reordering, derived from the net.
    rtol = network_rtol(nnx.state(model, nnx.Param))
    for a, b in zip(full, split, strict=True):
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(b), rtol=0, atol=rtol * float(np.abs(a).max())
        )

    # MGDA-UB's representation gradient: every scale depends on iconv4.
    for grad in _iconv4_gradients(model, left):
        chex.assert_shape(grad, iconv4.shape)
        assert float(jnp.abs(grad).sum()) > 0.0


@nnx.jit
def _iconv4_gradients(model: MonoDepth, left: jax.Array) -> list[jax.Array]:
    iconv4, skips = model.encode(left)
    return [
        jax.grad(lambda z, s=scale: model.decode_from_iconv4(z, skips)[s].sum())(iconv4)
        for scale in range(4)
    ]


def test_gradnorm_layer_path() -> None:
    model = _tiny_model("resnet50", False)
    params = nnx.state(model, nnx.Param)
    leaf = functools.reduce(lambda node, key: node[key], GRADNORM_LAYER, params)
    assert leaf.shape == model.iconv4.conv.kernel.shape
    up4 = models.scaled_channels(128, TINY)
    skip = 4 * models.scaled_channels(64, TINY)  # conv2 of the bottleneck encoder
    assert leaf.shape == (3, 3, up4 + skip, up4)


def test_batch_norm_train_and_eval_modes() -> None:
    model = _numpy_initialised("resnet18", batch_norm=True, seed=1)
    left = _images(seed=2)
    mean_before = np.asarray(model.conv1.norm.mean[...])
    train_out = _forward(model, left)
    mean_after = np.asarray(model.conv1.norm.mean[...])
    assert not np.allclose(mean_before, mean_after)  # running statistics were updated
    model.eval()
    eval_out = _forward(model, left)
    np.testing.assert_array_equal(np.asarray(model.conv1.norm.mean[...]), mean_after)
    assert not np.allclose(np.asarray(train_out[0]), np.asarray(eval_out[0]))
    model.train()


def test_bfloat16_images() -> None:
    model = _tiny_model("resnet18", False)
    disparities = _forward(model, _images().astype(jnp.bfloat16))
    reference = _forward(model, _images())
    for disp, ref in zip(disparities, reference, strict=True):
        chex.assert_tree_all_finite(disp)
        np.testing.assert_allclose(
            np.asarray(disp, np.float32), np.asarray(ref), rtol=0.05, atol=2e-3
        )


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 64, 100, 3), "divisible by 64"),
        ((1, 96, 128, 3), "divisible by 64"),
        ((1, 64, 128, 1), r"\(B, H, W, 3\)"),
        ((64, 128, 3), r"\(B, H, W, 3\)"),
    ],
)
def test_bad_images_are_rejected(shape: tuple[int, ...], message: str) -> None:
    model = _tiny_model("resnet18", False)
    with pytest.raises(ValueError, match=message):
        model(jnp.zeros(shape))


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="unknown encoder"):
        MonoDepth("vgg", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="width"):
        MonoDepth("resnet18", width=0.0, rngs=nnx.Rngs(0))
    for bad in (0.0, models.MAX_DISPARITY, -0.1):
        with pytest.raises(ValueError, match="initial_disparity"):
            MonoDepth("resnet18", initial_disparity=bad, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("initial", [None, 0.03, 0.2])
def test_initial_disparity_sets_the_heads_starting_point(initial: float | None) -> None:
    head = models.DisparityHead(8, glorot=False, rngs=nnx.Rngs(0), initial_disparity=initial)
    # Featureless input: the head outputs 0.3·sigmoid(bias) exactly.
    disparity = head(jnp.zeros((1, 4, 4, 8)))
    if initial is None:  # the reference: PyTorch's uniform bias init, so near 0.15
        assert float(jnp.abs(disparity - 0.15).max()) < 0.3 * 0.25
        assert float(disparity.std()) > 0.0  # the two channels' biases differ
    else:
        np.testing.assert_allclose(np.asarray(disparity), initial, rtol=1e-5)
    features = jax.random.normal(jax.random.key(1), (1, 4, 4, 8))
    assert float(head(features).std()) > 0.0  # the kernel keeps its random init


def test_width_keeps_at_least_four_channels() -> None:
    assert models.scaled_channels(16, 0.01) == models.MIN_CHANNELS
    assert models.scaled_channels(512, 0.5) == 256


@pytest.mark.parametrize("glorot", [False, True])
def test_initialisation_matches_the_reference(glorot: bool) -> None:
    c_in, c_out = 32, 64
    conv = models._conv(c_in, c_out, 3, glorot=glorot, rngs=nnx.Rngs(0))
    kernel, bias = np.asarray(conv.kernel[...]), np.asarray(conv.bias[...])
    fan_in, fan_out = 9 * c_in, 9 * c_out
    # PyTorch's default: U(±1/√fan_in); Glorot: U(±√(6/(fan_in + fan_out))).
    bound = np.sqrt(6.0 / (fan_in + fan_out)) if glorot else 1.0 / np.sqrt(fan_in)
    assert np.abs(kernel).max() <= bound
    np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3.0), rtol=0.05)
    assert np.abs(bias).max() <= 1.0 / np.sqrt(fan_in) and bias.std() > 0


def _conv_params(k: int, c_in: int, c_out: int) -> int:
    return k * k * c_in * c_out + c_out


def _expected_resnet50md_parameters() -> int:
    """Count written from the SPEC §6 layer table, independently of the model code."""
    total = _conv_params(7, 3, 64)
    c_in = 64
    for blocks, c in zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True):
        for _ in range(blocks):
            # 1×1, 3×3, 1×1 to 4c, 1×1 projection (always, as the reference)
            total += _conv_params(1, c_in, c) + _conv_params(3, c, c)
            total += _conv_params(1, c, 4 * c) + _conv_params(1, c_in, 4 * c)
            c_in = 4 * c
    decoder = [  # (upconv in, out, iconv skip channels)
        (2048, 512, 1024), (512, 256, 512), (256, 128, 256),
        (128, 64, 64 + 2), (64, 32, 64 + 2), (32, 16, 2),
    ]  # fmt: skip
    for up_in, out, skip in decoder:
        total += _conv_params(3, up_in, out) + _conv_params(3, out + skip, out)
    total += sum(_conv_params(3, c, 2) for c in (128, 64, 32, 16))  # disparity heads
    return total


def test_full_width_parameter_counts() -> None:
    resnet50 = nnx.eval_shape(lambda: MonoDepth("resnet50", rngs=nnx.Rngs(0)))
    resnet18 = nnx.eval_shape(lambda: MonoDepth("resnet18", rngs=nnx.Rngs(0)))
    count50 = count_parameters(resnet50)
    assert count50 == _expected_resnet50md_parameters()
    assert 58.0e6 < count50 < 59.0e6  # the reference ResNet50MD has ≈ 58.5M
    count18 = count_parameters(resnet18)
    assert 10e6 < count18 < count50
    with_bn = nnx.eval_shape(lambda: MonoDepth("resnet50", batch_norm=True, rngs=nnx.Rngs(0)))
    assert count_parameters(with_bn) > count50  # BN scales and offsets
