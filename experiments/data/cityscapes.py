"""Cityscapes stereo pairs with depth from the official disparity maps.

Built on the TFDS builder ``cityscapes/stereo_disparity``, which reads three
manually downloaded archives from https://www.cityscapes-dataset.com (login
required), unchanged, from its *manual directory*:

* ``leftImg8bit_trainvaltest.zip``  (``leftImg8bit/<split>/<city>/<id>_leftImg8bit.png``,
  ``<id>`` = ``<city>_<sequence>_<frame>``)
* ``rightImg8bit_trainvaltest.zip`` (``rightImg8bit/<split>/<city>/<id>_rightImg8bit.png``)
* ``disparity_trainvaltest.zip``    (``disparity/<split>/<city>/<id>_disparity.png``)

The first :func:`load` extracts them (into ``<data_dir>/downloads/extracted``,
about 26 GB, deletable afterwards) and writes the prepared TFRecords under
``<data_dir>/cityscapes/stereo_disparity/1.0.0`` (TFDS's own format, the PNG
bytes unchanged); later calls read the prepared copy and no longer need the
archives. Before extracting, the archives' listings are checked (every left
image has its right image and disparity map) so a wrong or partial download
fails in seconds with the name of a missing file.

Disparity encoding (Cityscapes README): a 16-bit PNG ``p`` with
``d_px = (p - 1) / 256`` for ``p > 0``; ``p = 0`` is invalid. Depth in metres is
``z = baseline · focal / d_px`` with the rectified camera of the paper's depth
experiment (monodepth's Cityscapes setting): ``focal = 2262.52`` px at 2048 px
width and ``baseline = 0.209313`` m. ``p ≤ 1`` (invalid, or zero disparity =
infinitely far) gives depth 0 ("unknown"), as the shared data contract asks.

Why the images are decoded here and not by TFDS: the TFDS builder declares
``disparity_map`` as an 8-bit image, so its default decoder would squash the
16-bit disparities to 8 bits (losing 8 bits of precision), and it pins every
image to 1024×2048. We read the stored PNG bytes with ``SkipDecoding`` and decode
them ourselves at their true bit depth and size.

Ego-vehicle crop: like monodepth (which the paper's code is built on), the
bottom fifth of every frame, where the car's bonnet is, is cropped away by
default (``crop_bonnet=True``). Cropping rows does not change the focal length.

Example features (shared contract): ``left``, ``right`` uint8 [H, W, 3],
``depth`` float32 [H, W], ``focal`` and ``baseline`` float32 scalars.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import tensorflow as tf
import tensorflow_datasets as tfds

from experiments.data.errors import DatasetFormatError, DatasetNotFoundError
from experiments.data.preparation import prepare_once
from experiments.data.tfds_compat import ensure_importlib_resources

__all__ = [
    "ARCHIVES",
    "BASELINE_M",
    "FOCAL_PX",
    "FOCAL_REFERENCE_WIDTH",
    "TFDS_NAME",
    "decode_example",
    "depth_from_disparity_png",
    "find_manual_dir",
    "load",
    "validate_archives",
]

TFDS_NAME = "cityscapes/stereo_disparity"

# Camera of the paper's depth experiment (Groenendijk et al. 2021, Sec. 4.1): focal
# length in pixels at the native 2048-pixel width, stereo baseline in metres.
FOCAL_PX = 2262.52
FOCAL_REFERENCE_WIDTH = 2048
BASELINE_M = 0.209313

# Archive name -> top-level folder inside it, and the file-name suffix of its PNGs.
ARCHIVES: Mapping[str, tuple[str, str]] = {
    "leftImg8bit_trainvaltest.zip": ("leftImg8bit", "_leftImg8bit.png"),
    "rightImg8bit_trainvaltest.zip": ("rightImg8bit", "_rightImg8bit.png"),
    "disparity_trainvaltest.zip": ("disparity", "_disparity.png"),
}

_SPLITS = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}
_ARCHIVE_SPLIT_DIR = {"train": "train", "validation": "val", "test": "test"}

_HOW_TO_GET = (
    "register at https://www.cityscapes-dataset.com, download the packages "
    "'leftImg8bit_trainvaltest.zip' (11GB), 'rightImg8bit_trainvaltest.zip' (11GB) and "
    "'disparity_trainvaltest.zip' (3.5GB) from its Downloads page, and put the three zip "
    "files, unopened, in the manual directory (default: <data_dir>/downloads/manual)."
)


def depth_from_disparity_png(
    disparity_png: tf.Tensor, focal: tf.Tensor | float, baseline: tf.Tensor | float
) -> tf.Tensor:
    """Depth in metres from Cityscapes' 16-bit disparity PNG values.

    ``d_px = (p − 1)/256`` for ``p > 1``; ``z = baseline·focal/d_px``; 0 elsewhere.

    Args:
      disparity_png: raw PNG values, any integer dtype, any shape.
      focal: focal length in pixels at the disparity map's resolution.
      baseline: stereo baseline in metres.

    Returns:
      float32 depth of the same shape, 0 where the disparity is invalid or zero.
    """
    raw = tf.cast(disparity_png, tf.float32)
    valid = raw > 1.0
    # Replace invalid disparities by 1 before dividing so no inf/NaN is ever formed.
    disparity_px = tf.where(valid, (raw - 1.0) / 256.0, tf.ones_like(raw))
    depth = tf.cast(baseline, tf.float32) * tf.cast(focal, tf.float32) / disparity_px
    return tf.where(valid, depth, tf.zeros_like(depth))


def decode_example(encoded: Mapping[str, tf.Tensor], crop_bonnet: bool = True) -> dict:
    """Maps one TFDS example with undecoded PNG bytes to the shared contract."""
    left = tf.io.decode_png(encoded["image_left"], channels=3, dtype=tf.uint8)
    right = tf.io.decode_png(encoded["image_right"], channels=3, dtype=tf.uint8)
    disparity = tf.io.decode_png(encoded["disparity_map"], channels=1, dtype=tf.uint16)[..., 0]
    height, width = tf.shape(left)[0], tf.shape(left)[1]
    checks = [
        tf.debugging.assert_equal(
            tf.shape(right)[:2], [height, width], message="Cityscapes: right image size != left"
        ),
        tf.debugging.assert_equal(
            tf.shape(disparity), [height, width], message="Cityscapes: disparity size != left"
        ),
    ]
    with tf.control_dependencies(checks):
        focal = FOCAL_PX * tf.cast(width, tf.float32) / FOCAL_REFERENCE_WIDTH
    depth = depth_from_disparity_png(disparity, focal, BASELINE_M)
    if crop_bonnet:
        # monodepth keeps the top 4/5 of each Cityscapes frame (the rest shows the car).
        kept_rows = (height * 4) // 5
        left, right, depth = left[:kept_rows], right[:kept_rows], depth[:kept_rows]
    return {
        "left": left,
        "right": right,
        "depth": depth,
        "focal": focal,
        "baseline": tf.constant(BASELINE_M, tf.float32),
    }


def find_manual_dir(data_dir: str | os.PathLike[str], manual_dir: str | os.PathLike[str] | None):
    """Returns the folder holding the three archives, or raises naming the missing ones.

    Looks in ``manual_dir`` if given, else in ``<data_dir>/downloads/manual`` (TFDS's
    default) and then in ``data_dir`` itself.
    """
    if manual_dir is not None:
        candidates = [Path(manual_dir)]
    else:
        candidates = [Path(data_dir) / "downloads" / "manual", Path(data_dir)]
    for candidate in candidates:
        if all((candidate / name).is_file() for name in ARCHIVES):
            return candidate
    # Report the archives missing from the most complete candidate.
    best = max(candidates, key=lambda c: sum((c / name).is_file() for name in ARCHIVES))
    missing = [name for name in ARCHIVES if not (best / name).is_file()]
    raise DatasetNotFoundError(
        "Cityscapes (stereo_disparity)",
        "archive(s) " + ", ".join(missing),
        [c / name for c in candidates for name in missing],
        _HOW_TO_GET,
    )


def validate_archives(manual_dir: str | os.PathLike[str]) -> dict[str, int]:
    """Checks the archives' structure before TFDS extracts them (which takes long).

    Every left image of every split must have its right image and disparity map,
    under the exact names the TFDS builder expects.

    Returns:
      the number of stereo pairs per archive split folder (``train``, ``val``, ``test``).

    Raises:
      DatasetFormatError: an archive is not a zip file, lacks its top folder, or
        lacks a file that matches a left image.
    """
    ids: dict[str, dict[str, set[str]]] = {}
    for name, (root, suffix) in ARCHIVES.items():
        path = Path(manual_dir) / name
        try:
            with zipfile.ZipFile(path) as archive:
                members = archive.namelist()
        except zipfile.BadZipFile as error:
            raise DatasetFormatError(f"Cityscapes: {path} is not a valid zip file") from error
        per_split: dict[str, set[str]] = {}
        for member in members:
            parts = member.split("/")
            if len(parts) == 4 and parts[0] == root and parts[3].endswith(suffix):
                per_split.setdefault(parts[1], set()).add(f"{parts[2]}/{parts[3][: -len(suffix)]}")
        if not per_split:
            raise DatasetFormatError(
                f"Cityscapes: {path} has no '{root}/<split>/<city>/*{suffix}' files; is it the "
                f"right archive ({name})?"
            )
        ids[name] = per_split
    left_name, right_name, disparity_name = ARCHIVES
    counts = {}
    for split_dir in _ARCHIVE_SPLIT_DIR.values():
        left_ids = ids[left_name].get(split_dir, set())
        if not left_ids:
            raise DatasetFormatError(
                f"Cityscapes: {Path(manual_dir) / left_name} has no images in "
                f"leftImg8bit/{split_dir}/ (TFDS needs the train, val and test folders)"
            )
        for other in (right_name, disparity_name):
            missing = sorted(left_ids - ids[other].get(split_dir, set()))
            if missing:
                root, suffix = ARCHIVES[other]
                raise DatasetFormatError(
                    f"Cityscapes: {len(missing)} left image(s) of '{split_dir}' have no match in "
                    f"{Path(manual_dir) / other}, e.g. {root}/{split_dir}/{missing[0]}{suffix}"
                )
        counts[split_dir] = len(left_ids)
    return counts


def load(
    split: str,
    data_dir: str | os.PathLike[str] | None,
    *,
    manual_dir: str | os.PathLike[str] | None = None,
    crop_bonnet: bool = True,
) -> tf.data.Dataset:
    """Cityscapes stereo pairs with depth ground truth, in a fixed (TFDS-stored) order.

    Args:
      split: ``"train"`` (2975 pairs), ``"validation"``/``"val"`` (500) or ``"test"`` (1525).
      data_dir: TFDS data directory where the prepared dataset is (or will be)
        stored; ``None`` uses TFDS's default (``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
      manual_dir: folder holding the three archives (only needed the first time);
        default ``<data_dir>/downloads/manual``, then ``data_dir`` itself. In a
        multi-process JAX run, process 0 prepares and the others wait for it
        (:func:`experiments.data.preparation.prepare_once`).
      crop_bonnet: drop the bottom fifth of each frame, as monodepth does.

    Returns:
      a ``tf.data.Dataset`` of contract dicts (``left``, ``right``, ``depth``,
      ``focal``, ``baseline``).

    Raises:
      ValueError: unknown split.
      DatasetNotFoundError: the dataset is not prepared and an archive is missing.
      DatasetFormatError: an archive's content is not Cityscapes' layout.
    """
    if split not in _SPLITS:
        raise ValueError(f"Cityscapes: unknown split {split!r}; expected one of {sorted(_SPLITS)}")
    if data_dir is None:
        data_dir = tfds.core.constants.DATA_DIR
    data_dir = os.path.expanduser(os.fspath(data_dir))

    def prepare(builder: tfds.core.DatasetBuilder) -> None:
        archives_dir = find_manual_dir(data_dir, manual_dir)
        validate_archives(archives_dir)
        ensure_importlib_resources()  # TFDS 4.9 needs it to prepare on Python 3.11
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=os.fspath(archives_dir), try_download_gcs=False
            )
        )

    # In a multi-process run, process 0 prepares and the others wait to read.
    builder = prepare_once(lambda: tfds.builder(TFDS_NAME, data_dir=data_dir), prepare)
    skip = tfds.decode.SkipDecoding()
    dataset = builder.as_dataset(
        split=_SPLITS[split],
        shuffle_files=False,
        decoders={"image_left": skip, "image_right": skip, "disparity_map": skip},
    )
    return dataset.map(
        lambda example: decode_example(example, crop_bonnet=crop_bonnet),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
