"""ImageNet-pretrained backbone weights from a torchvision ResNet checkpoint.

The paper's EncNet starts from an ImageNet-pretrained ResNet-50. Nothing is
downloaded here: convert a torchvision checkpoint you already have into a
plain ``.npz`` once (this is the only place that imports ``torch``, which the
project does not depend on), then point ``config.model.pretrained`` at it::

    # on a machine with torch installed, e.g. with the file from
    # https://download.pytorch.org/models/resnet50-0676ba61.pth
    python -m experiments.segmentation.pretrained convert \\
        --torch-checkpoint resnet50.pth --out resnet50.npz
    # check that it fits a backbone (no torch needed)
    python -m experiments.segmentation.pretrained check --npz resnet50.npz --backbone resnet50

The ``.npz`` keeps torchvision's names (``conv1.weight``, ``bn1.running_mean``,
``layer1.0.conv1.weight``, ``layer1.0.downsample.0.weight`` …) and layouts;
:func:`load_torchvision_backbone` maps them onto the NNX backbone of
:class:`~experiments.segmentation.models.EncNet`: conv weights OIHW → HWIO,
BatchNorm ``weight/bias/running_mean/running_var`` → ``scale/bias/mean/var``.
The classifier (``fc.*``) and ``num_batches_tracked`` are not used. ResNet-18
checkpoints load into the ``resnet18`` backbone the same way. Only ``width=1``
backbones with the default stage sizes have torchvision's shapes.

The pretrained network expects ImageNet-normalized inputs; EncNet normalizes
its [0, 1] inputs with torchvision's mean and standard deviation itself.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.segmentation.models import DilatedResNet, EncNet

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
    model: EncNet | DilatedResNet,
    weights: str | os.PathLike[str] | Mapping[str, np.ndarray],
    *,
    strict: bool = True,
) -> list[str]:
    """Copy torchvision ResNet weights into ``model``'s backbone, in place.

    Args:
      model: an :class:`EncNet` (its ``backbone`` is loaded) or a backbone.
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
    backbone = model.backbone if isinstance(model, EncNet) else model
    if not isinstance(backbone, DilatedResNet):
        raise TypeError(f"expected an EncNet or DilatedResNet, got {type(model).__name__}.")
    if isinstance(weights, str | os.PathLike):
        path = os.fspath(weights)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"pretrained backbone weights {path!r} do not exist; convert a torchvision "
                "checkpoint with `python -m experiments.segmentation.pretrained convert "
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
        prog="python -m experiments.segmentation.pretrained", description=__doc__.split("\n")[0]
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
