"""The dilated ResNet backbone shared by the dense tasks, and ImageNet weights for it.

* :class:`DilatedResNet`: a ResNet with output stride 8 (Yu & Koltun,
  https://arxiv.org/abs/1511.07122): stages 3 and 4 keep the resolution of
  stage 2 and use dilation 2 and 4 instead of stride 2 (the first block of a
  dilated stage uses the previous dilation, as torchvision's
  ``replace_stride_with_dilation`` and PyTorch-Encoding do). Its parameter
  names mirror torchvision's ResNet (``conv1``, ``bn1``, ``layer1[0].conv1``,
  ``layer1[0].downsample.conv`` …) and its convolutions use PyTorch's explicit
  symmetric padding (``"SAME"`` pads stride-2 convolutions asymmetrically), so
  ImageNet weights converted from a torchvision checkpoint load by name. A
  width multiplier and a ResNet-18 (basic block) variant make CPU-sized runs
  possible. Used by EncNet (segmentation) and the multi-task network.
* ImageNet-pretrained weights from a torchvision ResNet checkpoint. Nothing
  is downloaded here: convert a torchvision checkpoint you already have into a
  plain ``.npz`` once (:func:`convert` is the only place that imports
  ``torch``, which the project does not depend on), then point
  ``config.model.pretrained`` at it::

      # on a machine with torch installed, e.g. with the file from
      # https://download.pytorch.org/models/resnet50-0676ba61.pth
      python -m experiments.common.backbones convert \\
          --torch-checkpoint resnet50.pth --out resnet50.npz
      # check that it fits a backbone (no torch needed)
      python -m experiments.common.backbones check --npz resnet50.npz --backbone resnet50

  The ``.npz`` keeps torchvision's names (``conv1.weight``,
  ``bn1.running_mean``, ``layer1.0.conv1.weight``,
  ``layer1.0.downsample.0.weight`` …) and layouts;
  :func:`load_torchvision_backbone` maps them onto :class:`DilatedResNet`:
  conv weights OIHW → HWIO, BatchNorm ``weight/bias/running_mean/running_var``
  → ``scale/bias/mean/var``. The classifier (``fc.*``) and
  ``num_batches_tracked`` are not used. ResNet-18 checkpoints load into the
  ``resnet18`` backbone the same way. Only ``width=1`` backbones with the
  default stage sizes have torchvision's shapes. The pretrained network
  expects ImageNet-normalized inputs (:data:`IMAGENET_MEAN`,
  :data:`IMAGENET_STD`); the networks normalize their [0, 1] inputs themselves.

Images are NHWC float32.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import Array

from experiments.common.conv import conv_general_dilated

Backbone = Literal["resnet18", "resnet50"]

#: Blocks per stage and block type of each backbone (He et al., CVPR 2016).
BACKBONES: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
EXPANSION = {"basic": 1, "bottleneck": 4}
STAGE_CHANNELS = (64, 128, 256, 512)
#: PyTorch BatchNorm defaults (momentum 0.1 on the new value, ε = 1e-5).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
#: torchvision's ImageNet statistics: pretrained backbones expect (x − mean) / std.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def scaled_channels(channels: int, width: float) -> int:
    """``channels · width`` rounded, at least 1."""
    return max(1, round(channels * width))


def conv(
    in_features: int,
    out_features: int,
    kernel: int,
    *,
    rngs: nnx.Rngs,
    stride: int = 1,
    dilation: int = 1,
    use_bias: bool = False,
) -> nnx.Conv:
    """A k×k convolution with PyTorch's symmetric padding and He (fan-out) initialisation."""
    # PyTorch-style symmetric padding: dilation·(k−1)/2 on every side.
    pad = dilation * (kernel - 1) // 2
    return nnx.Conv(
        in_features,
        out_features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=(dilation, dilation),
        conv_general_dilated=conv_general_dilated,
        use_bias=use_bias,
        kernel_init=nnx.initializers.variance_scaling(2.0, "fan_out", "normal"),
        rngs=rngs,
    )


def batch_norm(features: int, *, rngs: nnx.Rngs, axis: int = -1) -> nnx.BatchNorm:
    """Batch norm with PyTorch's defaults (:data:`BN_MOMENTUM`, :data:`BN_EPSILON`)."""
    return nnx.BatchNorm(features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, axis=axis, rngs=rngs)


class Downsample(nnx.Module):
    """1×1 projection shortcut (torchvision's ``downsample.0`` conv and ``.1`` BN)."""

    def __init__(self, in_features: int, out_features: int, stride: int, *, rngs: nnx.Rngs):
        self.conv = conv(in_features, out_features, 1, stride=stride, rngs=rngs)
        self.bn = batch_norm(out_features, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.bn(self.conv(x))


class BasicBlock(nnx.Module):
    """Two 3×3 convs with a residual connection (ResNet-18/34)."""

    def __init__(
        self,
        in_features: int,
        planes: int,
        *,
        stride: int,
        dilation: int,
        first_dilation: int,
        rngs: nnx.Rngs,
    ):
        out_features = planes * EXPANSION["basic"]
        self.conv1 = conv(in_features, planes, 3, stride=stride, dilation=first_dilation, rngs=rngs)
        self.bn1 = batch_norm(planes, rngs=rngs)
        self.conv2 = conv(planes, out_features, 3, dilation=dilation, rngs=rngs)
        self.bn2 = batch_norm(out_features, rngs=rngs)
        self.downsample = (
            Downsample(in_features, out_features, stride, rngs=rngs)
            if stride != 1 or in_features != out_features
            else None
        )

    def __call__(self, x: Array) -> Array:
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return jax.nn.relu(y + shortcut)


class Bottleneck(nnx.Module):
    """1×1 → 3×3 (stride, dilation) → 1×1 ×4 with a residual (ResNet-50 v1.5, torchvision)."""

    def __init__(
        self,
        in_features: int,
        planes: int,
        *,
        stride: int,
        dilation: int,
        first_dilation: int,
        rngs: nnx.Rngs,
    ):
        del dilation  # a bottleneck has a single 3×3 conv, dilated by first_dilation
        out_features = planes * EXPANSION["bottleneck"]
        self.conv1 = conv(in_features, planes, 1, rngs=rngs)
        self.bn1 = batch_norm(planes, rngs=rngs)
        self.conv2 = conv(planes, planes, 3, stride=stride, dilation=first_dilation, rngs=rngs)
        self.bn2 = batch_norm(planes, rngs=rngs)
        self.conv3 = conv(planes, out_features, 1, rngs=rngs)
        self.bn3 = batch_norm(out_features, rngs=rngs)
        self.downsample = (
            Downsample(in_features, out_features, stride, rngs=rngs)
            if stride != 1 or in_features != out_features
            else None
        )

    def __call__(self, x: Array) -> Array:
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = jax.nn.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return jax.nn.relu(y + shortcut)


class DilatedResNet(nnx.Module):
    """ResNet with output stride 8: stages 3 and 4 dilated by 2 and 4 instead of strided.

    ``__call__`` returns the stage-3 and stage-4 feature maps, both at 1/8 of
    the input resolution.
    """

    def __init__(
        self,
        backbone: Backbone = "resnet50",
        *,
        width: float = 1.0,
        stage_sizes: Sequence[int] | None = None,
        rngs: nnx.Rngs,
    ):
        if backbone not in BACKBONES:
            raise ValueError(
                f"DilatedResNet: unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}."
            )
        if not width > 0:
            raise ValueError(f"DilatedResNet: width multiplier must be positive, got {width}.")
        block_type, default_sizes = BACKBONES[backbone]
        stage_sizes = tuple(default_sizes if stage_sizes is None else stage_sizes)
        if len(stage_sizes) != 4 or any(int(n) < 1 for n in stage_sizes):
            raise ValueError(
                f"DilatedResNet: stage_sizes must be 4 positive block counts, got {stage_sizes}."
            )
        self.block_type = block_type
        self.stage_sizes = stage_sizes
        block_cls = Bottleneck if block_type == "bottleneck" else BasicBlock
        expansion = EXPANSION[block_type]
        stem = scaled_channels(64, width)
        self.conv1 = conv(3, stem, 7, stride=2, rngs=rngs)
        self.bn1 = batch_norm(stem, rngs=rngs)
        # (stride, dilation) per stage: output stride 8 (Yu & Koltun's dilated ResNet).
        schedule = ((1, 1), (2, 1), (1, 2), (1, 4))
        in_features = stem
        previous_dilation = 1
        stages = []
        for planes, blocks, (stride, dilation) in zip(
            STAGE_CHANNELS, stage_sizes, schedule, strict=True
        ):
            planes = scaled_channels(planes, width)
            layer = []
            for index in range(int(blocks)):
                layer.append(
                    block_cls(
                        in_features,
                        planes,
                        stride=stride if index == 0 else 1,
                        dilation=dilation,
                        # The first block of a dilated stage keeps the previous
                        # dilation (torchvision, PyTorch-Encoding).
                        first_dilation=previous_dilation if index == 0 else dilation,
                        rngs=rngs,
                    )
                )
                in_features = planes * expansion
            stages.append(nnx.List(layer))
            previous_dilation = dilation
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.stage3_features = scaled_channels(STAGE_CHANNELS[2], width) * expansion
        self.stage4_features = in_features

    def stages(self, images: Array) -> tuple[Array, Array, Array]:
        """The stage-1 (1/4 of the input), stage-3 and stage-4 (both 1/8) feature maps."""
        x = jax.nn.relu(self.bn1(self.conv1(images)))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for block in self.layer1:
            x = block(x)
        stage1 = x
        for block in self.layer2:
            x = block(x)
        for block in self.layer3:
            x = block(x)
        stage3 = x
        for block in self.layer4:
            x = block(x)
        return stage1, stage3, x

    def __call__(self, images: Array) -> tuple[Array, Array]:
        _, stage3, stage4 = self.stages(images)
        return stage3, stage4


def configured_stage_sizes(model_config: Any) -> tuple[int, ...] | None:
    """``model_config.stage_sizes`` as a tuple, or None for the backbone's default."""
    stage_sizes = model_config.get("stage_sizes", None)
    return tuple(stage_sizes) if stage_sizes else None


def load_configured_weights(backbone: DilatedResNet, model_config: Any) -> None:
    """Load ``model_config.pretrained`` (a converted ``.npz``) into ``backbone`` if it is set."""
    if model_config.get("pretrained", None):
        load_torchvision_backbone(backbone, model_config.pretrained)


#: Keys of a torchvision ResNet state dict that the backbone does not use.
UNUSED_SUFFIXES = ("num_batches_tracked",)
UNUSED_PREFIXES = ("fc.",)
_BN_FIELDS = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def _conv_entries(name: str, conv: nnx.Conv) -> dict[str, tuple[nnx.Variable, bool]]:
    if conv.bias is not None:
        raise ValueError(f"{name}: torchvision ResNet convolutions have no bias.")
    return {f"{name}.weight": (conv.kernel, True)}


def _bn_entries(name: str, bn: nnx.BatchNorm) -> dict[str, tuple[nnx.Variable, bool]]:
    return {
        f"{name}.{torch_field}": (getattr(bn, field), False)
        for torch_field, field in _BN_FIELDS.items()
    }


def torchvision_variables(backbone: DilatedResNet) -> dict[str, tuple[nnx.Variable, bool]]:
    """Map torchvision state-dict names to the backbone's variables.

    Returns:
      ``{torch_name: (variable, is_conv_kernel)}``; conv kernels need OIHW → HWIO.
    """
    entries = {**_conv_entries("conv1", backbone.conv1), **_bn_entries("bn1", backbone.bn1)}
    layer_count = 3 if backbone.block_type == "bottleneck" else 2
    for stage in range(1, 5):
        for index, block in enumerate(getattr(backbone, f"layer{stage}")):
            prefix = f"layer{stage}.{index}"
            for i in range(1, layer_count + 1):
                entries.update(_conv_entries(f"{prefix}.conv{i}", getattr(block, f"conv{i}")))
                entries.update(_bn_entries(f"{prefix}.bn{i}", getattr(block, f"bn{i}")))
            if block.downsample is not None:
                entries.update(_conv_entries(f"{prefix}.downsample.0", block.downsample.conv))
                entries.update(_bn_entries(f"{prefix}.downsample.1", block.downsample.bn))
    return entries


def _is_unused(key: str) -> bool:
    return key.startswith(UNUSED_PREFIXES) or key.endswith(UNUSED_SUFFIXES)


def load_torchvision_backbone(
    backbone: DilatedResNet,
    weights: str | os.PathLike[str] | Mapping[str, np.ndarray],
    *,
    strict: bool = True,
) -> list[str]:
    """Copy torchvision ResNet weights into ``backbone``, in place.

    Args:
      backbone: the network's backbone (e.g. ``EncNet(...).backbone``).
      weights: path of a converted ``.npz`` or a ``{torch_name: array}`` mapping.
      strict: raise if the file has backbone keys the model lacks (e.g. a
        ResNet-50 file for a ResNet-18 backbone). Missing keys and shape
        mismatches are always errors.

    Returns:
      The torchvision names that were loaded.

    Raises:
      FileNotFoundError: the ``.npz`` does not exist.
      ValueError: missing/unexpected keys or shapes that do not match
        (typically a width multiplier other than 1 or the wrong backbone).
    """
    if not isinstance(backbone, DilatedResNet):
        raise TypeError(f"expected a DilatedResNet, got {type(backbone).__name__}.")
    if isinstance(weights, str | os.PathLike):
        path = os.fspath(weights)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"pretrained backbone weights {path!r} do not exist; convert a torchvision "
                "checkpoint with `python -m experiments.common.backbones convert "
                "--torch-checkpoint resnet50.pth --out resnet50.npz` (nothing is downloaded)."
            )
        with np.load(path) as archive:
            arrays = {key: archive[key] for key in archive.files}
        source = path
    else:
        arrays = dict(weights)
        source = "the given mapping"
    entries = torchvision_variables(backbone)
    missing = sorted(set(entries) - set(arrays))
    if missing:
        raise ValueError(
            f"{source} lacks {len(missing)} backbone weights, e.g. {missing[:3]}; is it a "
            f"torchvision ResNet of the right depth ({backbone.block_type} blocks, stages "
            f"{backbone.stage_sizes})?"
        )
    unexpected = sorted(k for k in set(arrays) - set(entries) if not _is_unused(k))
    if strict and unexpected:
        raise ValueError(
            f"{source} has {len(unexpected)} weights the backbone does not have, e.g. "
            f"{unexpected[:3]} (a deeper ResNet?). Pass strict=False to ignore them."
        )
    new_values: dict[str, Any] = {}
    for name, (variable, is_kernel) in entries.items():
        value = np.asarray(arrays[name], np.float32)
        if is_kernel:
            if value.ndim != 4:
                raise ValueError(f"{name}: expected an OIHW conv weight, got shape {value.shape}.")
            value = value.transpose(2, 3, 1, 0)  # OIHW → HWIO
        if value.shape != variable.shape:
            raise ValueError(
                f"{name}: the checkpoint's shape {value.shape} (after OIHW → HWIO) does not "
                f"match the model's {variable.shape}; pretrained weights need width=1 and "
                "the torchvision stage sizes."
            )
        new_values[name] = value
    # Assign only after every check passed, so a bad file leaves the model untouched.
    for name, (variable, _) in entries.items():
        variable.value = jnp.asarray(new_values[name], variable.dtype)
    return sorted(entries)


def state_dict_to_numpy(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A torch state dict (or checkpoint dict wrapping one) as ``{name: numpy array}``.

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` checkpoints and the
    ``module.`` prefix of DataParallel models; drops non-tensor entries.
    """
    for wrapper in ("state_dict", "model"):
        inner = state_dict.get(wrapper) if isinstance(state_dict, Mapping) else None
        if isinstance(inner, Mapping):
            state_dict = inner
            break
    arrays: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        if hasattr(value, "detach"):  # a torch.Tensor
            value = value.detach().cpu().numpy()
        if not isinstance(value, np.ndarray):
            continue
        arrays[key.removeprefix("module.")] = value
    if not arrays:
        raise ValueError("the checkpoint contains no tensors.")
    return arrays


def convert(torch_checkpoint: str, out: str) -> dict[str, np.ndarray]:
    """Convert a torchvision ``.pth`` checkpoint to ``.npz`` (needs ``torch``)."""
    try:
        import torch  # only this command needs torch
    except ImportError as error:
        raise ImportError(
            "`convert` needs PyTorch to read the .pth file: run it where torch is installed "
            "(pip install torch) and copy the resulting .npz here."
        ) from error
    if not os.path.exists(torch_checkpoint):
        raise FileNotFoundError(f"torch checkpoint {torch_checkpoint!r} does not exist.")
    state = torch.load(torch_checkpoint, map_location="cpu", weights_only=True)
    if hasattr(state, "state_dict"):
        state = state.state_dict()
    arrays = state_dict_to_numpy(state)
    np.savez(out, **arrays)
    return arrays


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.common.backbones", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    convert_parser = commands.add_parser("convert", help="torchvision .pth → .npz (needs torch)")
    convert_parser.add_argument("--torch-checkpoint", required=True)
    convert_parser.add_argument("--out", required=True)
    check_parser = commands.add_parser("check", help="load an .npz into a backbone")
    check_parser.add_argument("--npz", required=True)
    check_parser.add_argument("--backbone", default="resnet50", choices=["resnet18", "resnet50"])
    args = parser.parse_args(argv)
    if args.command == "convert":
        arrays = convert(args.torch_checkpoint, args.out)
        print(f"wrote {len(arrays)} arrays to {args.out}")
    else:
        # Abstract construction: every backbone variable is overwritten by the load.
        backbone = nnx.eval_shape(lambda: DilatedResNet(args.backbone, rngs=nnx.Rngs(0)))
        loaded = load_torchvision_backbone(backbone, args.npz)
        print(f"{args.npz}: loaded {len(loaded)} arrays into a {args.backbone} backbone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
