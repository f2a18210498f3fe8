"""Works around a TFDS 4.9.x packaging gap, for every TFDS builder of the project.

``DatasetBuilder.code_path`` (reached from ``download_and_prepare`` through
``url_infos``/``_checksums_path``) evaluates
``isinstance(path, importlib_resources.abc.Traversable)``, but TFDS declares the
``importlib_resources`` backport as a dependency only for Python < 3.9, so on
our Python 3.11 environment preparing *any* dataset fails with
``ModuleNotFoundError: No module named 'importlib_resources'``. The standard
library's ``importlib.resources`` is the module that package backports (same
``abc.Traversable``), so we register it under the backport's name when the
backport is absent. Call :func:`ensure_importlib_resources` before
``builder.download_and_prepare()``.
"""

from __future__ import annotations

import importlib.resources
import importlib.resources.abc
import importlib.util
import sys

__all__ = ["ensure_importlib_resources"]


def ensure_importlib_resources() -> None:
    """Makes ``import importlib_resources`` resolve (to the stdlib module if needed)."""
    if "importlib_resources" in sys.modules:
        return
    if importlib.util.find_spec("importlib_resources") is None:
        sys.modules["importlib_resources"] = importlib.resources
