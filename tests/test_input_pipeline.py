"""The shared input pipeline: resizing, flip-and-swap, colour augmentation, batching."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import tensorflow as tf

from experiments.data import input_pipeline as ip
from experiments.data import synthetic

HEIGHT, WIDTH = 32, 64


@functools.cache
def stereo_examples(count: int = 6) -> dict[str, np.ndarray]:
    """``count`` synthetic examples, stacked (shared by the tests: rendering is the cost)."""
    examples = [synthetic.generate_example(0, "train", i, HEIGHT, WIDTH) for i in range(count)]
    return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


def stereo_dataset(count: int = 6) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(stereo_examples(count))


def mono_dataset(count: int = 4) -> tf.data.Dataset:
    stacked = stereo_examples()
    keys = ("left", "semantic", "depth", "normals", "focal", "index")
    return tf.data.Dataset.from_tensor_slices({k: stacked[k][:count] for k in keys})


def first(example_dataset: tf.data.Dataset) -> dict[str, tf.Tensor]:
    return next(iter(example_dataset))


def warp_error(left: np.ndarray, right: np.ndarray, disparity: np.ndarray, valid: np.ndarray):
    """Mean |left - right(x - disparity)| over ``valid`` pixels (linear interpolation)."""
    H, W = disparity.shape
    x = np.arange(W)[None, :] - disparity
    x0 = np.floor(x).astype(int)
    frac = (x - x0)[..., None]
    inside = valid & (x0 >= 0) & (x0 + 1 < W)
    x0, x1 = np.clip(x0, 0, W - 1), np.clip(x0 + 1, 0, W - 1)
    rows = np.arange(H)[:, None]
    warped = (1 - frac) * right[rows, x0] + frac * right[rows, x1]
    return np.abs(warped - left).mean(-1)[inside].mean()


def test_resize_shapes_dtypes_and_focal():
    example = first(stereo_dataset())
    out = ip.resize_example(example, 16, 48)
    assert out["left"].dtype == tf.float32 and out["left"].shape == (16, 48, 3)
    assert out["right"].shape == (16, 48, 3)
    assert out["depth"].shape == (16, 48) and out["depth"].dtype == tf.float32
    assert out["semantic"].shape == (16, 48) and out["semantic"].dtype == tf.int32
    assert out["normals"].shape == (16, 48, 3)
    assert out["depth_right"].shape == (16, 48)
    np.testing.assert_allclose(out["focal"], example["focal"] * 48 / WIDTH, rtol=1e-6)
    assert float(tf.reduce_min(out["left"])) >= 0 and float(tf.reduce_max(out["left"])) <= 1
    # Nearest neighbour keeps labels, depths and unit normals exactly (no blending).
    assert set(np.unique(out["semantic"])) <= set(np.unique(example["semantic"]))
    assert set(np.unique(out["depth"])) <= set(np.unique(example["depth"]))
    norms = np.linalg.norm(out["normals"], axis=-1)
    np.testing.assert_allclose(norms[out["depth"].numpy() > 0], 1.0, atol=1e-5)


def test_resize_to_same_size_is_exact_conversion():
    example = first(stereo_dataset())
    out = ip.resize_example(example, HEIGHT, WIDTH)
    np.testing.assert_allclose(out["left"], example["left"].numpy() / 255, rtol=1e-6)
    np.testing.assert_array_equal(out["depth"], example["depth"])
    assert float(out["focal"]) == float(example["focal"])


def test_resize_dynamic_shapes_and_native_targets():
    # Sources like KITTI have images of varying size (unknown static shape).
    stacked = stereo_examples()

    def generate():
        for i in range(2):
            yield {k: stacked[k][i] for k in ("left", "right", "depth", "focal", "baseline")}

    spec = {
        "left": tf.TensorSpec((None, None, 3), tf.uint8),
        "right": tf.TensorSpec((None, None, 3), tf.uint8),
        "depth": tf.TensorSpec((None, None), tf.float32),
        "focal": tf.TensorSpec((), tf.float32),
        "baseline": tf.TensorSpec((), tf.float32),
    }
    dataset = tf.data.Dataset.from_generator(generate, output_signature=spec)
    batch = next(ip.eval_iterator(dataset, batch_size=2, height=16, width=32))
    assert batch["left"].shape == (2, 16, 32, 3) and batch["depth"].shape == (2, 16, 32)
    np.testing.assert_allclose(batch["focal"], stacked["focal"][:2] / 2)
    native = next(
        ip.eval_iterator(dataset, batch_size=1, height=16, width=32, resize_targets=False)
    )
    assert native["left"].shape == (1, 16, 32, 3) and native["depth"].shape == (1, HEIGHT, WIDTH)
    assert native["focal"][0] == stacked["focal"][0]


def test_valid_mean_depth_resize_ignores_unknown_pixels():
    depth = np.array([[2.0, 0.0, 4.0, 4.0], [0.0, 0.0, 8.0, 4.0]], np.float32)
    example = {
        "left": tf.zeros((2, 4, 3), tf.uint8),
        "depth": tf.constant(depth),
        "focal": tf.constant(10.0),
    }
    mean = ip.resize_example(example, 1, 2, depth_resize="valid_mean")["depth"].numpy()
    np.testing.assert_allclose(mean, [[2.0, 5.0]])
    nearest = ip.resize_example(example, 1, 2)["depth"].numpy()
    assert set(nearest.ravel()) <= set(depth.ravel())


def test_flip_swaps_views_and_targets():
    example = ip.resize_example(first(stereo_dataset()), HEIGHT, WIDTH)
    flipped = ip.flip_example(example)
    mirror = functools.partial(np.flip, axis=1)
    np.testing.assert_array_equal(flipped["left"], mirror(example["right"].numpy()))
    np.testing.assert_array_equal(flipped["right"], mirror(example["left"].numpy()))
    for key in ("depth", "semantic"):
        np.testing.assert_array_equal(flipped[key], mirror(example[key + "_right"].numpy()))
        np.testing.assert_array_equal(flipped[key + "_right"], mirror(example[key].numpy()))
    expected_normals = mirror(example["normals_right"].numpy()) * np.array([-1.0, 1.0, 1.0])
    np.testing.assert_array_equal(flipped["normals"], expected_normals)
    assert float(flipped["focal"]) == float(example["focal"])
    # Flipping twice is the identity.
    twice = ip.flip_example(flipped)
    for key in example:
        np.testing.assert_array_equal(twice[key], example[key], err_msg=key)


def test_flipped_pair_is_still_a_stereo_pair():
    # After the swap, the new right image warped by the new left depth's
    # disparity must still reproduce the new left image.
    example = ip.resize_example(first(stereo_dataset()), HEIGHT, WIDTH)
    flipped = ip.flip_example(example)
    for pair in (example, flipped):
        depth = pair["depth"].numpy()
        focal_baseline = float(pair["focal"]) * float(pair["baseline"])
        disparity = np.where(depth > 0, focal_baseline / np.maximum(depth, 1e-6), 0)
        good = warp_error(pair["left"].numpy(), pair["right"].numpy(), disparity, depth > 0)
        wrong = warp_error(pair["left"].numpy(), pair["right"].numpy(), -disparity, depth > 0)
        assert good < 0.05 and good < 0.5 * wrong


def test_flip_mono_mirrors_in_place():
    example = ip.resize_example(first(mono_dataset()), HEIGHT, WIDTH)
    flipped = ip.flip_example(example)
    assert "right" not in flipped and "depth_right" not in flipped
    np.testing.assert_array_equal(flipped["left"], np.flip(example["left"].numpy(), axis=1))
    np.testing.assert_array_equal(flipped["semantic"], np.flip(example["semantic"].numpy(), 1))
    np.testing.assert_array_equal(
        flipped["normals"][..., 0], -np.flip(example["normals"].numpy()[..., 0], axis=1)
    )


def test_stereo_without_right_targets_gets_unknown_ones():
    example = dict(first(stereo_dataset()))
    for key in ("depth_right", "semantic_right", "normals_right"):
        del example[key]
    with pytest.raises(ValueError, match="with_right_targets"):
        ip.flip_example(example)
    filled = ip.with_right_targets(example)
    assert float(tf.reduce_max(filled["depth_right"])) == 0.0
    assert np.all(filled["semantic_right"].numpy() == ip.IGNORE_LABEL)
    assert filled["normals_right"].shape == (HEIGHT, WIDTH, 3)
    flipped = ip.flip_example(filled)
    # The known left labels went to the right view; the new left view is unknown.
    assert np.all(flipped["semantic"].numpy() == ip.IGNORE_LABEL)
    np.testing.assert_array_equal(flipped["semantic_right"], np.flip(example["semantic"], 1))


def test_color_augment_same_for_both_views_and_clipped():
    example = ip.resize_example(first(stereo_dataset()), HEIGHT, WIDTH)
    example["right"] = example["left"]
    out = ip.augment_example(example, tf.constant([3, 4], tf.int64), flip_prob=0.0, color_prob=1.0)
    assert float(tf.reduce_min(out["left"])) >= 0.0 and float(tf.reduce_max(out["left"])) <= 1.0
    np.testing.assert_array_equal(out["left"], out["right"])
    assert not np.allclose(out["left"], example["left"])
    np.testing.assert_array_equal(out["depth"], example["depth"])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_color_augment_is_gamma_brightness_and_channel_gain(seed):
    # Two grey levels v1, v2 give out = v^gamma · brightness · colour_c per channel,
    # so gamma = log(o1 / o2) / log(v1 / v2) (one value for all channels).
    levels = np.array([64, 128], np.uint8)
    left = np.repeat(levels, [4, 4])[:, None, None] * np.ones((1, 8, 3), np.uint8)
    example = ip.resize_example({"left": tf.constant(left)}, 8, 8)
    out = ip.augment_example(
        example, tf.constant([seed, 9], tf.int64), flip_prob=0.0, color_prob=1.0
    )["left"].numpy()
    v1, v2 = levels / np.float32(255)
    o1, o2 = out[0, 0], out[-1, 0]  # per channel
    gamma = np.log(o1 / o2) / np.log(v1 / v2)
    np.testing.assert_allclose(gamma, gamma[0], rtol=1e-4)
    assert 0.8 <= gamma[0] <= 1.2
    gain = o1 / v1 ** gamma[0]  # brightness · colour_c
    assert np.all((gain >= 0.8 * 0.8 - 1e-5) & (gain <= 1.2 * 1.2 + 1e-5))
    assert np.ptp(gain) > 0  # per-channel colour


def test_color_augment_clips_to_unit_range():
    bright = ip.resize_example({"left": tf.fill((4, 4, 3), tf.constant(250, tf.uint8))}, 4, 4)
    for seed in range(8):
        out = ip.augment_example(
            bright, tf.constant([seed, 0], tf.int64), flip_prob=0.0, color_prob=1.0
        )["left"].numpy()
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_train_batches_shapes_dtypes_and_determinism():
    kwargs = dict(batch_size=4, height=16, width=32, seed=1, shuffle_buffer=8)
    first_run = ip.train_iterator(stereo_dataset(), **kwargs)
    batches = [next(first_run) for _ in range(3)]
    batch = batches[0]
    assert batch["left"].shape == (4, 16, 32, 3) and batch["left"].dtype == np.float32
    assert batch["right"].shape == (4, 16, 32, 3)
    assert batch["depth"].shape == (4, 16, 32) and batch["semantic"].dtype == np.int32
    assert batch["normals"].shape == (4, 16, 32, 3) and batch["focal"].shape == (4,)
    assert all(b["left"].min() >= 0 and b["left"].max() <= 1 for b in batches)
    again = ip.train_iterator(stereo_dataset(), **kwargs)
    for expected in batches:
        got = next(again)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    other = next(ip.train_iterator(stereo_dataset(), **{**kwargs, "seed": 2}))
    assert not np.array_equal(other["left"], batch["left"])


def test_train_augmentation_rates():
    # 6 distinct examples, 240 draws: the flip and colour rates are near 0.5.
    stacked = stereo_examples()
    reference = {
        int(i): stacked["left"][k] / np.float32(255) for k, i in enumerate(stacked["index"])
    }
    iterator = ip.train_iterator(
        stereo_dataset(), batch_size=48, height=HEIGHT, width=WIDTH, seed=0, shuffle_buffer=6
    )
    flips = colours = total = 0
    for _ in range(5):
        batch = next(iterator)
        for left, index in zip(batch["left"], batch["index"], strict=True):
            original = reference[int(index)]
            right = stacked["right"][int(index)] / np.float32(255)
            if np.allclose(left, original, atol=1e-6):
                pass
            elif np.allclose(left, np.flip(right, axis=1), atol=1e-6):
                flips += 1
            else:
                colours += 1
                # Coloured (maybe also flipped): never out of range.
                assert left.min() >= 0 and left.max() <= 1
            total += 1
    # Untouched: 1/4; flipped only: 1/4; coloured (with or without flip): 1/2.
    assert 0.12 < flips / total < 0.38
    assert 0.35 < colours / total < 0.65


def test_eval_has_no_augmentation_and_keeps_order():
    dataset = stereo_dataset()
    batches = list(ip.eval_iterator(dataset, batch_size=4, height=HEIGHT, width=WIDTH))
    assert [b["left"].shape[0] for b in batches] == [4, 2]  # drop_remainder=False
    stacked = stereo_examples()
    left = np.concatenate([b["left"] for b in batches])
    np.testing.assert_allclose(left, stacked["left"] / 255, rtol=1e-6)
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in batches]), np.arange(6))
    np.testing.assert_array_equal(
        np.concatenate([b["semantic"] for b in batches]), stacked["semantic"]
    )
    dropped = list(
        ip.eval_iterator(dataset, batch_size=4, height=HEIGHT, width=WIDTH, drop_remainder=True)
    )
    assert len(dropped) == 1


def test_shard_batch_and_dataset_sharding():
    batch = {"left": np.zeros((8, 2, 2, 3)), "focal": np.arange(8.0)}
    sharded = ip.shard_batch(batch, 4)
    assert sharded["left"].shape == (4, 2, 2, 2, 3)
    np.testing.assert_array_equal(sharded["focal"][1], [2.0, 3.0])
    with pytest.raises(ValueError, match="does not split into 3"):
        ip.shard_batch(batch, 3)
    shard = list(
        ip.eval_iterator(
            stereo_dataset(), batch_size=8, height=8, width=16, num_shards=2, shard_index=1
        )
    )
    np.testing.assert_array_equal(shard[0]["index"], [1, 3, 5])


def test_bad_inputs_are_named():
    example = dict(first(stereo_dataset()))
    with pytest.raises(ValueError, match="depth_resize"):
        ip.resize_example(example, 8, 8, depth_resize="bicubic")
    with pytest.raises(ValueError, match="no 'left'"):
        ip.resize_example({"right": example["right"]}, 8, 8)
    with pytest.raises(ValueError, match="'semantic' must be int32"):
        ip.resize_example({**example, "semantic": tf.cast(example["semantic"], tf.uint8)}, 8, 8)
    with pytest.raises(ValueError, match="'left' must be uint8"):
        ip.resize_example({**example, "left": tf.cast(example["left"], tf.float32)}, 8, 8)
    with pytest.raises(ValueError, match="float32 images"):
        ip.augment_example(example, tf.constant([0, 0], tf.int64))
    with pytest.raises(ValueError, match="batch_size"):
        ip.make_train_dataset(stereo_dataset(), batch_size=0, height=8, width=8)
    with pytest.raises(ValueError, match="flip_prob"):
        ip.make_train_dataset(stereo_dataset(), batch_size=2, height=8, width=8, flip_prob=2.0)
    with pytest.raises(ValueError, match="shard_index"):
        ip.make_eval_dataset(
            stereo_dataset(), batch_size=2, height=8, width=8, num_shards=2, shard_index=2
        )


def test_select_features_keeps_right_view_twins():
    selected = ip.select_features(stereo_dataset(), ["left", "right", "semantic"])
    assert set(selected.element_spec) == {"left", "right", "semantic", "semantic_right", "focal"}
    images_only = ip.select_features(stereo_dataset(), ["left", "right"])
    assert set(images_only.element_spec) == {"left", "right"}
    with pytest.raises(ValueError, match=r"\['disparity'\] are not in the dataset"):
        ip.select_features(stereo_dataset(), ["left", "disparity"])
    batch = next(
        ip.train_iterator(
            stereo_dataset(), batch_size=2, height=8, width=16, keys=["left", "right"], cache=True
        )
    )
    assert set(batch) == {"left", "right"} and batch["left"].shape == (2, 8, 16, 3)


def mixed_size_dataset(sizes: list[tuple[int, int]]) -> tf.data.Dataset:
    """Stereo examples of different native sizes (as KITTI's Eigen test set: four sizes)."""
    rng = np.random.default_rng(0)
    examples = []
    for index, (height, width) in enumerate(sizes):
        examples.append(
            {
                "left": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
                "right": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
                "depth": rng.uniform(1.0, 80.0, (height, width)).astype(np.float32),
                "semantic": rng.integers(0, 5, (height, width)).astype(np.int32),
                "focal": np.float32(700.0 + index),
                "baseline": np.float32(0.54),
                "doffs": np.float32(index * 1.5),
            }
        )
    spec = {
        key: tf.TensorSpec((None,) * value.ndim if value.ndim < 3 else (None, None, 3), value.dtype)
        for key, value in examples[0].items()
    }
    return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=spec), examples


def test_native_size_evaluation_batches_mixed_sizes():
    sizes = [(5, 16), (4, 15), (5, 15), (6, 16), (5, 14)]
    dataset, examples = mixed_size_dataset(sizes)
    # Resizing the targets too: plain batches at the network's size.
    resized = next(ip.eval_iterator(dataset, batch_size=5, height=4, width=8))
    assert resized["depth"].shape == (5, 4, 8)
    native = list(ip.eval_iterator(dataset, batch_size=2, height=4, width=8, resize_targets=False))
    assert [b["left"].shape for b in native] == [(2, 4, 8, 3), (2, 4, 8, 3), (1, 4, 8, 3)]
    np.testing.assert_array_equal(np.concatenate([b["native_size"] for b in native]), sizes)
    depths = [d for b in native for d in ip.native_targets(b, "depth")]
    labels = [s for b in native for s in ip.native_targets(b, "semantic")]
    for depth, label, example in zip(depths, labels, examples, strict=True):
        np.testing.assert_array_equal(depth, example["depth"])
        np.testing.assert_array_equal(label, example["semantic"])
    # The padding is "unknown": depth 0, label 255 (the first batch pads (4, 15) to (5, 16)).
    assert native[0]["depth"].shape == (2, 5, 16)
    np.testing.assert_array_equal(native[0]["depth"][1, 4:], 0.0)
    np.testing.assert_array_equal(native[0]["semantic"][1, :, 15:], ip.IGNORE_LABEL)
    # Camera values stay at the native size, with the targets.
    np.testing.assert_array_equal(
        np.concatenate([b["focal"] for b in native]), [e["focal"] for e in examples]
    )
    np.testing.assert_array_equal(
        np.concatenate([b["doffs"] for b in native]), [e["doffs"] for e in examples]
    )
    with pytest.raises(ValueError, match="resize_targets=False"):
        ip.native_targets(resized, "depth")


def test_target_of_another_size_than_its_image_is_named():
    example = {"left": tf.zeros((4, 6, 3), tf.uint8), "depth": tf.zeros((4, 5))}
    dataset = tf.data.Dataset.from_tensors(example)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="target depth differs in size from the left image"
    ):
        next(ip.eval_iterator(dataset, batch_size=1, height=2, width=2, resize_targets=False))


def test_resize_scales_focal_and_principal_point_offset_with_the_width():
    # doffs is a horizontal pixel quantity like the focal: f·B/(d + doffs) must
    # give the same depth at any width, so both scale by new_width / old_width.
    example = {
        "left": tf.zeros((6, 20, 3), tf.uint8),
        "depth": tf.fill((6, 20), 10.0),
        "focal": tf.constant(700.0),
        "doffs": tf.constant(5.5),
    }
    out = ip.resize_example(example, 3, 8)
    np.testing.assert_allclose(out["focal"], 700.0 * 8 / 20, rtol=1e-6)
    np.testing.assert_allclose(out["doffs"], 5.5 * 8 / 20, rtol=1e-6)
    native = ip.resize_example(example, 3, 8, resize_targets=False)
    assert float(native["doffs"]) == 5.5 and float(native["focal"]) == 700.0
    selected = ip.select_features(tf.data.Dataset.from_tensors(example), ["left", "depth"])
    assert set(selected.element_spec) == {"left", "depth", "focal", "doffs"}


@pytest.mark.parametrize("num_shards", [2, 4])
def test_process_shards_are_rows_of_the_one_process_batches(num_shards):
    # Process i of P gets rows [i·b, (i+1)·b) of each global batch, augmentation
    # included, whatever P: the augmentation is seeded by the global position.
    # 4 batches of 4 from 6 examples cross three epochs (each reshuffled).
    kwargs = dict(batch_size=4, height=8, width=16, seed=3, shuffle_buffer=6)
    global_batches = ip.train_iterator(stereo_dataset(), **kwargs)
    shards = [
        ip.train_iterator(stereo_dataset(), **kwargs, num_shards=num_shards, shard_index=index)
        for index in range(num_shards)
    ]
    plain = ip.train_iterator(stereo_dataset(), **kwargs, augment=False)
    augmented_rows = 0
    for _ in range(4):
        expected, unaugmented = next(global_batches), next(plain)
        parts = [next(shard) for shard in shards]
        assert all(part["left"].shape[0] == 4 // num_shards for part in parts)
        for key in expected:
            got = np.concatenate([part[key] for part in parts])
            np.testing.assert_array_equal(got, expected[key], err_msg=key)
        np.testing.assert_array_equal(expected["index"], unaugmented["index"])
        augmented_rows += sum(
            not np.array_equal(row, plain_row)
            for row, plain_row in zip(expected["left"], unaugmented["left"], strict=True)
        )
    # Not vacuous: most rows were flipped or recoloured (3/4 expected of 16).
    assert augmented_rows >= 6


def test_sharded_training_stream_needs_equal_slices_and_repeat():
    with pytest.raises(ValueError, match="does not split into 3 equal"):
        ip.make_train_dataset(stereo_dataset(), batch_size=4, height=8, width=8, num_shards=3)
    with pytest.raises(ValueError, match="repeat=False"):
        ip.make_train_dataset(
            stereo_dataset(), batch_size=4, height=8, width=8, num_shards=2, repeat=False
        )
