"""Data plumbing shared by every task: a config's dataset split and its training stream.

Each experiment's config names a source of the shared registry
(``config.data.name``, ``config.data.data_dir``, ``config.data.kwargs``); these
two functions turn that into a ``tf.data.Dataset`` and into this process's
stream of numpy training batches, so the tasks only say which features they
need.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections
import numpy as np


def load_split(config: ml_collections.ConfigDict, split: str) -> Any:
    """The ``tf.data.Dataset`` of ``split`` of ``config.data`` (via the shared registry)."""
    from experiments.data import get_dataset  # local: imports TensorFlow

    kwargs = config.data.kwargs.to_dict() if config.data.get("kwargs") else {}
    return get_dataset(config.data.name, split, config.data.data_dir, **kwargs)


def train_batches(
    config: ml_collections.ConfigDict,
    dataset: Any,
    *,
    start_step: int,
    process_index: int,
    process_count: int,
    keys: Sequence[str] | None = None,
    cache: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's training batches of ``dataset`` from ``start_step`` on.

    The shared input pipeline (resize, monodepth's augmentation, seeded shuffling)
    draws all its randomness from ``config.seed`` and the position in the
    stream, so skipping the first ``start_step`` batches gives exactly the
    batches an uninterrupted run sees next. With several processes each gets
    its rows of the same global batches (``config.batch_size`` examples), so
    the run trains on the same data whatever the process count. ``keys`` keeps only those features
    (before caching, so unused targets are neither cached nor augmented);
    ``config.data.cache``, when set, overrides ``cache``.
    """
    from experiments.data import input_pipeline  # local: imports TensorFlow

    batches = input_pipeline.make_train_dataset(
        dataset,
        batch_size=config.batch_size,
        height=config.image_height,
        width=config.image_width,
        seed=config.seed,
        keys=keys,
        augment=config.data.augment,
        shuffle_buffer=config.data.shuffle_buffer,
        cache=config.data.get("cache", cache),
        num_shards=process_count,
        shard_index=process_index,
    )
    return input_pipeline.as_numpy_iterator(batches.skip(start_step))
