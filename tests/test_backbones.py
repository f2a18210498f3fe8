"""Loading torchvision ResNet weights (a fake .npz with torchvision's exact names and shapes)."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest
from fake_torchvision import fake_checkpoint, torchvision_resnet_shapes
from flax import nnx

from experiments.common import backbones


@pytest.fixture(scope="module")
def resnet50_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pretrained") / "resnet50.npz"
    np.savez(path, **fake_checkpoint(50))
    return path


@functools.cache
def abstract_backbone(name: str, width: float = 1.0) -> backbones.DilatedResNet:
    # Shapes only: building the full-width network abstractly is fast, and a load
    # fills every one of its variables.
    return nnx.eval_shape(lambda: backbones.DilatedResNet(name, width=width, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def loaded_resnet50(resnet50_npz: Path) -> tuple[backbones.DilatedResNet, list[str]]:
    backbone = nnx.eval_shape(lambda: backbones.DilatedResNet("resnet50", rngs=nnx.Rngs(0)))
    return backbone, backbones.load_torchvision_backbone(backbone, resnet50_npz)


@pytest.mark.parametrize("depth", [18, 50])
def test_every_backbone_variable_has_its_torchvision_name(depth: int) -> None:
    backbone = abstract_backbone(f"resnet{depth}")
    entries = backbones.torchvision_variables(backbone)
    expected = {
        name: shape
        for name, shape in torchvision_resnet_shapes(depth).items()
        if not backbones._is_unused(name)
    }
    assert set(entries) == set(expected)
    for name, (variable, is_kernel) in entries.items():
        shape = expected[name]
        if is_kernel:
            shape = (shape[2], shape[3], shape[1], shape[0])  # OIHW → HWIO
        assert variable.shape == shape, name
    # The mapping covers every parameter and batch statistic of the backbone.
    assert len(jax.tree.leaves(nnx.state(backbone))) == len(entries)


def test_load_resnet50_npz_transposes_and_maps_batch_norm(loaded_resnet50) -> None:
    backbone, loaded = loaded_resnet50
    assert len(loaded) == 265 and "layer4.2.conv3.weight" in loaded and "fc.weight" not in loaded
    source = fake_checkpoint(50)
    np.testing.assert_array_equal(
        backbone.conv1.kernel[...], source["conv1.weight"].transpose(2, 3, 1, 0)
    )
    block = backbone.layer3[0]
    np.testing.assert_array_equal(
        block.conv2.kernel[...], source["layer3.0.conv2.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        block.downsample.conv.kernel[...],
        source["layer3.0.downsample.0.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        block.downsample.bn.var[...], source["layer3.0.downsample.1.running_var"]
    )
    np.testing.assert_array_equal(backbone.layer1[0].bn3.bias[...], source["layer1.0.bn3.bias"])
    np.testing.assert_array_equal(backbone.bn1.scale[...], source["bn1.weight"])
    np.testing.assert_array_equal(backbone.bn1.mean[...], source["bn1.running_mean"])
    # Every leaf is now a concrete array: nothing was left uninitialised.
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(nnx.state(backbone)))


def test_check_command(resnet50_npz: Path, capsys) -> None:
    assert backbones.main(["check", "--npz", str(resnet50_npz), "--backbone", "resnet50"]) == 0
    assert "loaded 265 arrays" in capsys.readouterr().out


def test_mismatches_are_clear_errors_and_leave_the_model_untouched(
    resnet50_npz: Path, loaded_resnet50
) -> None:
    narrow = abstract_backbone("resnet50", width=0.5)
    before = narrow.conv1.kernel.value
    with pytest.raises(ValueError, match=r"conv1.weight: .*width=1"):
        backbones.load_torchvision_backbone(narrow, resnet50_npz)
    assert narrow.conv1.kernel.value is before
    with pytest.raises(ValueError, match="weights the backbone does not have"):
        backbones.load_torchvision_backbone(abstract_backbone("resnet18"), resnet50_npz)
    backbone, _ = loaded_resnet50
    kernel = backbone.conv1.kernel.value
    partial = {k: v for k, v in fake_checkpoint(50).items() if not k.startswith("layer4.2.")}
    with pytest.raises(ValueError, match=r"lacks .* backbone weights"):
        backbones.load_torchvision_backbone(backbone, partial)
    assert backbone.conv1.kernel.value is kernel
    with pytest.raises(FileNotFoundError, match="backbones convert"):
        backbones.load_torchvision_backbone(backbone, "missing.npz")


def test_resnet18_checkpoint_with_extra_keys_needs_non_strict_load() -> None:
    arrays = dict(fake_checkpoint(18), **{"extra.weight": np.zeros(3, np.float32)})
    backbone = nnx.eval_shape(lambda: backbones.DilatedResNet("resnet18", rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"extra\.weight"):
        backbones.load_torchvision_backbone(backbone, arrays)
    loaded = backbones.load_torchvision_backbone(backbone, arrays, strict=False)
    # stem 1 + 4, eight blocks of 2 convs + 2 × 4 BN arrays, three projections of 1 + 4.
    assert len(loaded) == 5 + 8 * 10 + 3 * 5
    np.testing.assert_array_equal(
        backbone.layer2[1].conv2.kernel[...],
        arrays["layer2.1.conv2.weight"].transpose(2, 3, 1, 0),
    )


def test_state_dict_to_numpy_unwraps_checkpoints() -> None:
    weights = {"module.conv1.weight": np.ones((2, 3, 1, 1), np.float32), "epoch": 3}
    arrays = backbones.state_dict_to_numpy({"state_dict": weights})
    assert list(arrays) == ["conv1.weight"]
    with pytest.raises(ValueError, match="no tensors"):
        backbones.state_dict_to_numpy({"epoch": 3})


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed")
def test_convert_without_torch_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ImportError, match="needs PyTorch"):
        backbones.convert(str(tmp_path / "resnet50.pth"), str(tmp_path / "out.npz"))
