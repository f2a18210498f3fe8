"""Readers of the real datasets, run on tiny fakes in the exact on-disk layouts."""

from __future__ import annotations

import shutil
import time
import zipfile
from pathlib import Path

import fake_datasets as fake
import numpy as np
import pytest
import tensorflow as tf

from experiments.data import cityscapes, kitti, nyuv2, pascal_context
from experiments.data.errors import DatasetFormatError, DatasetNotFoundError


def as_list(dataset: tf.data.Dataset) -> list[dict[str, np.ndarray]]:
    return list(dataset.as_numpy_iterator())


# --------------------------------------------------------------------------- #
# KITTI


@pytest.fixture(scope="module")
def kitti_inline(tmp_path_factory: pytest.TempPathFactory) -> fake.FakeKitti:
    return fake.make_fake_kitti(tmp_path_factory.mktemp("kitti_inline"), gt_layout="inline")


@pytest.fixture(scope="module")
def kitti_official(tmp_path_factory: pytest.TempPathFactory) -> fake.FakeKitti:
    return fake.make_fake_kitti(tmp_path_factory.mktemp("kitti_official"), gt_layout="official")


def check_kitti_examples(examples: list[dict], frames: list[fake.FakeKittiFrame]) -> None:
    assert len(examples) == len(frames)
    for example, frame in zip(examples, frames, strict=True):
        np.testing.assert_array_equal(example["left"], frame.left)
        np.testing.assert_array_equal(example["right"], frame.right)
        assert example["left"].dtype == np.uint8
        np.testing.assert_allclose(example["focal"], frame.focal, rtol=1e-6)
        np.testing.assert_allclose(example["baseline"], frame.baseline, rtol=1e-6)
        # float32 of a few pixels: exact to ~1e-6 px.
        np.testing.assert_allclose(example["doffs"], frame.doffs, atol=1e-5)
        if frame.depth is None:
            np.testing.assert_array_equal(example["depth"], 0.0)
        else:
            assert example["depth"].dtype == np.float32
            np.testing.assert_array_equal(example["depth"], frame.depth)


def test_kitti_calibration_gives_focal_and_baseline(kitti_inline: fake.FakeKitti) -> None:
    focal, baseline, doffs = kitti.camera_from_calibration(
        kitti_inline.root / "2011_09_26" / "calib_cam_to_cam.txt"
    )
    assert focal == pytest.approx(721.5377)
    # 44.85728/721.5377 + 339.5242/721.5377: the well-known ~0.54 m KITTI baseline.
    assert baseline == pytest.approx((44.85728 + 339.5242) / 721.5377)
    assert 0.53 < baseline < 0.54
    assert doffs == 0.0  # KITTI rectifies both cameras to one principal point
    # The fake's second date: the right camera's principal point is 5.5 px further right.
    offset = kitti.camera_from_calibration(
        kitti_inline.root / "2011_10_03" / "calib_cam_to_cam.txt"
    )
    assert offset.doffs == pytest.approx(5.5)


def test_kitti_calibration_rejects_unequal_focal_lengths(tmp_path: Path) -> None:
    p03 = list(fake.KITTI_P_RECT_03)
    p03[0] *= 1.01
    path = tmp_path / "calib_cam_to_cam.txt"
    path.write_text(fake.kitti_calibration_text(fake.KITTI_P_RECT_02, p03))
    with pytest.raises(DatasetFormatError, match="different focal lengths"):
        kitti.camera_from_calibration(path)


def test_kitti_split_lines_of_both_formats() -> None:
    monodepth = kitti.parse_split_line(
        "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.jpg "
        "2011_09_26/2011_09_26_drive_0002_sync/image_03/data/0000000069.jpg"
    )
    eigen = kitti.parse_split_line("2011_09_26/2011_09_26_drive_0002_sync 69 l")
    assert monodepth == kitti.KittiFrame(
        "2011_09_26", "2011_09_26_drive_0002_sync", "0000000069", ".jpg"
    )
    assert (eigen.date, eigen.drive, eigen.frame, eigen.extension) == (
        monodepth.date, monodepth.drive, monodepth.frame, ".png",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("2011_09_26/2011_09_26_drive_0002_sync 69", "expected"),
        ("2011_09_26/2011_09_28_drive_0002_sync 69 l", "not a KITTI raw drive"),
        (
            "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png "
            "2011_09_26/2011_09_26_drive_0002_sync/image_03/data/0000000070.png",
            "different frames",
        ),
        ("2011_09_26/2011_09_26_drive_0002_sync/image_03/data/0000000069.png", "image_02"),
    ],
)
def test_kitti_bad_split_lines_are_named(line: str, complaint: str) -> None:
    with pytest.raises(DatasetFormatError, match=complaint):
        kitti.parse_split_line(line, where="eigen_test_files.txt:7")


def test_kitti_monodepth_list_with_inline_ground_truth(
    kitti_inline: fake.FakeKitti, tmp_path: Path
) -> None:
    split_file = tmp_path / "test_files.txt"
    # monodepth's lists name .jpg files; the raw drives hold .png: the reader finds them.
    fake.write_kitti_split_monodepth(split_file, kitti_inline.frames, ext="jpg")
    examples = as_list(kitti.load("test", kitti_inline.root, split_file=split_file))
    with_gt = [f for f in kitti_inline.frames if f.depth is not None]
    check_kitti_examples(examples, with_gt)
    # Native, per-date image sizes are kept.
    assert {e["left"].shape for e in examples} == {(6, 20, 3), (7, 22, 3)}


def test_kitti_eigen_list_with_official_ground_truth_layout(
    kitti_official: fake.FakeKitti, tmp_path: Path
) -> None:
    split_file = tmp_path / "eigen.txt"
    fake.write_kitti_split_eigen(split_file, kitti_official.frames)
    dataset = kitti.load(
        "test",
        kitti_official.root,
        split_file=split_file,
        depth_dir=kitti_official.depth_root,
        missing_depth="zeros",
    )
    check_kitti_examples(as_list(dataset), kitti_official.frames)


def test_kitti_missing_ground_truth_policies(kitti_inline: fake.FakeKitti, tmp_path: Path) -> None:
    split_file = tmp_path / "eigen.txt"
    fake.write_kitti_split_eigen(split_file, kitti_inline.frames[:2])  # frame 0 has no GT
    with pytest.raises(DatasetNotFoundError, match="improved ground truth") as error:
        kitti.load("test", kitti_inline.root, split_file=split_file, missing_depth="error")
    assert "0000000000.png" in str(error.value)
    assert "data_depth_annotated.zip" in str(error.value)
    # Training needs no ground truth: every listed frame, no "depth" feature.
    train = as_list(kitti.load("train", kitti_inline.root, split_file=split_file))
    assert len(train) == 2 and "depth" not in train[0]
    with pytest.raises(ValueError, match="missing_depth"):
        kitti.load("test", kitti_inline.root, split_file=split_file, missing_depth="drop")


def test_kitti_all_frames_and_default_split_file(kitti_inline: fake.FakeKitti) -> None:
    every = kitti.list_all_frames(kitti_inline.root)
    assert len(every) == len(kitti_inline.frames) == 9
    dataset = kitti.load("all", kitti_inline.root, with_depth=False)
    assert len(as_list(dataset)) == 9
    with pytest.raises(DatasetNotFoundError, match="split file") as error:
        kitti.load("test", kitti_inline.root)
    assert str(kitti_inline.root / "splits" / "eigen_test_files.txt") in str(error.value)


def test_kitti_split_file_per_split(kitti_inline: fake.FakeKitti, tmp_path: Path) -> None:
    train, test = kitti_inline.frames[:4], kitti_inline.frames[4:]
    fake.write_kitti_split_monodepth(tmp_path / "eigen_train_files.txt", train, ext="png")
    fake.write_kitti_split_eigen(tmp_path / "eigen_test_files.txt", test)
    template = tmp_path / "eigen_{split}_files.txt"
    # One setting for both splits: a {split} template, or the folder of the lists.
    for options in ({"split_file": template}, {"split_dir": tmp_path}):
        check_kitti_examples(
            as_list(kitti.load("test", kitti_inline.root, **options)),
            [f for f in test if f.depth is not None],
        )
        training = as_list(kitti.load("train", kitti_inline.root, **options))
        assert len(training) == len(train) and "depth" not in training[0]


def test_kitti_missing_files_are_named(tmp_path: Path) -> None:
    data = fake.make_fake_kitti(tmp_path / "kitti")
    split_file = tmp_path / "split.txt"
    fake.write_kitti_split_eigen(split_file, data.frames[1:3])
    missing_image = data.frames[2]
    image = missing_image.date, missing_image.drive, "image_03", "data"
    (data.root.joinpath(*image) / f"{missing_image.frame}.png").unlink()
    with pytest.raises(DatasetNotFoundError, match="images") as error:
        kitti.load("test", data.root, split_file=split_file)
    assert f"image_03/data/{missing_image.frame}.png" in str(error.value)
    (data.root / "2011_09_26" / "calib_cam_to_cam.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="calibration of 2011_09_26") as error:
        kitti.load("test", data.root, split_file=split_file)
    assert "calib_cam_to_cam.txt" in str(error.value) and "raw_data" in str(error.value)
    with pytest.raises(DatasetNotFoundError, match="data directory"):
        kitti.load("test", tmp_path / "nowhere", split_file=split_file)


# --------------------------------------------------------------------------- #
# Cityscapes (TFDS cityscapes/stereo_disparity)


def test_cityscapes_depth_from_disparity_encoding() -> None:
    png = np.array([0, 1, 257, 513, 65535], np.uint16)
    depth = cityscapes.depth_from_disparity_png(png, focal=2262.52, baseline=0.209313).numpy()
    disparity_px = np.array([1.0, 2.0, 65534 / 256])
    np.testing.assert_allclose(depth[:2], 0.0)
    np.testing.assert_allclose(depth[2:], 0.209313 * 2262.52 / disparity_px, rtol=1e-6)


def test_cityscapes_missing_archives_are_named(tmp_path: Path) -> None:
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    (manual / "leftImg8bit_trainvaltest.zip").write_bytes(b"")
    with pytest.raises(DatasetNotFoundError, match=r"disparity_trainvaltest\.zip") as error:
        cityscapes.load("train", tmp_path)
    message = str(error.value)
    assert "rightImg8bit_trainvaltest.zip" in message
    assert str(manual) in message and "cityscapes-dataset.com" in message
    with pytest.raises(ValueError, match="unknown split"):
        cityscapes.load("training", tmp_path)


def test_cityscapes_archive_without_a_disparity_is_rejected(tmp_path: Path) -> None:
    fake.make_fake_cityscapes_archives(tmp_path, height=2, width=4)
    # Rewrite the disparity archive without one of the validation frames.
    path = tmp_path / "disparity_trainvaltest.zip"
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    dropped = next(name for name in members if name.startswith("disparity/val/"))
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            if name != dropped:
                archive.writestr(name, content)
    with pytest.raises(DatasetFormatError, match="no match") as error:
        cityscapes.validate_archives(tmp_path)
    assert dropped in str(error.value)


@pytest.fixture(scope="module")
def cityscapes_prepared(tmp_path_factory: pytest.TempPathFactory):
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    data_dir = tmp_path_factory.mktemp("cityscapes")
    manual_dir = tmp_path_factory.mktemp("cityscapes_archives")
    pairs = fake.make_fake_cityscapes_archives(manual_dir, height=10, width=16)
    train = as_list(cityscapes.load("train", data_dir, manual_dir=manual_dir))
    return data_dir, manual_dir, pairs, train


@pytest.mark.slow
def test_cityscapes_prepared_from_fake_archives(cityscapes_prepared) -> None:
    data_dir, manual_dir, pairs, train = cityscapes_prepared
    assert len(train) == len(pairs["train"]) == 4
    focal = 2262.52 * 16 / 2048
    for example in train:
        # TFDS stores examples in its own (fixed) order: match them by image.
        pair = next(p for p in pairs["train"] if np.array_equal(p.left[:8], example["left"]))
        # Bonnet crop: the top 4/5 of the 10 rows are kept.
        assert example["left"].shape == (8, 16, 3) and example["depth"].shape == (8, 16)
        np.testing.assert_array_equal(example["right"], pair.right[:8])
        raw = pair.disparity_png[:8].astype(np.float64)
        depth = np.where(raw > 1, 0.209313 * focal / np.maximum(raw - 1, 1) * 256, 0.0)
        np.testing.assert_allclose(example["depth"], depth, rtol=1e-5)
        assert example["depth"][0, 0] == 0 and example["depth"][0, 1] == 0
        np.testing.assert_allclose(example["focal"], focal, rtol=1e-6)
        np.testing.assert_allclose(example["baseline"], 0.209313, rtol=1e-6)
    # Prepared once: the archives are no longer needed, other splits read the copy.
    shutil.rmtree(manual_dir)
    validation = as_list(cityscapes.load("val", data_dir, crop_bonnet=False))
    assert len(validation) == 2 and validation[0]["left"].shape == (10, 16, 3)
    assert len(as_list(cityscapes.load("test", data_dir))) == 2


# --------------------------------------------------------------------------- #
# PASCAL Context


@pytest.fixture(scope="module")
def pascal(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("pascal_context")
    return root, fake.make_fake_pascal_context(root)


def test_pascal_context_class_names() -> None:
    names = pascal_context.CLASS_NAMES
    assert len(names) == len(set(names)) == pascal_context.NUM_CLASSES == 59
    assert names[0] == "aeroplane" and names[-1] == "wood" and "pottedplant" in names


def test_pascal_context_labels_ignore_background(pascal) -> None:
    root, images = pascal
    examples = as_list(pascal_context.load("train", root))
    assert len(examples) == len(images["train"]) == 3
    for example, image in zip(examples, images["train"], strict=True):
        assert example["left"].shape == image.image.shape and example["left"].dtype == np.uint8
        # TF and PIL upsample JPEG chroma differently: a few levels apart
        # (two unrelated noise images differ by ~85 on average).
        difference = np.abs(example["left"].astype(int) - image.image)
        assert difference.mean() < 3 and difference.max() <= 16
        expected = np.where(image.label == 0, 255, image.label.astype(np.int32) - 1)
        assert example["semantic"].dtype == np.int32
        np.testing.assert_array_equal(example["semantic"], expected)
        assert example["semantic"][0, 0] == 255 and example["semantic"][0, 1] == 58
    kept = as_list(pascal_context.load("validation", root, background="class"))
    np.testing.assert_array_equal(kept[0]["semantic"], images["val"][0].label)


def test_pascal_context_errors(tmp_path: Path) -> None:
    images = fake.make_fake_pascal_context(tmp_path)
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    wrong = images["val"][0].label.copy()
    wrong[1, 1] = 200  # a 459-class label map, say
    fake.write_png(voc / "SegmentationClassContext" / f"{images['val'][0].image_id}.png", wrong)
    with pytest.raises(tf.errors.InvalidArgumentError, match="label value above 59"):
        as_list(pascal_context.load("val", tmp_path))
    missing = voc / "SegmentationClassContext" / f"{images['train'][1].image_id}.png"
    missing.unlink()
    with pytest.raises(DatasetNotFoundError, match="label maps") as error:
        pascal_context.load("train", tmp_path)
    assert str(missing) in str(error.value) and "mmsegmentation" in str(error.value)
    (voc / "ImageSets" / "SegmentationContext" / "train.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="train list"):
        pascal_context.load("train", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="VOC2010"):
        pascal_context.load("train", tmp_path / "elsewhere")


# --------------------------------------------------------------------------- #
# NYUv2


def test_nyuv2_maps_to_contract(tmp_path: Path) -> None:
    examples = fake.make_fake_nyuv2(tmp_path, counts={"train": 3, "val": 2})
    loaded = as_list(nyuv2.load("train", tmp_path))
    assert len(loaded) == 3
    for example, source in zip(loaded, examples["train"], strict=True):
        np.testing.assert_array_equal(
            example["left"], np.clip(np.rint(source.image * 255), 0, 255).astype(np.uint8)
        )
        np.testing.assert_array_equal(
            example["semantic"], np.where(source.label < 0, 255, source.label).astype(np.int32)
        )
        np.testing.assert_array_equal(example["depth"], source.depth[..., 0])
        np.testing.assert_allclose(example["normals"], source.normal, atol=1e-6)
        np.testing.assert_array_equal(example["normals"][0, 0], 0.0)
        assert {k: v.dtype for k, v in example.items()} == {
            "left": np.uint8, "semantic": np.int32, "depth": np.float32, "normals": np.float32,
        }  # fmt: skip
    assert len(as_list(nyuv2.load("val", tmp_path))) == 2


def test_nyuv2_files_are_read_in_numeric_order(tmp_path: Path) -> None:
    # The release names files 0.npy ... 794.npy, not zero-padded: as text, 10.npy
    # would come before 2.npy and pair examples with the wrong index.
    examples = fake.make_fake_nyuv2(tmp_path, counts={"val": 12}, height=2, width=3)
    loaded = as_list(nyuv2.load("val", tmp_path))
    for example, source in zip(loaded, examples["val"], strict=True):
        np.testing.assert_array_equal(example["depth"], source.depth[..., 0])
    # Depth holes and void labels reach the contract as its "unknown" values.
    assert np.all(loaded[0]["depth"][1:, -2:] == 0) and np.all(loaded[0]["normals"][1:, -2:] == 0)
    assert np.all(loaded[0]["semantic"][-2:, :2] == 255)


def test_nyuv2_reads_one_file_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # tf.data maps the reader on several threads; np.load's header parsing is not
    # thread-safe on CPython 3.11 (python/cpython#106905: a rare SystemError in CI).
    # A slow np.load makes any overlap between threads visible.
    fake.make_fake_nyuv2(tmp_path, counts={"val": 12}, height=2, width=3)
    active, most_active = [0], [0]
    real_load = np.load

    def slow_load(*args, **kwargs):
        active[0] += 1
        most_active[0] = max(most_active[0], active[0])
        time.sleep(0.005)
        try:
            return real_load(*args, **kwargs)
        finally:
            active[0] -= 1

    monkeypatch.setattr(nyuv2.np, "load", slow_load)
    dataset = nyuv2.load("val", tmp_path)
    options = tf.data.Options()
    options.threading.private_threadpool_size = 4
    assert len(as_list(dataset.with_options(options))) == 12
    assert most_active[0] == 1


def test_nyuv2_normals_are_renormalized() -> None:
    normal = np.zeros((1, 2, 3), np.float32)
    normal[0, 0] = (0.0, 0.0, 0.9)  # shortened by 8-bit quantisation
    _, _, _, normals = nyuv2.to_contract(
        np.zeros((1, 2, 3)), np.zeros((1, 2)), np.zeros((1, 2, 1)), normal
    )
    np.testing.assert_allclose(normals[0], [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    with pytest.raises(DatasetFormatError, match="shapes"):
        nyuv2.to_contract(np.zeros((1, 2, 3)), np.zeros((2, 2)), np.zeros((1, 2, 1)), normal)


def test_nyuv2_errors(tmp_path: Path) -> None:
    fake.make_fake_nyuv2(tmp_path, counts={"train": 2})
    (tmp_path / "train" / "depth" / "1.npy").unlink()
    with pytest.raises(DatasetNotFoundError, match="1 train file") as error:
        nyuv2.load("train", tmp_path)
    assert str(tmp_path / "train" / "depth" / "1.npy") in str(error.value)
    with pytest.raises(DatasetNotFoundError, match="image/ folder of val") as error:
        nyuv2.load("val", tmp_path)
    assert "mtan" in str(error.value)
    label = np.load(tmp_path / "train" / "label" / "0.npy")
    label[0, 0] = 13
    np.save(tmp_path / "train" / "label" / "0.npy", label)
    np.save(tmp_path / "train" / "depth" / "1.npy", np.zeros((6, 8, 1), np.float32))
    with pytest.raises(DatasetFormatError, match="13-class"):
        nyuv2.load("train", tmp_path)


# --------------------------------------------------------------------------- #
# Registry


def test_registry_reaches_the_real_readers(tmp_path: Path, pascal) -> None:
    from experiments.data import get_dataset

    fake.make_fake_nyuv2(tmp_path / "nyu", counts={"val": 2})
    nyu = as_list(get_dataset("nyuv2", "validation", tmp_path / "nyu"))
    assert len(nyu) == 2 and set(nyu[0]) == {"left", "semantic", "depth", "normals"}
    pascal_root, _ = pascal
    voc = as_list(get_dataset("pascal_context", "validation", pascal_root, background="class"))
    assert len(voc) == 2 and set(voc[0]) == {"left", "semantic"}
    with pytest.raises(ValueError, match="data_dir is required"):
        get_dataset("kitti", "test", None)
