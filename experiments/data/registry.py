"""Dataset constructors looked up by name.

Every source of the shared data contract (see :mod:`experiments.data`) is a
function ``load(split, data_dir, **kwargs) -> tf.data.Dataset`` in its own module.
The registry maps a name to ``"module:function"`` and imports the module only
when the dataset is asked for, so importing :mod:`experiments.data` stays cheap
and a reader whose dependencies are missing does not break the others.

Adding a source: write ``experiments/data/<name>.py`` with a ``load`` function
and add an entry to ``_BUILTIN`` below, or call :func:`register_dataset` at run
time (e.g. from a test or a notebook) with any callable.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

__all__ = ["available_datasets", "dataset_loader", "get_dataset", "register_dataset"]

DatasetLoader = Callable[..., Any]  # (split, data_dir, **kwargs) -> tf.data.Dataset

_BUILTIN: dict[str, str] = {
    "synthetic": "experiments.data.synthetic:load",
    "kitti": "experiments.data.kitti:load",
    "cityscapes": "experiments.data.cityscapes:load",
    "pascal_context": "experiments.data.pascal_context:load",
    "nyuv2": "experiments.data.nyuv2:load",
}
_REGISTERED: dict[str, DatasetLoader] = {}


def register_dataset(name: str, loader: DatasetLoader | str, *, overwrite: bool = False) -> None:
    """Adds a dataset constructor under ``name``.

    Args:
      name: the name :func:`get_dataset` will accept.
      loader: a callable ``(split, data_dir, **kwargs) -> tf.data.Dataset``, or a
        ``"package.module:function"`` string imported on first use.
      overwrite: allow replacing an existing name.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    if not overwrite and name in available_datasets():
        raise ValueError(f"dataset {name!r} is already registered; pass overwrite=True")
    if isinstance(loader, str):
        if ":" not in loader:
            raise ValueError(f"loader path must look like 'module:function', got {loader!r}")
        _BUILTIN[name] = loader
        _REGISTERED.pop(name, None)
    elif callable(loader):
        _REGISTERED[name] = loader
    else:
        raise TypeError(f"loader must be callable or a 'module:function' string, got {loader!r}")


def available_datasets() -> list[str]:
    """Sorted names accepted by :func:`get_dataset`."""
    return sorted(set(_BUILTIN) | set(_REGISTERED))


def _resolve(name: str) -> DatasetLoader:
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in _BUILTIN:
        raise ValueError(f"unknown dataset {name!r}; available: {available_datasets()}")
    module_name, function_name = _BUILTIN[name].split(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, function_name)
    except AttributeError:
        raise ImportError(
            f"dataset {name!r}: module {module_name} has no function {function_name!r}"
        ) from None


def dataset_loader(name: str) -> DatasetLoader:
    """The loader registered as ``name`` (its module imported), e.g. to check options."""
    return _resolve(name)


def get_dataset(
    name: str, split: str, data_dir: str | os.PathLike[str] | None = None, **kwargs: Any
) -> Any:
    """The ``tf.data.Dataset`` of contract dicts of dataset ``name``, split ``split``.

    Args:
      name: one of :func:`available_datasets` (``"synthetic"``, ``"kitti"``,
        ``"cityscapes"``, ``"pascal_context"``, ``"nyuv2"``, ...).
      split: ``"train"``, ``"validation"``/``"val"`` or ``"test"`` (what the source has).
      data_dir: where the data is (or, for TFDS-built sources, will be) stored.
      **kwargs: passed to the source's ``load`` (e.g. ``height``, ``width``,
        ``num_train`` for ``"synthetic"``; the experiments pass ``config.data.<name>``).
    """
    return _resolve(name)(split, data_dir, **kwargs)
