"""A stand-in for ``torch`` with only what ``experiments.common.backbones convert`` calls.

PyTorch is not a dependency of the project, so the README's ``convert`` command
runs in the tests against this module (put first on ``PYTHONPATH``): ``load``
reads a checkpoint the tests wrote with ``numpy.savez`` under torchvision's
parameter names and returns ``{name: Tensor}`` as ``torch.load`` returns a
state dict. Everything after loading — unwrapping, conversion to NumPy,
writing the ``.npz`` — is the real command's own code.
"""

from __future__ import annotations

import numpy as np


class Tensor:
    """The few ``torch.Tensor`` methods the converter uses."""

    def __init__(self, array: np.ndarray) -> None:
        self._array = array

    def detach(self) -> Tensor:
        return self

    def cpu(self) -> Tensor:
        return self

    def numpy(self) -> np.ndarray:
        return self._array


def load(path: str, map_location: str | None = None, weights_only: bool = False) -> dict:
    if map_location != "cpu" or not weights_only:
        raise ValueError("the converter must load on the CPU with weights_only=True")
    with open(path, "rb") as handle, np.load(handle) as arrays:
        return {name: Tensor(arrays[name]) for name in arrays.files}
