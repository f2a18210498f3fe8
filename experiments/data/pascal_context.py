"""PASCAL Context, the 59 most frequent classes (Mottaghi et al. CVPR 2014).

On-disk layout (mmsegmentation's, ``data_dir`` = the folder holding ``VOCdevkit``)::

    VOCdevkit/VOC2010/JPEGImages/<id>.jpg
    VOCdevkit/VOC2010/SegmentationClassContext/<id>.png    uint8: 0 background, 1..59
    VOCdevkit/VOC2010/ImageSets/SegmentationContext/train.txt | val.txt   one <id> a line

The images are PASCAL VOC 2010's (``VOCtrainval_03-May-2010.tar``); the label
PNGs are made from the Context annotations (``trainval_merged.json``) with
mmsegmentation's ``tools/dataset_converters/pascal_context.py`` (which uses the
``detail`` API and maps the 59 classes, in the sorted order of their ids in the
459-class list, to 1..59 and everything else to 0), and the
``train.txt``/``val.txt`` lists come from the same converter (about 5000 images
each; the paper quotes 4998 train / 5105 val).

Labels: the paper's metrics ignore the background (the CoV paper: "pixel accuracy and
mean IoU, background ignored"), so by default (``background="ignore"``, like
mmsegmentation's ``reduce_zero_label=True``) the 59 classes become ids 0..58 in
:data:`CLASS_NAMES` order and the background becomes 255, the contract's
ignore label; a model then has 59 outputs. ``background="class"`` keeps the file's
values: 0 = background, 1..59 = the classes (60 outputs). Any other value in a
label file (e.g. a 459-class label map given by mistake) is an error at read time.

Example features (shared contract): ``left`` uint8 [H, W, 3], ``semantic``
int32 [H, W]. Images keep their native (varying) size.
"""

from __future__ import annotations

import os
from pathlib import Path

import tensorflow as tf

from experiments.data.errors import DatasetFormatError, DatasetNotFoundError

__all__ = ["CLASS_NAMES", "IGNORE_LABEL", "NUM_CLASSES", "load", "read_split_ids"]

# The 59 classes, in label-file order (value k in a label PNG is CLASS_NAMES[k - 1]).
CLASS_NAMES: tuple[str, ...] = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse",
    "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
    "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck",
    "tvmonitor", "wall", "water", "window", "wood",
)  # fmt: skip
NUM_CLASSES = 59
IGNORE_LABEL = 255
assert len(CLASS_NAMES) == NUM_CLASSES

_DATASET = "PASCAL Context (59 classes)"
_SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "val"}
_HOW_TO_GET = (
    "download VOCtrainval_03-May-2010.tar (http://host.robots.ox.ac.uk/pascal/VOC/voc2010/) "
    "and trainval_merged.json (https://cs.stanford.edu/~roozbeh/pascal-context/), then run "
    "mmsegmentation's tools/dataset_converters/pascal_context.py (see mmsegmentation's "
    "docs/en/user_guides/2_dataset_prepare.md, 'Pascal Context'): it writes "
    "VOCdevkit/VOC2010/SegmentationClassContext/ and ImageSets/SegmentationContext/."
)


def _voc_dir(data_dir: Path) -> Path:
    return data_dir / "VOCdevkit" / "VOC2010"


def read_split_ids(data_dir: str | os.PathLike[str], split: str) -> list[str]:
    """Image ids listed in ``ImageSets/SegmentationContext/<split>.txt``, in file order."""
    if split not in _SPLITS:
        raise ValueError(
            f"PASCAL Context: unknown split {split!r}; expected one of {sorted(_SPLITS)} "
            "('validation' and 'test' are the val set, the only labelled evaluation set)"
        )
    list_file = (
        _voc_dir(Path(data_dir)) / "ImageSets" / "SegmentationContext" / f"{_SPLITS[split]}.txt"
    )
    if not list_file.is_file():
        raise DatasetNotFoundError(_DATASET, f"{split} list", [list_file], _HOW_TO_GET)
    ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetFormatError(f"{list_file}: the split list is empty")
    return ids


def _decode_example(
    image_path: tf.Tensor, label_path: tf.Tensor, background_is_ignored: bool
) -> dict[str, tf.Tensor]:
    image = tf.io.decode_jpeg(tf.io.read_file(image_path), channels=3)
    label = tf.cast(tf.io.decode_png(tf.io.read_file(label_path), channels=1)[..., 0], tf.int32)
    checks = [
        tf.debugging.assert_less_equal(
            label,
            NUM_CLASSES,
            message="PASCAL Context: label value above 59 (is this the 59-class label map?)",
        ),
        tf.debugging.assert_equal(
            tf.shape(label), tf.shape(image)[:2], message="PASCAL Context: label size != image"
        ),
    ]
    with tf.control_dependencies(checks):
        label = tf.identity(label)
    if background_is_ignored:
        label = tf.where(label == 0, IGNORE_LABEL, label - 1)
    return {"left": image, "semantic": label}


def load(
    split: str,
    data_dir: str | os.PathLike[str] | None,
    *,
    background: str = "ignore",
) -> tf.data.Dataset:
    """PASCAL Context images and 59-class label maps, in list order.

    Args:
      split: ``"train"`` or ``"val"`` (aliases ``"validation"``, ``"test"``).
      data_dir: the folder that holds ``VOCdevkit/``.
      background: ``"ignore"`` (default): classes 0..58, background 255;
        ``"class"``: background 0, classes 1..59.

    Returns:
      a ``tf.data.Dataset`` of ``{"left": uint8 [H, W, 3], "semantic": int32 [H, W]}``.

    Raises:
      ValueError: bad split, ``background`` or missing ``data_dir``.
      DatasetNotFoundError: the list, an image or a label file is missing.
    """
    if background not in ("ignore", "class"):
        raise ValueError(
            f"PASCAL Context: background must be 'ignore' or 'class', got {background!r}"
        )
    if data_dir is None:
        raise ValueError("PASCAL Context: data_dir is required (the folder holding VOCdevkit/)")
    root = Path(data_dir).expanduser()
    voc = _voc_dir(root)
    if not voc.is_dir():
        raise DatasetNotFoundError(_DATASET, "the VOC2010 folder", [voc], _HOW_TO_GET)
    ids = read_split_ids(root, split)
    image_paths = [voc / "JPEGImages" / f"{i}.jpg" for i in ids]
    label_paths = [voc / "SegmentationClassContext" / f"{i}.png" for i in ids]
    for kind, paths in (("images", image_paths), ("label maps", label_paths)):
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DatasetNotFoundError(
                _DATASET,
                f"{len(missing)} of {len(ids)} {split} {kind} (the first ones shown)",
                missing[:5],
                _HOW_TO_GET,
            )
    dataset = tf.data.Dataset.from_tensor_slices(
        (
            tf.constant([os.fspath(p) for p in image_paths]),
            tf.constant([os.fspath(p) for p in label_paths]),
        )
    )
    background_is_ignored = background == "ignore"
    return dataset.map(
        lambda image, label: _decode_example(image, label, background_is_ignored),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
