"""Errors raised by the real-dataset readers.

None of the real datasets (KITTI, Cityscapes, PASCAL Context, NYUv2) can be
downloaded by this project: they need a registration or a manual download. A
reader that cannot find its files therefore fails early, before any tf.data
graph is built, with a :class:`DatasetNotFoundError` that says *what* is
missing, *where* it was looked for, and *where to get it*.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

__all__ = ["DatasetFormatError", "DatasetNotFoundError"]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset directory, archive or file is missing.

    Attributes:
      dataset: human-readable dataset name, e.g. ``"KITTI raw"``.
      missing: what is missing, e.g. ``"calibration file calib_cam_to_cam.txt"``.
      looked_in: the paths that were checked.
      how_to_get: where and how to obtain the data.
    """

    def __init__(
        self,
        dataset: str,
        missing: str,
        looked_in: Sequence[str | os.PathLike[str]],
        how_to_get: str,
    ) -> None:
        self.dataset = dataset
        self.missing = missing
        self.looked_in = [os.fspath(p) for p in looked_in]
        self.how_to_get = how_to_get
        locations = "\n".join(f"  - {p}" for p in self.looked_in) or "  (no location given)"
        message = (
            f"{dataset}: missing {missing}.\n"
            f"Looked for it in:\n{locations}\n"
            f"How to get it: {how_to_get}\n"
            "(Nothing is downloaded automatically: these datasets need a manual download.)"
        )
        super().__init__(message)


class DatasetFormatError(ValueError):
    """A dataset file exists but its content is not in the expected format."""
