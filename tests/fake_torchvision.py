"""Fake torchvision ResNet checkpoints: torchvision's exact parameter names and shapes.

Written out independently of the project's backbone (from torchvision/models/resnet.py,
v1.5 bottlenecks), so that loading them tests the name and layout mapping.
"""

from __future__ import annotations

import functools

import numpy as np


def torchvision_resnet_shapes(depth: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of torchvision's ``resnet{depth}().state_dict()``, written out
    independently of our model (torchvision/models/resnet.py, v1.5 bottlenecks)."""
    bottleneck = depth == 50
    blocks = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}[depth]
    expansion = 4 if bottleneck else 1
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def bn(name: str, channels: int) -> None:
        for field in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{field}"] = (channels,)
        shapes[f"{name}.num_batches_tracked"] = ()

    bn("bn1", 64)
    inplanes = 64
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks, strict=True), 1):
        for index in range(count):
            prefix = f"layer{stage}.{index}"
            if bottleneck:
                convs = [(planes, inplanes, 1), (planes, planes, 3), (planes * 4, planes, 1)]
            else:
                convs = [(planes, inplanes, 3), (planes, planes, 3)]
            for i, (out, inp, k) in enumerate(convs, 1):
                shapes[f"{prefix}.conv{i}.weight"] = (out, inp, k, k)
                bn(f"{prefix}.bn{i}", out)
            stride = 2 if index == 0 and stage > 1 else 1
            if index == 0 and (stride != 1 or inplanes != planes * expansion):
                shapes[f"{prefix}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                bn(f"{prefix}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    shapes["fc.weight"] = (1000, 512 * expansion)
    shapes["fc.bias"] = (1000,)
    return shapes


@functools.cache
def fake_checkpoint(depth: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(depth)
    arrays = {}
    for name, shape in torchvision_resnet_shapes(depth).items():
        if name.endswith("num_batches_tracked"):
            arrays[name] = np.array(100, np.int64)
        elif name.endswith("running_var"):
            arrays[name] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            arrays[name] = rng.standard_normal(shape, dtype=np.float32)
    return arrays
