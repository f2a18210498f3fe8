"""EncNet in NNX: shapes, output stride 8, dilation, the encoding layer vs. NumPy."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.common import backbones
from experiments.segmentation import models

HEIGHT, WIDTH = 32, 64


def fast_rngs(seed: int = 0) -> nnx.Rngs:
    # rbg keys: XLA compiles their random initialisers ~2× faster than threefry's on CPU.
    return nnx.Rngs(
        params=jax.random.key(seed, impl="rbg"), dropout=jax.random.key(seed + 1, impl="rbg")
    )


@functools.cache
def tiny_model(backbone: str) -> models.EncNet:
    # Two blocks in the dilated stages: the first keeps the previous dilation.
    return models.EncNet(
        5,
        backbone=backbone,
        width=1 / 16,
        num_codes=4,
        head_features=128,
        stage_sizes=(1, 1, 2, 2),
        rngs=fast_rngs(),
    )


@functools.cache
def jitted_forward(backbone: str):
    model = tiny_model(backbone)
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, images):
        module = nnx.merge(graphdef, state)
        stage3, stage4 = module.backbone(images)
        return module(images), stage3, stage4

    return lambda images: forward(state, images)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_output_shapes_and_stride(backbone: str) -> None:
    images = jax.random.uniform(jax.random.key(1), (2, HEIGHT, WIDTH, 3))
    outputs, stage3, stage4 = jitted_forward(backbone)(images)
    assert isinstance(outputs, models.EncNetOutputs)
    chex.assert_shape(outputs.logits, (2, HEIGHT, WIDTH, 5))
    chex.assert_shape(outputs.aux_logits, (2, HEIGHT, WIDTH, 5))
    chex.assert_shape(outputs.se_logits, (2, 5))
    chex.assert_tree_all_finite(outputs)
    expansion = 4 if backbone == "resnet50" else 1
    # Output stride 8: stages 3 and 4 stay at 1/8 of the input.
    chex.assert_shape(stage3, (2, HEIGHT // 8, WIDTH // 8, 16 * expansion))
    chex.assert_shape(stage4, (2, HEIGHT // 8, WIDTH // 8, 32 * expansion))


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_stages_three_and_four_are_dilated_not_strided(backbone: str) -> None:
    net = tiny_model(backbone).backbone
    three_by_three = "conv2" if backbone == "resnet50" else "conv1"
    for stage, dilation, first_dilation in ((3, 2, 1), (4, 4, 2)):
        blocks = list(getattr(net, f"layer{stage}"))
        for index, block in enumerate(blocks):
            conv = getattr(block, three_by_three)
            assert conv.strides == (1, 1)
            expected = first_dilation if index == 0 else dilation
            assert conv.kernel_dilation == (expected, expected)
            assert conv.padding == ((expected, expected), (expected, expected))
    assert net.layer2[0].downsample.conv.strides == (2, 2)


def test_paper_backbone_has_torchvision_resnet50_size() -> None:
    # Build abstractly: the full ResNet-50 is too big to initialise in a unit test.
    backbone = nnx.eval_shape(lambda: backbones.DilatedResNet("resnet50", rngs=nnx.Rngs(0)))
    params = nnx.state(backbone, nnx.Param)
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    assert count == 23_508_032  # torchvision resnet50 without its fc layer
    assert [len(getattr(backbone, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]


def numpy_encoding(x: np.ndarray, codewords: np.ndarray, smoothing: np.ndarray) -> np.ndarray:
    """Zhang et al. (2018) Eq. 1–2 with explicit residuals, in float64."""
    x, codewords, smoothing = (np.asarray(a, np.float64) for a in (x, codewords, smoothing))
    residual = x[:, :, None, :] - codewords[None, None, :, :]  # (B, N, K, D)
    logits = -smoothing * np.sum(residual**2, axis=-1)  # (B, N, K)
    logits -= logits.max(axis=-1, keepdims=True)
    assignment = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    return np.einsum("bnk,bnkd->bkd", assignment, residual)


def test_encoding_matches_numpy_equations() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 12, 6)).astype(np.float32)
    codewords = rng.normal(size=(4, 6)).astype(np.float32)
    smoothing = rng.uniform(0.05, 0.5, size=(4,)).astype(np.float32)
    got = models.encode(jnp.asarray(x), jnp.asarray(codewords), jnp.asarray(smoothing))
    np.testing.assert_allclose(got, numpy_encoding(x, codewords, smoothing), rtol=2e-4, atol=2e-4)


def test_encoding_layer_module_flattens_pixels() -> None:
    layer = models.Encoding(3, 5, rngs=fast_rngs(2))
    x = jax.random.normal(jax.random.key(3), (2, 3, 4, 3))
    expected = numpy_encoding(
        np.asarray(x).reshape(2, 12, 3), np.asarray(layer.codewords[...]), layer.smoothing[...]
    )
    np.testing.assert_allclose(nnx.jit(lambda m, v: m(v))(layer, x), expected, rtol=2e-4, atol=2e-4)
    bound = 1 / np.sqrt(5 * 3)
    assert np.all(np.abs(layer.codewords[...]) <= bound)


def test_context_encoding_rescales_channels_and_predicts_presence() -> None:
    module = models.ContextEncoding(8, num_classes=3, num_codes=4, rngs=fast_rngs())
    x = jax.nn.relu(jax.random.normal(jax.random.key(0), (2, 4, 4, 8)))
    rescaled, se_logits = nnx.jit(lambda m, v: m(v))(module, x)
    chex.assert_shape(rescaled, (2, 4, 4, 8))
    chex.assert_shape(se_logits, (2, 3))
    # ReLU(x + x·γ) with γ ∈ (0, 1) per (image, channel): a positive ratio in [1, 2].
    ratio = np.asarray(rescaled)[np.asarray(x) > 0] / np.asarray(x)[np.asarray(x) > 0]
    assert np.all(ratio >= 1.0 - 1e-6) and np.all(ratio <= 2.0 + 1e-6)


def test_train_mode_updates_batch_statistics_eval_mode_does_not() -> None:
    model = nnx.clone(tiny_model("resnet18"))
    forward = nnx.jit(lambda module, images: module(images).logits)
    images = jax.random.uniform(jax.random.key(0), (2, HEIGHT, WIDTH, 3))
    before = np.asarray(model.backbone.bn1.mean[...]).copy()
    model.eval()
    forward(model, images)
    np.testing.assert_array_equal(model.backbone.bn1.mean[...], before)
    model.train()
    forward(model, images)
    assert not np.allclose(model.backbone.bn1.mean[...], before)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "resnet34"}, "unknown backbone"),
        ({"width": 0.0}, "width"),
        ({"stage_sizes": (1, 1, 1)}, "stage_sizes"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_configuration_is_a_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        models.EncNet(3, rngs=nnx.Rngs(0), **{"width": 1 / 16, **kwargs})


def test_bad_images_are_a_clear_error() -> None:
    model = tiny_model("resnet18")
    with pytest.raises(ValueError, match="divisible by the output stride 8"):
        model(jnp.zeros((1, 30, 64, 3)))
    with pytest.raises(ValueError, match="NHWC RGB"):
        model(jnp.zeros((1, 3, 32, 64)))
