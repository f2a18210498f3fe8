"""KITTI raw stereo pairs (Eigen split) with the improved ground-truth depth.

On-disk layout (``data_dir``, the unpacked KITTI raw "synced+rectified" drives,
http://www.cvlibs.net/datasets/kitti/raw_data.php)::

    <date>/calib_cam_to_cam.txt
    <date>/<date>_drive_<nnnn>_sync/image_02/data/<frame>.png   (left colour camera)
    <date>/<date>_drive_<nnnn>_sync/image_03/data/<frame>.png   (right colour camera)

``<frame>`` has 10 digits. monodepth's converted copy with ``.jpg`` images works
too: a listed image that does not exist is also looked for with the other
extension.

Improved ground truth (Uhrig et al. 3DV 2017; the "annotated depth maps",
``data_depth_annotated.zip`` of the KITTI depth benchmark,
http://www.cvlibs.net/datasets/kitti/eval_depth.php): uint16 PNGs, depth in
metres × 256, 0 = no measurement. Both layouts are searched, under ``depth_dir``
(default ``data_dir``):

* merged into the raw drives:
  ``<date>/<drive>/proj_depth/groundtruth/image_02/<frame>.png``;
* as the official archive unpacks:
  ``train/<drive>/proj_depth/groundtruth/image_02/<frame>.png`` or ``val/<drive>/...``
  (or ``<drive>/proj_depth/...`` directly).

The annotated maps cover all but the first and last 5 frames of each drive, so
652 of the 697 Eigen test frames: frames without ground truth are skipped by
default (``missing_depth="skip"``), which gives the usual 652-image
"Eigen improved" benchmark.

Split files (the official lists are not shipped: pass ``split_file``, or copy
monodepth's ``utils/filenames/eigen_{train,val,test}_files.txt`` or monodepth2's
``splits/eigen/`` into ``<data_dir>/splits/``): one frame per line, in either of
the two public formats:

* monodepth (Godard et al. 2017; ``utils/filenames/eigen_test_files.txt``, ...):
  ``<date>/<drive>/image_02/data/<frame>.jpg <date>/<drive>/image_03/data/<frame>.jpg``
  (a line with only the left image path is accepted too);
* monodepth2 (``splits/eigen/test_files.txt``, ``splits/eigen_zhou/*``):
  ``<date>/<drive> <frame index> <l|r>``.

Each example is the stereo pair (image_02 as ``left``, image_03 as ``right``),
whatever the listed side (a monodepth2 ``r`` line gives the same pair); the
ground truth is image_02's. Camera from the date's calibration:
``focal = P_rect_02[0, 0]`` pixels at the native resolution,
``baseline = |P_rect_02[0, 3]/P_rect_02[0, 0] − P_rect_03[0, 3]/P_rect_03[0, 0]|``
metres, and ``doffs = P_rect_03[0, 2] − P_rect_02[0, 2]`` pixels, the offset
between the two principal points (0 for KITTI's own calibrations; other rigs
stored in this layout, e.g. Middlebury-style ones, have doffs ≠ 0, and then
depth = focal · baseline / (disparity + doffs); see :func:`camera_from_calibration`).
Images keep their native size (375×1242, 370×1224, 374×1238, 376×1241 in the
Eigen test set): training resizes them to the network's size in the input
pipeline; evaluation predicts at the network's size and compares each
prediction with its own ground truth at that ground truth's size.

Frames without ground truth: training (``with_depth=False``, the default for
``"train"``) uses every listed frame; evaluation skips them by default and logs
how many (``missing_depth="skip"``), or rejects the split naming them
(``"error"``); with ``"zeros"`` they stay, all pixels unknown, for tools that
need every listed frame (the depth evaluation then stops at the first of them,
naming it).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from experiments.data.errors import DatasetFormatError, DatasetNotFoundError

__all__ = [
    "KittiFrame",
    "StereoCamera",
    "camera_from_calibration",
    "find_ground_truth",
    "list_all_frames",
    "load",
    "parse_split_file",
    "parse_split_line",
    "read_calibration",
]

_DATASET = "KITTI raw"
_HOW_TO_GET_RAW = (
    "download the 'synced+rectified' drives and the per-date calibration archives "
    "(<date>_calib.zip) from http://www.cvlibs.net/datasets/kitti/raw_data.php (registration "
    "required; monodepth's utils/kitti_archives_to_download.txt lists the archives of the "
    "Eigen split) and unzip them all into data_dir, which then holds <date>/ folders."
)
_HOW_TO_GET_DEPTH = (
    "download 'annotated depth maps' (data_depth_annotated.zip) from "
    "http://www.cvlibs.net/datasets/kitti/eval_depth.php?benchmark=depth_prediction and "
    "unzip it into depth_dir (it unpacks as train/ and val/ folders of drives), or move each "
    "drive's proj_depth/ folder into the matching raw drive folder."
)
_HOW_TO_GET_SPLIT = (
    "pass split_file=<path>: e.g. monodepth's utils/filenames/eigen_test_files.txt or "
    "monodepth2's splits/eigen/test_files.txt (github.com/mrharicot/monodepth, "
    "github.com/nianticlabs/monodepth2)."
)
_DRIVE_PATTERN = re.compile(r"^(\d{4}_\d{2}_\d{2})_drive_\d{4}_sync$")
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_MISSING_DEPTH_POLICIES = ("skip", "error", "zeros")


@dataclasses.dataclass(frozen=True)
class KittiFrame:
    """One frame of a raw drive: ``<date>/<drive>/image_0{2,3}/data/<frame><extension>``."""

    date: str  # e.g. "2011_09_26"
    drive: str  # e.g. "2011_09_26_drive_0002_sync"
    frame: str  # 10 digits, e.g. "0000000069"
    extension: str = ".png"  # as listed; the other extension is tried if absent

    def image_path(self, root: Path, camera: str) -> Path:
        return root / self.date / self.drive / camera / "data" / f"{self.frame}{self.extension}"


def _check_drive(date: str, drive: str, where: str) -> None:
    match = _DRIVE_PATTERN.match(drive)
    if match is None or match.group(1) != date:
        raise DatasetFormatError(
            f"{where}: '{date}/{drive}' is not a KITTI raw drive "
            "('<date>/<date>_drive_<nnnn>_sync', e.g. 2011_09_26/2011_09_26_drive_0002_sync)"
        )


def _frame_from_image_path(path: str, camera: str, where: str) -> KittiFrame:
    parts = path.strip("/").split("/")
    if len(parts) != 5 or parts[2] != camera or parts[3] != "data":
        raise DatasetFormatError(
            f"{where}: expected '<date>/<drive>/{camera}/data/<frame>.png', got {path!r}"
        )
    date, drive, _, _, file_name = parts
    _check_drive(date, drive, where)
    frame, extension = os.path.splitext(file_name)
    if not frame.isdigit() or extension.lower() not in _IMAGE_EXTENSIONS:
        raise DatasetFormatError(f"{where}: {file_name!r} is not a '<10 digits>.png|jpg' frame")
    return KittiFrame(date, drive, frame.zfill(10), extension)


def parse_split_line(line: str, where: str = "split line") -> KittiFrame:
    """Parses one line of a monodepth or monodepth2 KITTI split file (see module doc)."""
    tokens = line.split()
    if len(tokens) == 3 and tokens[2] in ("l", "r"):
        folder, index, _side = tokens
        parts = folder.strip("/").split("/")
        if len(parts) != 2 or not index.isdigit():
            raise DatasetFormatError(
                f"{where}: expected '<date>/<drive> <frame index> <l|r>', got {line.strip()!r}"
            )
        _check_drive(parts[0], parts[1], where)
        return KittiFrame(parts[0], parts[1], f"{int(index):010d}")
    if len(tokens) in (1, 2):
        left = _frame_from_image_path(tokens[0], "image_02", where)
        if len(tokens) == 2:
            right = _frame_from_image_path(tokens[1], "image_03", where)
            if (right.date, right.drive, right.frame) != (left.date, left.drive, left.frame):
                raise DatasetFormatError(
                    f"{where}: left and right images are different frames: {line.strip()!r}"
                )
        return left
    raise DatasetFormatError(
        f"{where}: expected '<left path> <right path>' or '<date>/<drive> <frame> <l|r>', "
        f"got {line.strip()!r}"
    )


def parse_split_file(path: str | os.PathLike[str]) -> list[KittiFrame]:
    """Reads a KITTI split file (either format; blank lines ignored), in file order."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(_DATASET, "split file", [path], _HOW_TO_GET_SPLIT)
    frames = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            frames.append(parse_split_line(line, where=f"{path}:{number}"))
    if not frames:
        raise DatasetFormatError(f"{path}: the split file lists no frames")
    return frames


def list_all_frames(data_dir: str | os.PathLike[str]) -> list[KittiFrame]:
    """Every frame of every drive under ``data_dir`` that has both camera images, sorted."""
    root = Path(data_dir)
    frames = []
    for left_dir in sorted(root.glob("*/*_drive_*_sync/image_02/data")):
        drive_dir = left_dir.parents[1]
        for image in sorted(left_dir.iterdir()):
            if image.suffix.lower() in _IMAGE_EXTENSIONS and image.stem.isdigit():
                frame = KittiFrame(drive_dir.parent.name, drive_dir.name, image.stem, image.suffix)
                if frame.image_path(root, "image_03").is_file():
                    frames.append(frame)
    return frames


def read_calibration(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Parses a KITTI ``calib_cam_to_cam.txt`` into ``{key: float64 vector}``.

    Non-numeric entries (``calib_time``) are left out.
    """
    calibration = {}
    for line in Path(path).read_text().splitlines():
        key, separator, values = line.partition(":")
        if not separator:
            continue
        try:
            calibration[key.strip()] = np.array([float(v) for v in values.split()])
        except ValueError:
            continue
    return calibration


class StereoCamera(NamedTuple):
    """The rectified colour pair (cameras 02 and 03) at the native resolution."""

    focal: float  # pixels
    baseline: float  # metres
    doffs: float  # c_x(image_03) − c_x(image_02), pixels (0 in KITTI's own calibrations)


def camera_from_calibration(path: str | os.PathLike[str]) -> StereoCamera:
    """Focal length, baseline and principal-point offset of the rectified colour pair.

    focal = P_rect_02[0,0];
    baseline = |P_rect_02[0,3]/P_rect_02[0,0] − P_rect_03[0,3]/P_rect_03[0,0]|
    (each P_rect_0i[0,3] is −f·t_x of that camera relative to the reference camera);
    doffs = P_rect_03[0,2] − P_rect_02[0,2], the right camera's principal point
    minus the left one's. A point at depth Z projects to x_i = f·X/Z + c_x(i) +
    P_rect_0i[0,3]/Z, so its disparity x_left − x_right is f·B/Z − doffs and
    Z = f·B/(d + doffs) (Middlebury's convention). KITTI rectifies both cameras
    to one principal point (doffs = 0); other rigs laid out as KITTI may not.

    Raises:
      DatasetFormatError: a projection is missing, or the two focal lengths differ
        (not a rectified pair).
    """
    calibration = read_calibration(path)
    projections = []
    for key in ("P_rect_02", "P_rect_03"):
        values = calibration.get(key)
        if values is None or values.size != 12:
            raise DatasetFormatError(f"{path}: no 12-number {key} entry (3×4 projection matrix)")
        projections.append(values.reshape(3, 4))
    p02, p03 = projections
    if p02[0, 0] <= 0 or p03[0, 0] <= 0:
        raise DatasetFormatError(f"{path}: non-positive focal length in P_rect_02/P_rect_03")
    # Calibration files print 7 significant digits: equal focals agree to ~1e-6.
    if abs(p02[0, 0] - p03[0, 0]) > 1e-5 * p02[0, 0]:
        raise DatasetFormatError(
            f"{path}: P_rect_02 and P_rect_03 have different focal lengths ({p02[0, 0]} and "
            f"{p03[0, 0]}): not a rectified stereo pair"
        )
    baseline = abs(p02[0, 3] / p02[0, 0] - p03[0, 3] / p03[0, 0])
    return StereoCamera(float(p02[0, 0]), float(baseline), float(p03[0, 2] - p02[0, 2]))


def _ground_truth_candidates(depth_dir: Path, frame: KittiFrame) -> list[Path]:
    tail = Path(frame.drive) / "proj_depth" / "groundtruth" / "image_02" / f"{frame.frame}.png"
    return [
        depth_dir / frame.date / tail,
        depth_dir / "train" / tail,
        depth_dir / "val" / tail,
        depth_dir / tail,
    ]


def find_ground_truth(depth_dir: str | os.PathLike[str], frame: KittiFrame) -> Path | None:
    """Path of the frame's improved ground truth in any supported layout, or None."""
    for candidate in _ground_truth_candidates(Path(depth_dir), frame):
        if candidate.is_file():
            return candidate
    return None


def _existing_image(root: Path, frame: KittiFrame, camera: str) -> Path | None:
    listed = frame.image_path(root, camera)
    if listed.is_file():
        return listed
    for extension in _IMAGE_EXTENSIONS:
        candidate = listed.with_suffix(extension)
        if candidate.is_file():
            return candidate
    return None


def _default_split_file(split_dir: Path, split: str) -> Path:
    candidates = [
        split_dir / f"eigen_{split}_files.txt",  # monodepth's utils/filenames/
        split_dir / "eigen" / f"{split}_files.txt",  # monodepth2's splits/
        split_dir / f"{split}_files.txt",
        split_dir / f"{split}.txt",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DatasetNotFoundError(
        _DATASET, f"a split file for split {split!r}", candidates, _HOW_TO_GET_SPLIT
    )


def _raise_missing(what: str, missing: Sequence[Path], total: int, how_to_get: str) -> None:
    shown = list(missing[:5])
    more = f" ({len(missing)} of {total} frames; the first {len(shown)} shown)"
    raise DatasetNotFoundError(_DATASET, what + more, shown, how_to_get)


def _decode_example(
    record: dict[str, tf.Tensor], with_depth: bool, zero_depth_when_absent: bool
) -> dict[str, tf.Tensor]:
    left = tf.io.decode_image(tf.io.read_file(record["left"]), channels=3, expand_animations=False)
    right = tf.io.decode_image(
        tf.io.read_file(record["right"]), channels=3, expand_animations=False
    )
    example = {
        "left": left,
        "right": right,
        "focal": record["focal"],
        "baseline": record["baseline"],
        "doffs": record["doffs"],
    }
    if with_depth:

        def read_depth() -> tf.Tensor:
            png = tf.io.decode_png(tf.io.read_file(record["depth"]), channels=1, dtype=tf.uint16)
            return tf.cast(png[..., 0], tf.float32) / 256.0

        if zero_depth_when_absent:
            depth = tf.cond(
                tf.strings.length(record["depth"]) > 0,
                read_depth,
                lambda: tf.zeros(tf.shape(left)[:2], tf.float32),
            )
        else:
            depth = read_depth()
        with tf.control_dependencies(
            [
                tf.debugging.assert_equal(
                    tf.shape(depth),
                    tf.shape(left)[:2],
                    message="KITTI: ground-truth depth size differs from its image_02 size",
                )
            ]
        ):
            example["depth"] = tf.identity(depth)
    return example


def load(
    split: str,
    data_dir: str | os.PathLike[str] | None,
    *,
    split_file: str | os.PathLike[str] | None = None,
    split_dir: str | os.PathLike[str] | None = None,
    depth_dir: str | os.PathLike[str] | None = None,
    with_depth: bool | None = None,
    missing_depth: str = "skip",
) -> tf.data.Dataset:
    """KITTI raw stereo pairs (and improved ground truth) in split-file order.

    Args:
      split: split name; selects the split file when ``split_file`` is not given
        (the first of ``eigen_{split}_files.txt``, ``eigen/{split}_files.txt``,
        ``{split}_files.txt``, ``{split}.txt`` in ``split_dir``), and the default
        of ``with_depth``. ``"all"`` without a split file takes every frame on disk.
      data_dir: root of the unpacked raw drives (holds the ``<date>/`` folders).
      split_file: path of a monodepth or monodepth2 split file; a ``{split}`` in
        it is replaced by ``split`` (so one setting serves train and test, e.g.
        ``".../eigen_{split}_files.txt"``).
      split_dir: folder searched for split files (default ``<data_dir>/splits``):
        copy monodepth's ``utils/filenames/`` or monodepth2's ``splits/`` there.
      depth_dir: root of the annotated depth maps (default: ``data_dir``).
      with_depth: add the ``depth`` ground truth; default: all splits but ``"train"``.
      missing_depth: for listed frames without ground truth: ``"skip"`` them (logged),
        ``"error"``, or give ``"zeros"`` (all pixels unknown).

    Returns:
      a ``tf.data.Dataset`` of dicts: ``left``, ``right`` uint8 [H, W, 3] at native
      size, ``focal`` float32 (pixels), ``baseline`` float32 (metres), ``doffs``
      float32 (pixels, the principal-point offset of the pair) and, with
      ``with_depth``, ``depth`` float32 [H, W] in metres (0 = unknown).

    Raises:
      ValueError: bad ``split``/``data_dir``/``missing_depth``.
      DatasetNotFoundError: a folder, calibration, image, ground truth or split
        file is missing (the message names it and where it was looked for).
      DatasetFormatError: a split or calibration file cannot be parsed.
    """
    if data_dir is None:
        raise ValueError("KITTI: data_dir is required (the folder holding the <date>/ drives)")
    if missing_depth not in _MISSING_DEPTH_POLICIES:
        raise ValueError(
            f"KITTI: missing_depth must be one of {_MISSING_DEPTH_POLICIES}, got {missing_depth!r}"
        )
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(_DATASET, "data directory", [root], _HOW_TO_GET_RAW)
    if with_depth is None:
        with_depth = split != "train"
    depth_root = Path(depth_dir).expanduser() if depth_dir is not None else root

    if split_file is not None:
        frames = parse_split_file(os.fspath(split_file).replace("{split}", split))
    elif split == "all":
        frames = list_all_frames(root)
        if not frames:
            raise DatasetNotFoundError(
                _DATASET,
                "stereo frames (<date>/<drive>/image_02|image_03/data/*.png)",
                [root],
                _HOW_TO_GET_RAW,
            )
    else:
        split_root = Path(split_dir).expanduser() if split_dir is not None else root / "splits"
        frames = parse_split_file(_default_split_file(split_root, split))

    cameras: dict[str, StereoCamera] = {}
    for date in sorted({frame.date for frame in frames}):
        calibration = root / date / "calib_cam_to_cam.txt"
        if not calibration.is_file():
            raise DatasetNotFoundError(
                _DATASET, f"calibration of {date}", [calibration], _HOW_TO_GET_RAW
            )
        cameras[date] = camera_from_calibration(calibration)

    records: dict[str, list] = {
        key: [] for key in ("left", "right", "depth", *StereoCamera._fields)
    }
    missing_images: list[Path] = []
    missing_depths: list[Path] = []
    for frame in frames:
        left = _existing_image(root, frame, "image_02")
        right = _existing_image(root, frame, "image_03")
        if left is None or right is None:
            camera = "image_02" if left is None else "image_03"
            missing_images.append(frame.image_path(root, camera))
            continue
        depth_path = find_ground_truth(depth_root, frame) if with_depth else None
        if with_depth and depth_path is None:
            missing_depths.append(_ground_truth_candidates(depth_root, frame)[0])
            if missing_depth == "skip":
                continue
        records["left"].append(os.fspath(left))
        records["right"].append(os.fspath(right))
        records["depth"].append(os.fspath(depth_path) if depth_path is not None else "")
        for key, value in cameras[frame.date]._asdict().items():
            records[key].append(value)

    if missing_images:
        _raise_missing("images", missing_images, len(frames), _HOW_TO_GET_RAW)
    if missing_depths and missing_depth == "error":
        _raise_missing("improved ground truth", missing_depths, len(frames), _HOW_TO_GET_DEPTH)
    if missing_depths:
        logging.warning(
            "KITTI %s: %d of %d frames have no improved ground truth under %s; %s.",
            split,
            len(missing_depths),
            len(frames),
            depth_root,
            "skipped" if missing_depth == "skip" else "their depth is all zeros (unknown)",
        )
    if not records["left"]:
        _raise_missing("improved ground truth", missing_depths, len(frames), _HOW_TO_GET_DEPTH)

    tensors = {
        "left": tf.constant(records["left"], tf.string),
        "right": tf.constant(records["right"], tf.string),
        "depth": tf.constant(records["depth"], tf.string),
        "focal": tf.constant(records["focal"], tf.float32),
        "baseline": tf.constant(records["baseline"], tf.float32),
        "doffs": tf.constant(records["doffs"], tf.float32),
    }
    zero_depth_when_absent = missing_depth == "zeros"
    return tf.data.Dataset.from_tensor_slices(tensors).map(
        lambda record: _decode_example(record, with_depth, zero_depth_when_absent),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
