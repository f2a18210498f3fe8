"""NYUv2 in the preprocessed multi-task layout of MTAN (Liu et al. CVPR 2019) / LibMTL.

On-disk layout (``data_dir``; the ``nyuv2.zip`` released with MTAN,
github.com/lorenmt/mtan, also used by LibMTL)::

    train|val/image/<i>.npy    float [288, 384, 3], RGB in [0, 1]
    train|val/label/<i>.npy    float [288, 384], 13 classes 0..12, -1 = ignore
    train|val/depth/<i>.npy    float [288, 384, 1], metres, 0 = invalid
    train|val/normal/<i>.npy   float [288, 384, 3], surface normals in [-1, 1], 0 = invalid

``<i>`` runs 0..N-1 (795 train, 654 val images). Mapping to the shared
contract: ``left`` = round(255·image) as uint8; ``semantic`` int32 with −1 → 255;
``depth`` float32 [H, W] (non-finite or negative values → 0); ``normals``
float32 [H, W, 3] renormalized to unit length where non-zero (the stored
normals went through 8-bit quantisation), 0 where invalid.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import tensorflow as tf

from experiments.data.errors import DatasetFormatError, DatasetNotFoundError

__all__ = ["FOLDERS", "IGNORE_LABEL", "NUM_CLASSES", "load", "to_contract"]

NUM_CLASSES = 13
IGNORE_LABEL = 255
FOLDERS = ("image", "label", "depth", "normal")

_DATASET = "NYUv2 (MTAN multi-task layout)"
_SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "val"}
_HOW_TO_GET = (
    "download the preprocessed NYUv2 archive (nyuv2.zip) linked from the MTAN repository's "
    "README (github.com/lorenmt/mtan; LibMTL's NYUv2 example uses the same files) and unzip "
    "it into data_dir, which then holds train/ and val/."
)


def to_contract(
    image: np.ndarray, label: np.ndarray, depth: np.ndarray, normal: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Maps one example's four arrays (as stored) to ``(left, semantic, depth, normals)``."""
    height, width = image.shape[:2]
    if (
        image.shape != (height, width, 3)
        or label.shape not in ((height, width), (height, width, 1))
        or depth.shape not in ((height, width), (height, width, 1))
        or normal.shape != (height, width, 3)
    ):
        raise DatasetFormatError(
            "NYUv2: inconsistent array shapes: image "
            f"{image.shape}, label {label.shape}, depth {depth.shape}, normal {normal.shape} "
            "(expected [H, W, 3], [H, W], [H, W, 1], [H, W, 3])"
        )
    left = np.clip(np.rint(np.asarray(image, np.float64) * 255.0), 0, 255).astype(np.uint8)
    label = np.asarray(label, np.float64).reshape(height, width)
    ignored = ~np.isfinite(label) | (label < 0)
    semantic = np.where(ignored, IGNORE_LABEL, np.rint(label)).astype(np.int32)
    if np.any((semantic >= NUM_CLASSES) & (semantic != IGNORE_LABEL)):
        raise DatasetFormatError(
            f"NYUv2: label values above {NUM_CLASSES - 1} (is this the 13-class label map?)"
        )
    depth = np.asarray(depth, np.float32).reshape(height, width)
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
    normal = np.nan_to_num(np.asarray(normal, np.float32))
    norm = np.linalg.norm(normal, axis=-1, keepdims=True)
    valid = norm > 1e-6
    normals = np.where(valid, normal / np.where(valid, norm, 1.0), 0.0).astype(np.float32)
    return left, semantic, depth, normals


# tf.data runs ``_read_example`` on several Python threads at once, and ``np.load``
# parses each file's header with ``ast.literal_eval``. CPython 3.11 keeps the AST
# converter's recursion counter per interpreter, not per thread, so two threads
# parsing at once can fail with "SystemError: AST constructor recursion depth
# mismatch" (python/cpython#106905). Reading one file at a time costs little: the
# arrays are small and the decoding below runs outside the lock.
_NPY_READ_LOCK = threading.Lock()


def _read_example(paths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    with _NPY_READ_LOCK:
        image, label, depth, normal = (np.load(p.decode()) for p in paths)
    return to_contract(image, label, depth, normal)


def load(split: str, data_dir: str | os.PathLike[str] | None) -> tf.data.Dataset:
    """NYUv2 examples in index order.

    Args:
      split: ``"train"`` (795) or ``"val"`` (654; aliases ``"validation"``, ``"test"``).
      data_dir: the folder that holds ``train/`` and ``val/``.

    Returns:
      a ``tf.data.Dataset`` of ``left`` uint8 [H, W, 3], ``semantic`` int32 [H, W],
      ``depth`` float32 [H, W], ``normals`` float32 [H, W, 3].

    Raises:
      ValueError: unknown split or missing ``data_dir``.
      DatasetNotFoundError: a folder or one of an example's four files is missing.
    """
    if split not in _SPLITS:
        raise ValueError(f"NYUv2: unknown split {split!r}; expected one of {sorted(_SPLITS)}")
    if data_dir is None:
        raise ValueError("NYUv2: data_dir is required (the folder holding train/ and val/)")
    split_dir = Path(data_dir).expanduser() / _SPLITS[split]
    for folder in FOLDERS:
        if not (split_dir / folder).is_dir():
            raise DatasetNotFoundError(
                _DATASET, f"the {folder}/ folder of {split}", [split_dir / folder], _HOW_TO_GET
            )
    indices = sorted(int(p.stem) for p in (split_dir / "image").glob("*.npy") if p.stem.isdigit())
    if not indices:
        raise DatasetNotFoundError(
            _DATASET, f"{split} images (<i>.npy)", [split_dir / "image"], _HOW_TO_GET
        )
    rows = [[split_dir / folder / f"{i}.npy" for folder in FOLDERS] for i in indices]
    missing = [path for row in rows for path in row if not path.is_file()]
    if missing:
        raise DatasetNotFoundError(
            _DATASET, f"{len(missing)} {split} file(s) (the first ones shown)", missing[:5],
            _HOW_TO_GET,
        )  # fmt: skip
    # Read the first example now so that a wrong format fails here, not mid-training.
    _read_example(np.array([os.fspath(p).encode() for p in rows[0]]))

    def read(paths: tf.Tensor) -> dict[str, tf.Tensor]:
        left, semantic, depth, normals = tf.numpy_function(
            _read_example, [paths], [tf.uint8, tf.int32, tf.float32, tf.float32], stateful=False
        )
        # Sizes may differ between files (288×384 in the release): leave H, W open.
        left.set_shape((None, None, 3))
        semantic.set_shape((None, None))
        depth.set_shape((None, None))
        normals.set_shape((None, None, 3))
        return {"left": left, "semantic": semantic, "depth": depth, "normals": normals}

    paths = tf.constant([[os.fspath(p) for p in row] for row in rows])
    return tf.data.Dataset.from_tensor_slices(paths).map(
        read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
