"""From a contract dataset to batched numpy arrays for a jitted train or eval step.

Every source of :mod:`experiments.data` yields unbatched dict examples (``left``,
``right`` uint8 images, ``depth``, ``semantic``, ``normals`` targets, ``focal``,
``baseline``; only what the source has). This module

* resizes each example to the model resolution: images bilinearly (antialiased,
  as float32 in [0, 1]); ``semantic`` and ``normals`` by nearest neighbour;
  ``depth`` by nearest neighbour (never mixes depths across an edge or with the
  "unknown" zeros) or, with ``depth_resize="valid_mean"``, by the mean of the
  valid depths under each output pixel (for sparse LiDAR ground truth); the
  focal length is scaled by ``new_width / old_width`` (it is the horizontal focal,
  which is what converts disparities);
* for training, augments as monodepth does (Godard et al., CVPR 2017):
  a horizontal flip with probability 0.5 that also swaps the left and right views
  (so the left view stays the left view of a stereo pair), and a colour change
  with probability 0.5: ``clip(((image ** gamma) · brightness) · colour, 0, 1)``
  with ``gamma, brightness ~ U[0.8, 1.2]`` and a per-channel ``colour ~ U[0.8, 1.2]``,
  the same for both views;
* shuffles, repeats, batches (the batch is the leading axis, ready to be split
  across devices), prefetches, and yields dicts of numpy arrays.

Flipping and per-view targets: after a flip-and-swap, the new left image is the
mirrored *right* image, so the left view's targets become the right view's (and
the other way round). For stereo examples, the training pipeline therefore
carries both ``<target>`` and ``<target>_right`` for every target the example
has; a view whose targets the source lacks gets "unknown" values (depth 0,
semantic 255, normals 0), so a flipped example never carries wrong labels. The
synthetic dataset has both views' targets. Mirroring negates the x component of
the normals. Mono examples (no ``right``) are simply mirrored with their targets.

All randomness is stateless and derived from ``seed`` and the example's position
in the stream, so a pipeline is reproducible, whatever the parallelism.

Several processes (``num_shards`` > 1) see one global stream: every process
shuffles the whole dataset in the same seeded order and cuts it into global
batches of ``batch_size``; process ``i`` keeps rows ``[i·b, (i+1)·b)`` of each
(``b = batch_size / num_shards``) and resizes and augments only those, seeded
by their global position. The global batches, augmentation included, are thus
the same for any number of processes, and a run may resume with another one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = [
    "COLOR_RANGE",
    "IGNORE_LABEL",
    "TARGET_KEYS",
    "as_numpy_iterator",
    "augment_example",
    "color_augment",
    "eval_iterator",
    "flip_example",
    "make_eval_dataset",
    "make_train_dataset",
    "resize_example",
    "select_features",
    "shard_batch",
    "train_iterator",
    "with_right_targets",
]

IGNORE_LABEL = 255
TARGET_KEYS: tuple[str, ...] = ("depth", "semantic", "normals")
COLOR_RANGE: tuple[float, float] = (0.8, 1.2)
_DEPTH_RESIZE_METHODS = ("nearest", "valid_mean")

Example = dict[str, tf.Tensor]


def _target_keys(example: Mapping[str, Any]) -> list[str]:
    keys = []
    for key in TARGET_KEYS:
        keys += [name for name in (key, key + "_right") if name in example]
    return keys


def _base_key(key: str) -> str:
    return key.removesuffix("_right")


def _check_example(example: Mapping[str, Any]) -> None:
    """Trace-time checks of the contract: what is missing or mis-typed is named."""
    if "left" not in example:
        raise ValueError(f"example has no 'left' image; its keys are {sorted(example)}")
    for key in ("left", "right"):
        if key in example:
            image = example[key]
            if image.dtype != tf.uint8 or image.shape.rank != 3 or image.shape[-1] != 3:
                raise ValueError(
                    f"{key!r} must be uint8 [H, W, 3], got {image.dtype.name} {image.shape}"
                )
    expected = {"depth": (tf.float32, 2), "semantic": (tf.int32, 2), "normals": (tf.float32, 3)}
    for key in _target_keys(example):
        dtype, rank = expected[_base_key(key)]
        value = example[key]
        if value.dtype != dtype or value.shape.rank != rank:
            raise ValueError(
                f"{key!r} must be {dtype.name} of rank {rank}, got {value.dtype.name} {value.shape}"
            )


def _resize_nearest(value: tf.Tensor, height: int, width: int) -> tf.Tensor:
    squeeze = value.shape.rank == 2
    if squeeze:
        value = value[..., None]
    resized = tf.image.resize(value, (height, width), method="nearest")
    return resized[..., 0] if squeeze else resized


def _resize_depth_valid_mean(depth: tf.Tensor, height: int, width: int) -> tf.Tensor:
    valid = tf.cast(depth > 0, tf.float32)[..., None]
    total = tf.image.resize(depth[..., None] * valid, (height, width), method="area")
    count = tf.image.resize(valid, (height, width), method="area")
    return tf.where(count > 0, total / tf.maximum(count, 1e-12), 0.0)[..., 0]


def resize_example(
    example: Mapping[str, tf.Tensor],
    height: int,
    width: int,
    *,
    depth_resize: str = "nearest",
    resize_targets: bool = True,
) -> Example:
    """Resizes images (to float32 in [0, 1]) and targets; scales the focal length.

    Args:
      example: an unbatched contract dict.
      height, width: output size.
      depth_resize: ``"nearest"`` or ``"valid_mean"`` (see the module docstring).
      resize_targets: if False, the targets (and the focal, which goes with the
        depth map) keep their native size, for evaluation at full resolution.

    Returns:
      a new dict; keys this function does not know pass through unchanged.
    """
    if depth_resize not in _DEPTH_RESIZE_METHODS:
        raise ValueError(
            f"depth_resize must be one of {_DEPTH_RESIZE_METHODS}, got {depth_resize!r}"
        )
    _check_example(example)
    out = dict(example)
    for key in ("left", "right"):
        if key in example:
            image = tf.image.convert_image_dtype(example[key], tf.float32)
            if tuple(image.shape[:2]) != (height, width):
                image = tf.image.resize(image, (height, width), method="bilinear", antialias=True)
                image = tf.clip_by_value(image, 0.0, 1.0)
            out[key] = tf.ensure_shape(image, (height, width, 3))
    if not resize_targets:
        return out
    old_width = tf.shape(example["left"])[1]
    if "focal" in example:
        out["focal"] = example["focal"] * (width / tf.cast(old_width, tf.float32))
    for key in _target_keys(example):
        value = example[key]
        if tuple(value.shape[:2]) == (height, width):
            continue
        if _base_key(key) == "depth" and depth_resize == "valid_mean":
            out[key] = _resize_depth_valid_mean(value, height, width)
        else:
            out[key] = _resize_nearest(value, height, width)
        out[key] = tf.ensure_shape(out[key], (height, width, *value.shape[2:]))
    return out


def _unknown_like(key: str, reference: tf.Tensor) -> tf.Tensor:
    """The "unknown" map of a target, at the size of ``reference`` ([H, W, ...])."""
    size = tf.shape(reference)[:2]
    base = _base_key(key)
    if base == "depth":
        return tf.zeros(size, tf.float32)
    if base == "semantic":
        return tf.fill(size, tf.constant(IGNORE_LABEL, tf.int32))
    return tf.zeros(tf.concat([size, [3]], axis=0), tf.float32)


def with_right_targets(example: Mapping[str, tf.Tensor]) -> Example:
    """For a stereo example, makes ``<target>`` and ``<target>_right`` both present.

    A missing view's target is filled with "unknown" values, so that flipping and
    swapping the views keeps a fixed structure without inventing labels.
    """
    out = dict(example)
    if "right" not in example:
        return out
    for key in TARGET_KEYS:
        pair = (key, key + "_right")
        present = [name for name in pair if name in example]
        if not present:
            continue
        for name in pair:
            if name not in out:
                out[name] = _unknown_like(name, example[present[0]])
    return out


def _mirror(value: tf.Tensor) -> tf.Tensor:
    return tf.reverse(value, axis=[1])  # [H, W, ...]: the width axis


def _mirror_target(key: str, value: tf.Tensor) -> tf.Tensor:
    value = _mirror(value)
    if _base_key(key) == "normals":
        value = value * tf.constant([-1.0, 1.0, 1.0], value.dtype)
    return value


def flip_example(example: Mapping[str, tf.Tensor]) -> Example:
    """Mirrors an example horizontally; stereo pairs also swap their views.

    A stereo example must carry both views' targets (see :func:`with_right_targets`).
    """
    out = dict(example)
    targets = _target_keys(example)
    if "right" in example:
        out["left"], out["right"] = _mirror(example["right"]), _mirror(example["left"])
        for key in targets:
            other = key + "_right" if key == _base_key(key) else _base_key(key)
            if other not in example:
                raise ValueError(
                    f"flipping a stereo pair swaps the views, but {key!r} has no {other!r}: "
                    "apply with_right_targets first"
                )
            out[other] = _mirror_target(key, example[key])
    else:
        out["left"] = _mirror(example["left"])
        for key in targets:
            out[key] = _mirror_target(key, example[key])
    return out


def color_augment(
    example: Mapping[str, tf.Tensor], gamma: tf.Tensor, brightness: tf.Tensor, colour: tf.Tensor
) -> Example:
    """``clip(image ** gamma · brightness · colour, 0, 1)`` on both float images."""
    out = dict(example)
    for key in ("left", "right"):
        if key in example:
            image = example[key] ** gamma * brightness * colour
            out[key] = tf.clip_by_value(image, 0.0, 1.0)
    return out


def augment_example(
    example: Mapping[str, tf.Tensor],
    seed: tf.Tensor,
    *,
    flip_prob: float = 0.5,
    color_prob: float = 0.5,
) -> Example:
    """Monodepth's training augmentations, driven by a stateless ``seed`` [2] int.

    Images must already be float32 in [0, 1] (see :func:`resize_example`).
    """
    for key in ("left", "right"):
        if key in example and example[key].dtype != tf.float32:
            raise ValueError(
                f"augment_example needs float32 images; {key!r} is {example[key].dtype}"
            )
    low, high = COLOR_RANGE
    draws = tf.random.stateless_uniform([7], seed=seed)
    do_flip, do_color = draws[0] < flip_prob, draws[1] < color_prob
    gamma = low + (high - low) * draws[2]
    brightness = low + (high - low) * draws[3]
    colour = low + (high - low) * draws[4:7]

    example = with_right_targets(example) if flip_prob > 0 else dict(example)
    if flip_prob > 0:
        example = tf.cond(do_flip, lambda: flip_example(example), lambda: dict(example))
    if color_prob > 0:
        colored = color_augment(example, gamma, brightness, colour)
        for key in ("left", "right"):
            if key in example:
                example[key] = tf.where(do_color, colored[key], example[key])
    return example


def select_features(dataset: tf.data.Dataset, keys: Sequence[str]) -> tf.data.Dataset:
    """Keeps the features ``keys`` (and the right-view twins of target keys).

    Dropping what an experiment does not use before caching and augmenting
    saves memory and time. ``focal`` is kept whenever a target is, since
    resizing rescales it.
    """
    available = dataset.element_spec
    if not isinstance(available, Mapping):
        raise ValueError(f"expected a dataset of dicts, got elements {available}")
    missing = [key for key in keys if key not in available]
    if missing:
        raise ValueError(f"features {missing} are not in the dataset; it has {sorted(available)}")
    wanted = set(keys)
    for key in keys:
        if _base_key(key) in TARGET_KEYS:
            wanted |= {_base_key(key), _base_key(key) + "_right", "focal"}
    kept = sorted(wanted & set(available))
    return dataset.map(lambda example: {key: example[key] for key in kept})


def _shard(dataset: tf.data.Dataset, num_shards: int, shard_index: int) -> tf.data.Dataset:
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
    return dataset.shard(num_shards, shard_index) if num_shards > 1 else dataset


def _check_sizes(batch_size: int, height: int, width: int) -> None:
    for name, value in (("batch_size", batch_size), ("height", height), ("width", width)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def make_train_dataset(
    dataset: tf.data.Dataset,
    *,
    batch_size: int,
    height: int,
    width: int,
    seed: int = 0,
    keys: Sequence[str] | None = None,
    augment: bool = True,
    flip_prob: float = 0.5,
    color_prob: float = 0.5,
    shuffle_buffer: int = 1024,
    repeat: bool = True,
    drop_remainder: bool = True,
    cache: bool = False,
    depth_resize: str = "nearest",
    num_shards: int = 1,
    shard_index: int = 0,
    num_parallel_calls: int = tf.data.AUTOTUNE,
) -> tf.data.Dataset:
    """The training ``tf.data`` pipeline: cache, shuffle, repeat, shard, resize, augment, batch.

    Args:
      dataset: unbatched contract examples (e.g. from :func:`experiments.data.get_dataset`).
      batch_size: examples per global batch; each of ``num_shards`` processes
        gets its ``batch_size / num_shards`` rows of it.
      height, width: model resolution.
      seed: shuffling and augmentation seed.
      keys: keep only these features (see :func:`select_features`); default all.
      augment: apply :func:`augment_example` (else only resize).
      flip_prob, color_prob: augmentation probabilities (monodepth's: 0.5 and 0.5).
      shuffle_buffer: shuffle buffer size; 0 or 1 keeps the order.
      repeat: repeat forever (epochs reshuffled); else one pass.
      drop_remainder: drop a final smaller batch (keeps jitted shapes fixed).
      cache: cache the decoded source examples in memory (small datasets only).
      depth_resize: see :func:`resize_example`.
      num_shards, shard_index: yield slice ``shard_index`` of ``num_shards`` of
        every global batch (multi-process; see the module docstring). The
        stream must repeat, so that every process gets as many batches.
      num_parallel_calls: parallelism of the per-example map.
    """
    _check_sizes(batch_size, height, width)
    for name, p in (("flip_prob", flip_prob), ("color_prob", color_prob)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
    if batch_size % num_shards:
        raise ValueError(
            f"batch_size {batch_size} does not split into {num_shards} equal per-process slices"
        )
    if num_shards > 1 and not repeat:
        raise ValueError(
            "a one-pass stream (repeat=False) cannot give every process as many batches; "
            "shard a training stream only with repeat=True"
        )
    if keys is not None:
        dataset = select_features(dataset, keys)
    if cache:
        dataset = dataset.cache()
    if shuffle_buffer > 1:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    # The position of each example in the global stream, before this process
    # takes its rows: it seeds the augmentation, so an example is augmented
    # alike whichever process (of however many) handles it.
    dataset = tf.data.Dataset.zip((tf.data.Dataset.counter(), dataset))
    local_batch = batch_size // num_shards
    if num_shards > 1:
        first, stop = shard_index * local_batch, (shard_index + 1) * local_batch

        def in_this_slice(position: tf.Tensor, example: Example) -> tf.Tensor:
            del example
            row = position % batch_size
            return (row >= first) & (row < stop)

        dataset = dataset.filter(in_this_slice)

    def prepare(position: tf.Tensor, example: Example) -> Example:
        example = resize_example(example, height, width, depth_resize=depth_resize)
        if augment:
            stream_seed = tf.stack([tf.constant(seed, tf.int64), position])
            example = augment_example(
                example, stream_seed, flip_prob=flip_prob, color_prob=color_prob
            )
        return example

    dataset = dataset.map(prepare, num_parallel_calls=num_parallel_calls, deterministic=True)
    dataset = dataset.batch(local_batch, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)


def make_eval_dataset(
    dataset: tf.data.Dataset,
    *,
    batch_size: int,
    height: int,
    width: int,
    keys: Sequence[str] | None = None,
    drop_remainder: bool = False,
    resize_targets: bool = True,
    cache: bool = False,
    depth_resize: str = "nearest",
    num_shards: int = 1,
    shard_index: int = 0,
    num_parallel_calls: int = tf.data.AUTOTUNE,
) -> tf.data.Dataset:
    """The evaluation pipeline: source order, no augmentation, resized images, batched.

    With ``resize_targets=False`` the targets keep their native size (compare at
    ground-truth resolution, as KITTI evaluation does); examples of different
    sizes then need ``batch_size=1``. ``keys`` keeps only those features (see
    :func:`select_features`).
    """
    _check_sizes(batch_size, height, width)
    dataset = _shard(dataset, num_shards, shard_index)
    if keys is not None:
        dataset = select_features(dataset, keys)
    if cache:
        dataset = dataset.cache()
    dataset = dataset.map(
        lambda example: resize_example(
            example, height, width, depth_resize=depth_resize, resize_targets=resize_targets
        ),
        num_parallel_calls=num_parallel_calls,
        deterministic=True,
    )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def as_numpy_iterator(dataset: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
    """Batches as dicts of numpy arrays."""
    return dataset.as_numpy_iterator()


def train_iterator(dataset: tf.data.Dataset, **kwargs: Any) -> Iterator[dict[str, np.ndarray]]:
    """``as_numpy_iterator(make_train_dataset(dataset, **kwargs))``."""
    return as_numpy_iterator(make_train_dataset(dataset, **kwargs))


def eval_iterator(dataset: tf.data.Dataset, **kwargs: Any) -> Iterator[dict[str, np.ndarray]]:
    """``as_numpy_iterator(make_eval_dataset(dataset, **kwargs))``."""
    return as_numpy_iterator(make_eval_dataset(dataset, **kwargs))


def shard_batch(batch: Mapping[str, np.ndarray], num_shards: int) -> dict[str, np.ndarray]:
    """Splits the leading (batch) axis into ``[num_shards, batch // num_shards, ...]``."""
    out = {}
    for key, value in batch.items():
        if value.shape[0] % num_shards:
            raise ValueError(
                f"batch of {value.shape[0]} ({key!r}) does not split into {num_shards} shards"
            )
        out[key] = value.reshape(num_shards, value.shape[0] // num_shards, *value.shape[1:])
    return out
