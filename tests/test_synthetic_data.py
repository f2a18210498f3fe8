"""The offline synthetic stereo dataset: determinism, geometry, labels, TFDS builder, registry."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import tensorflow as tf

import experiments.data
from experiments.data import synthetic

HEIGHT, WIDTH = 64, 128


@functools.cache
def example(split: str, index: int, height: int = HEIGHT, width: int = WIDTH) -> dict:
    return synthetic.generate_example(0, split, index, height, width)


def disparity_px(ex: dict, depth: np.ndarray) -> np.ndarray:
    return np.where(depth > 0, ex["focal"] * ex["baseline"] / np.maximum(depth, 1e-6), 0.0)


def warp_right_to_left(right: np.ndarray, disparity: np.ndarray):
    """Samples ``right`` at ``x - disparity`` along each row (linear interpolation)."""
    H, W = disparity.shape
    x = np.arange(W)[None, :] - disparity
    x0 = np.floor(x).astype(int)
    frac = (x - x0)[..., None]
    inside = (x0 >= 0) & (x0 + 1 < W)
    x0, x1 = np.clip(x0, 0, W - 1), np.clip(x0 + 1, 0, W - 1)
    rows = np.arange(H)[:, None]
    warped = (1 - frac) * right[rows, x0] + frac * right[rows, x1]
    return warped, inside, rows, x0, x1


def photometric_errors(ex: dict) -> tuple[float, float, float]:
    """Warp error on visible surface pixels, and the same with zero disparity."""
    left, right = ex["left"] / 255.0, ex["right"] / 255.0
    depth = ex["depth"]
    warped, inside, rows, x0, x1 = warp_right_to_left(right, disparity_px(ex, depth))
    # Not occluded in the right view: the right view sees the same depth there.
    right_depth = ex["depth_right"]
    visible = (
        inside
        & (depth > 0)
        & (np.abs(right_depth[rows, x0] - depth) < 0.03 * depth)
        & (np.abs(right_depth[rows, x1] - depth) < 0.03 * depth)
    )
    error = np.abs(warped - left).mean(-1)[visible].mean()
    unwarped = np.abs(right - left).mean(-1)[visible].mean()
    return float(error), float(unwarped), float(visible.mean())


def test_same_seed_same_bytes_and_order_independence():
    a = synthetic.generate_example(0, "train", 3, HEIGHT, WIDTH)
    synthetic.generate_example(0, "train", 4, HEIGHT, WIDTH)
    b = synthetic.generate_example(0, "train", 3, HEIGHT, WIDTH)
    assert a.keys() == b.keys()
    for key in a:
        assert np.asarray(a[key]).tobytes() == np.asarray(b[key]).tobytes(), key
    for other in (
        synthetic.generate_example(1, "train", 3, HEIGHT, WIDTH),
        synthetic.generate_example(0, "test", 3, HEIGHT, WIDTH),
        synthetic.generate_example(0, "train", 5, HEIGHT, WIDTH),
    ):
        assert not np.array_equal(a["left"], other["left"])


def test_contract_dtypes_and_shapes():
    ex = example("train", 0)
    assert ex["left"].dtype == ex["right"].dtype == np.uint8
    assert ex["left"].shape == ex["right"].shape == (HEIGHT, WIDTH, 3)
    for suffix in ("", "_right"):
        assert ex["depth" + suffix].dtype == np.float32
        assert ex["depth" + suffix].shape == (HEIGHT, WIDTH)
        assert ex["semantic" + suffix].dtype == np.int32
        assert ex["normals" + suffix].dtype == np.float32
        assert ex["normals" + suffix].shape == (HEIGHT, WIDTH, 3)
    assert ex["focal"].dtype == ex["baseline"].dtype == np.float32
    assert ex["focal"] == pytest.approx(synthetic.FOCAL_PER_WIDTH * WIDTH)
    assert ex["baseline"] == pytest.approx(synthetic.BASELINE_M)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_right_view_warped_by_true_disparity_reproduces_left(index):
    ex = example("test", index, 128, 256)
    error, unwarped, visible = photometric_errors(ex)
    assert visible > 0.5
    # Bilinear resampling of a textured image leaves a small error; without the
    # disparity (or with a wrong one) the views disagree several times more.
    assert error < 0.03
    assert error < 0.4 * unwarped


def test_wrong_disparity_breaks_the_match():
    ex = dict(example("test", 0, 128, 256))
    error, _, _ = photometric_errors(ex)
    ex["baseline"] = ex["baseline"] * np.float32(1.5)
    wrong, _, _ = photometric_errors(ex)
    assert wrong > 2 * error


def test_depth_is_optical_axis_distance_on_the_ground():
    # A ground pixel in row v sees the plane Y = 0 at z = h·f / (v + 0.5 - H/2).
    ex = example("train", 1)
    camera = synthetic.camera_for(HEIGHT, WIDTH)
    rows = np.arange(HEIGHT)[:, None] * np.ones((1, WIDTH))
    ground = np.isin(ex["semantic"], (synthetic.ROAD, synthetic.SIDEWALK))
    assert ground.sum() > 100
    expected = camera.camera_height * camera.focal / (rows + 0.5 - HEIGHT / 2)
    np.testing.assert_allclose(ex["depth"][ground], expected[ground], rtol=1e-5)


def test_disparities_span_kitti_like_range():
    fractions = []
    for index in range(12):
        ex = example("validation", index, 32, 64)
        depth = ex["depth"]
        fractions.append(disparity_px(ex, depth)[depth > 0] / 64)
    fractions = np.concatenate(fractions)
    assert fractions.min() > 0.003 and fractions.max() < 0.35
    assert np.quantile(fractions, 0.01) < 0.01
    assert fractions.max() > 0.1


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_labels_and_normals(index):
    ex = example("train", index)
    for suffix in ("", "_right"):
        depth, semantic = ex["depth" + suffix], ex["semantic" + suffix]
        normals = ex["normals" + suffix]
        sky = semantic == synthetic.SKY
        # Sky, and only sky, has no depth and no normal.
        np.testing.assert_array_equal(sky, depth == 0)
        assert np.all(normals[sky] == 0)
        assert sky.mean() < 0.6
        assert set(np.unique(semantic)) <= set(range(synthetic.NUM_CLASSES))
        assert synthetic.ROAD in semantic
        np.testing.assert_allclose(np.linalg.norm(normals[~sky], axis=-1), 1.0, atol=1e-5)
        # The road's normal points up: -y in camera coordinates (y down).
        road = semantic == synthetic.ROAD
        np.testing.assert_allclose(normals[road], np.tile([0.0, -1.0, 0.0], (road.sum(), 1)))
        # Every visible surface faces the camera: n · ray < 0.
        camera = synthetic.camera_for(HEIGHT, WIDTH)
        u = (np.arange(WIDTH) + 0.5 - WIDTH / 2) / camera.focal
        v = (np.arange(HEIGHT) + 0.5 - HEIGHT / 2) / camera.focal
        ray = np.stack(np.broadcast_arrays(u[None, :], v[:, None], 1.0), axis=-1)
        assert np.all(np.sum(normals * ray, axis=-1)[~sky] < 1e-6)
    # Sky is above the horizon: the ground is never seen above it.
    ground = np.isin(ex["semantic"], (synthetic.ROAD, synthetic.SIDEWALK))
    assert not ground[: HEIGHT // 2].any()


def test_scenes_show_every_class():
    seen = np.zeros(synthetic.NUM_CLASSES, int)
    for index in range(8):
        seen += np.bincount(example("train", index)["semantic"].ravel(), minlength=len(seen))
    assert np.all(seen > 0), dict(zip(synthetic.CLASS_NAMES, seen, strict=True))


def test_images_use_the_colour_range():
    ex = example("train", 2)
    assert ex["left"].std() > 20
    assert ex["left"].min() < 60 and ex["left"].max() > 180


def test_preview_strip():
    strip = synthetic.preview(example("train", 0))
    assert strip.shape == (HEIGHT, 5 * WIDTH, 3) and strip.dtype == np.uint8
    np.testing.assert_array_equal(strip[:, :WIDTH], example("train", 0)["left"])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="split"):
        synthetic.generate_example(0, "dev", 0, 8, 16)
    with pytest.raises(ValueError, match="height"):
        synthetic.load("train", "/nonexistent", height=63)
    with pytest.raises(ValueError, match="num_train"):
        synthetic.load("train", "/nonexistent", num_train=0)
    with pytest.raises(ValueError, match="split"):
        synthetic.load("dev", "/nonexistent")


# 16×32 stores raw image bytes, 66×128 PNG-encoded images.
@pytest.mark.parametrize("height, width, num_train", [(16, 32, 5), (66, 128, 2)])
def test_tfds_builder_builds_once_and_reads_back(tmp_path, height, width, num_train):
    sizes = dict(
        height=height, width=width, num_train=num_train, num_validation=2, num_test=3, seed=7
    )
    train = experiments.data.get_dataset("synthetic", "train", str(tmp_path), **sizes)
    examples = list(train.as_numpy_iterator())
    assert [int(e["index"]) for e in examples] == list(range(num_train))
    assert len(list(experiments.data.get_dataset("synthetic", "val", tmp_path, **sizes))) == 2
    assert len(list(experiments.data.get_dataset("synthetic", "test", tmp_path, **sizes))) == 3
    spec = train.element_spec
    assert spec["semantic"].dtype == tf.int32 and spec["normals"].dtype == tf.float32
    for stored in examples[:2]:
        fresh = synthetic.generate_example(7, "train", int(stored["index"]), height, width)
        for key in ("left", "right", "depth", "semantic", "depth_right", "semantic_right"):
            np.testing.assert_array_equal(stored[key], fresh[key], err_msg=key)
        np.testing.assert_allclose(stored["normals"], fresh["normals"], atol=1e-3)
        assert stored["focal"] == fresh["focal"] and stored["baseline"] == fresh["baseline"]
    prepared = list(tmp_path.glob("synthetic_stereo/*/1.0.0/dataset_info.json"))
    assert len(prepared) == 1
    # A second call reads the prepared copy instead of rendering again.
    stamp = prepared[0].stat().st_mtime_ns
    experiments.data.get_dataset("synthetic", "train", tmp_path, **sizes)
    assert prepared[0].stat().st_mtime_ns == stamp


def test_registry_names_and_errors():
    names = experiments.data.available_datasets()
    assert {"synthetic", "kitti", "cityscapes", "pascal_context", "nyuv2"} <= set(names)
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        experiments.data.get_dataset("mnist", "train", None)
    calls = []

    def fake_loader(split, data_dir, **kwargs):
        calls.append((split, data_dir, kwargs))
        return tf.data.Dataset.range(3)

    experiments.data.register_dataset("fake_for_test", fake_loader)
    try:
        with pytest.raises(ValueError, match="already registered"):
            experiments.data.register_dataset("fake_for_test", fake_loader)
        dataset = experiments.data.get_dataset("fake_for_test", "train", "/data", size=2)
        assert list(dataset.as_numpy_iterator()) == [0, 1, 2]
        assert calls == [("train", "/data", {"size": 2})]
    finally:
        experiments.data.registry._REGISTERED.pop("fake_for_test")
