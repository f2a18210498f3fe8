"""Tiny fake copies of the real datasets, in their exact on-disk layouts.

Each ``make_fake_*`` writes a few small files exactly where (and in exactly the
format) the official downloads put them, and returns what a correct reader must
produce from them, so the tests compare the readers against values that were
computed here, independently of the readers' code.
"""

from __future__ import annotations

import dataclasses
import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

# --------------------------------------------------------------------------- #
# Image writing helpers


def write_png(path: Path, array: np.ndarray) -> None:
    """Writes uint8 RGB/gray or uint16 gray arrays as PNG (16-bit kept exact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(array))


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    if array.dtype != np.uint16:
        array = array.astype(np.uint8)
    image = Image.fromarray(array)  # uint16 2-D arrays become 16-bit ("I;16") PNGs
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def random_rgb(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- #
# KITTI raw + improved ground truth

# Verbatim rectified projection matrices of the 2011_09_26 recordings.
KITTI_P_RECT_02 = [
    7.215377e02, 0.0, 6.095593e02, 4.485728e01,
    0.0, 7.215377e02, 1.728540e02, 2.163791e-01,
    0.0, 0.0, 1.0, 2.745884e-03,
]  # fmt: skip
KITTI_P_RECT_03 = [
    7.215377e02, 0.0, 6.095593e02, -3.395242e02,
    0.0, 7.215377e02, 1.728540e02, 2.199936e00,
    0.0, 0.0, 1.0, 2.729905e-03,
]  # fmt: skip


def kitti_calibration_text(p_rect_02: list[float], p_rect_03: list[float]) -> str:
    """A calib_cam_to_cam.txt with every key of the official file, in its order."""
    identity = "1.000000e+00 0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00 " + (
        "0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00"
    )
    lines = ["calib_time: 09-Jan-2012 13:57:47", "corner_dist: 9.950000e-02"]
    for camera in ("00", "01", "02", "03"):
        p_rect = {"02": p_rect_02, "03": p_rect_03}.get(camera, p_rect_02)
        lines += [
            f"S_{camera}: 1.392000e+03 5.120000e+02",
            f"K_{camera}: 9.842439e+02 0.000000e+00 6.900000e+02 0.000000e+00 9.808141e+02 "
            "2.331966e+02 0.000000e+00 0.000000e+00 1.000000e+00",
            f"D_{camera}: -3.728755e-01 2.037299e-01 2.219027e-03 1.383707e-03 -7.233722e-02",
            f"R_{camera}: {identity}",
            f"T_{camera}: 2.573699e-16 -1.059758e-16 1.614870e-16",
            f"S_rect_{camera}: 1.242000e+03 3.750000e+02",
            f"R_rect_{camera}: {identity}",
            f"P_rect_{camera}: " + " ".join(f"{v:e}" for v in p_rect),
        ]
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class FakeKittiFrame:
    date: str
    drive: str  # e.g. "2011_09_26_drive_0001_sync"
    frame: str  # 10 digits
    left: np.ndarray
    right: np.ndarray
    depth_png: np.ndarray | None  # uint16, None when the frame has no ground truth
    focal: float
    baseline: float
    doffs: float  # c_x(image_03) − c_x(image_02), pixels

    @property
    def depth(self) -> np.ndarray | None:
        return None if self.depth_png is None else self.depth_png.astype(np.float32) / 256.0


@dataclasses.dataclass
class FakeKitti:
    root: Path
    depth_root: Path
    frames: list[FakeKittiFrame]


def make_fake_kitti(
    root: Path,
    *,
    gt_layout: str = "inline",
    image_format: str = "png",
    seed: int = 0,
) -> FakeKitti:
    """KITTI raw drives with calibration and improved (annotated) depth maps.

    As irregular as the real set: two dates with different cameras and image
    sizes (the Eigen test set mixes four sizes), two drives on the first date,
    three frames per drive; frame 0 of each drive has no ground truth (like the
    first and last 5 frames of real drives). The second date's calibration
    has a principal-point offset between its two cameras (``doffs`` = 5.5 px,
    Middlebury-style; KITTI's own calibrations have none).

    Args:
      gt_layout: ``"inline"``: ground truth inside each raw drive folder;
        ``"official"``: as ``data_depth_annotated.zip`` unpacks, under
        ``<root>/depth_annotated/train|val/<drive>/proj_depth/groundtruth/image_02``.
      image_format: ``"png"`` (raw KITTI) or ``"jpg"`` (monodepth's converted copy).
    """
    rng = np.random.default_rng(seed)
    # Second camera: other focal/baseline so per-date calibration is exercised.
    p02_b = list(KITTI_P_RECT_02)
    p03_b = list(KITTI_P_RECT_03)
    p02_b[0] = p03_b[0] = 7.070912e02
    p02_b[3], p03_b[3] = 4.575831e01, -3.334597e02
    p02_b[2], p03_b[2] = 6.018873e02, 6.018873e02 + 5.5  # c_x(right) − c_x(left) = 5.5 px
    dates = {
        "2011_09_26": (KITTI_P_RECT_02, KITTI_P_RECT_03, (6, 20), ["0001", "0002"]),
        "2011_10_03": (p02_b, p03_b, (7, 22), ["0027"]),
    }
    depth_root = root / "depth_annotated" if gt_layout == "official" else root
    frames = []
    for date, (p02, p03, (height, width), drives) in dates.items():
        (root / date).mkdir(parents=True, exist_ok=True)
        (root / date / "calib_cam_to_cam.txt").write_text(kitti_calibration_text(p02, p03))
        focal = p02[0]
        baseline = abs(p02[3] / p02[0] - p03[3] / p03[0])
        doffs = p03[2] - p02[2]
        for drive_number in drives:
            drive = f"{date}_drive_{drive_number}_sync"
            for index in range(3):
                frame = f"{index:010d}"
                left, right = random_rgb(rng, height, width), random_rgb(rng, height, width)
                for camera, image in (("image_02", left), ("image_03", right)):
                    path = root / date / drive / camera / "data" / f"{frame}.{image_format}"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(image).save(path, quality=100)
                depth_png = None
                if index > 0:
                    depth_png = rng.integers(0, 80 * 256, size=(height, width)).astype(np.uint16)
                    depth_png[0, :3] = 0  # invalid pixels
                    if gt_layout == "official":
                        subset = "val" if drive_number == "0002" else "train"
                        drive_dir = depth_root / subset / drive
                    else:
                        drive_dir = root / date / drive
                    write_png(
                        drive_dir / "proj_depth" / "groundtruth" / "image_02" / f"{frame}.png",
                        depth_png,
                    )
                frames.append(
                    FakeKittiFrame(
                        date, drive, frame, left, right, depth_png, focal, baseline, doffs
                    )
                )
    return FakeKitti(root=root, depth_root=depth_root, frames=frames)


def write_kitti_split_monodepth(path: Path, frames: list[FakeKittiFrame], ext: str) -> None:
    """monodepth's list format: '<left image path> <right image path>' per line."""
    lines = [
        f"{f.date}/{f.drive}/image_02/data/{f.frame}.{ext} "
        f"{f.date}/{f.drive}/image_03/data/{f.frame}.{ext}"
        for f in frames
    ]
    path.write_text("\n".join(lines) + "\n")


def write_kitti_split_eigen(path: Path, frames: list[FakeKittiFrame]) -> None:
    """The Eigen test list format of monodepth2: '<date>/<drive> <frame> l' per line."""
    path.write_text("".join(f"{f.date}/{f.drive} {f.frame} l\n" for f in frames))


# --------------------------------------------------------------------------- #
# Cityscapes (the three manual-download archives of cityscapes/stereo_disparity)

CITYSCAPES_CITIES = {"train": ["aachen", "bochum"], "val": ["frankfurt"], "test": ["berlin"]}


@dataclasses.dataclass
class FakeCityscapesPair:
    image_id: str
    left: np.ndarray
    right: np.ndarray
    disparity_png: np.ndarray  # uint16


def make_fake_cityscapes_archives(
    manual_dir: Path, *, height: int = 10, width: int = 16, seed: int = 0
) -> dict[str, list[FakeCityscapesPair]]:
    """Writes leftImg8bit_/rightImg8bit_/disparity_trainvaltest.zip in Cityscapes' layout.

    Real frames are 1024×2048; these are ``height``×``width`` so TFDS prepares them fast.

    Returns:
      archive split folder name (train/val/test) -> pairs written.
    """
    rng = np.random.default_rng(seed)
    manual_dir.mkdir(parents=True, exist_ok=True)
    pairs: dict[str, list[FakeCityscapesPair]] = {}
    archives = {
        "leftImg8bit": zipfile.ZipFile(manual_dir / "leftImg8bit_trainvaltest.zip", "w"),
        "rightImg8bit": zipfile.ZipFile(manual_dir / "rightImg8bit_trainvaltest.zip", "w"),
        "disparity": zipfile.ZipFile(manual_dir / "disparity_trainvaltest.zip", "w"),
    }
    for archive in archives.values():
        archive.writestr("README", "The Cityscapes Dataset (fake copy for tests)\n")
        archive.writestr("license.txt", "fake\n")
    for split, cities in CITYSCAPES_CITIES.items():
        pairs[split] = []
        for city_index, city in enumerate(cities):
            for frame in (19, 20 + city_index):
                image_id = f"{city}_{city_index:06d}_{frame:06d}"
                disparity = rng.integers(0, 60000, size=(height, width)).astype(np.uint16)
                # As in the real maps: invalid (0) regions, e.g. where the
                # stereo matcher failed along the left border, and zero disparity (1).
                disparity[:, : width // 8] = 0
                disparity[0, 0], disparity[0, 1] = 0, 1  # invalid, zero disparity
                pair = FakeCityscapesPair(
                    image_id, random_rgb(rng, height, width), random_rgb(rng, height, width),
                    disparity,
                )  # fmt: skip
                contents = {
                    "leftImg8bit": (pair.left, "leftImg8bit"),
                    "rightImg8bit": (pair.right, "rightImg8bit"),
                    "disparity": (pair.disparity_png, "disparity"),
                }
                for root, (array, suffix) in contents.items():
                    member = f"{root}/{split}/{city}/{image_id}_{suffix}.png"
                    archives[root].writestr(member, png_bytes(array))
                pairs[split].append(pair)
    for archive in archives.values():
        archive.close()
    return pairs


# --------------------------------------------------------------------------- #
# PASCAL Context, 59 classes (mmsegmentation's converted layout)


@dataclasses.dataclass
class FakePascalImage:
    image_id: str
    image: np.ndarray  # the JPEG file decoded by PIL
    label: np.ndarray  # uint8, 0 background, 1..59 classes


def make_fake_pascal_context(root: Path, *, seed: int = 0) -> dict[str, list[FakePascalImage]]:
    """VOCdevkit/VOC2010/{JPEGImages,SegmentationClassContext,ImageSets/SegmentationContext}."""
    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2010"
    ids = {
        "train": ["2008_000002", "2008_000003", "2009_000011"],
        "val": ["2008_000008", "2010_000010"],
    }
    # Every image has its own size, landscape and portrait, as in PASCAL VOC
    # (500×375, 375×500, 500×333, ...).
    sizes = [(9, 12), (8, 10), (11, 7), (6, 6), (12, 9)]
    images: dict[str, list[FakePascalImage]] = {}
    position = 0
    for split, split_ids in ids.items():
        images[split] = []
        for image_id in split_ids:
            height, width = sizes[position]
            position += 1
            image = random_rgb(rng, height, width)
            label = rng.integers(0, 60, size=(height, width)).astype(np.uint8)
            label[0, 0], label[0, 1] = 0, 59  # both ends of the label range
            (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
            jpeg_path = voc / "JPEGImages" / f"{image_id}.jpg"
            Image.fromarray(image).save(jpeg_path, quality=95)
            # JPEG is lossy: what a reader must return is the decoded file (here by PIL).
            image = np.asarray(Image.open(jpeg_path).convert("RGB"))
            write_png(voc / "SegmentationClassContext" / f"{image_id}.png", label)
            images[split].append(FakePascalImage(image_id, image, label))
        list_dir = voc / "ImageSets" / "SegmentationContext"
        list_dir.mkdir(parents=True, exist_ok=True)
        (list_dir / f"{split}.txt").write_text("".join(f"{i}\n" for i in split_ids))
    return images


# --------------------------------------------------------------------------- #
# NYUv2, the preprocessed multi-task layout of MTAN / LibMTL


@dataclasses.dataclass
class FakeNyuExample:
    image: np.ndarray  # float32 [H, W, 3] in [0, 1]
    label: np.ndarray  # float32 [H, W], -1 ignore
    depth: np.ndarray  # float32 [H, W, 1]
    normal: np.ndarray  # float32 [H, W, 3]


def make_fake_nyuv2(
    root: Path, *, counts: dict[str, int] | None = None, height: int = 6, width: int = 8,
    seed: int = 0,
) -> dict[str, list[FakeNyuExample]]:  # fmt: skip
    """<root>/{train,val}/{image,label,depth,normal}/<i>.npy (real: 288×384, 795/654).

    With the real set's irregularities: file names are not zero-padded (``10.npy``
    sorts before ``2.npy`` as text), labels are floats with −1 for unlabelled
    pixels, and depth holes (0) have zero normals.
    """
    rng = np.random.default_rng(seed)
    counts = counts or {"train": 3, "val": 2}
    examples: dict[str, list[FakeNyuExample]] = {}
    for split, count in counts.items():
        examples[split] = []
        for index in range(count):
            image = rng.random((height, width, 3)).astype(np.float32)
            label = rng.integers(-1, 13, size=(height, width)).astype(np.float32)
            label[-2:, :2] = -1  # unlabelled regions
            depth = (rng.random((height, width, 1)) * 10).astype(np.float32)
            # Kinect holes: no depth, hence no normal either (both stored as 0).
            depth[0, 0, 0] = 0.0
            depth[1:3, -2:, 0] = 0.0
            normal = rng.normal(size=(height, width, 3)).astype(np.float32)
            normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
            normal[0, 0] = 0.0  # invalid
            normal[1:3, -2:] = 0.0
            example = FakeNyuExample(image, label, depth, normal)
            for folder, array in (
                ("image", image), ("label", label), ("depth", depth), ("normal", normal)
            ):  # fmt: skip
                (root / split / folder).mkdir(parents=True, exist_ok=True)
                np.save(root / split / folder / f"{index}.npy", array)
            examples[split].append(example)
    return examples
