"""Data plumbing shared by every task: a config's dataset split and its training stream.

Each experiment's config names a source of the shared registry
(``config.data.name``, ``config.data.data_dir``) and declares its loader's
options in ``config.data.<name>`` (e.g. ``config.data.kitti.split_file``);
these functions check that, and turn it into a ``tf.data.Dataset`` and into
this process's stream of numpy training batches, so the tasks only say which
features they need.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections
import numpy as np

from experiments.common.config import ConfigError


def loader_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The keyword options of ``config.data.name``'s loader: its section ``config.data.<name>``.

    A source without a section (e.g. one registered at run time) gets none.
    """
    section = config.data.get(config.data.name, None)
    if section is None:
        return {}
    if not isinstance(section, ml_collections.ConfigDict):
        raise ConfigError(
            f"config.data.{config.data.name} must be a section of loader options, got {section!r}."
        )
    return section.to_dict()


def check_data_config(config: ml_collections.ConfigDict) -> None:
    """Fail fast, before any model or data is built, if ``config.data`` cannot be loaded.

    Checks that ``config.data.name`` is a registered source and that its
    options are keyword arguments of that source's loader.

    Raises:
      ConfigError: naming the unknown source or option and the valid ones.
    """
    from experiments.data import registry  # imports the chosen loader's module only

    name = config.data.name
    if name not in registry.available_datasets():
        raise ConfigError(
            f"Unknown config.data.name {name!r}; available: {registry.available_datasets()}."
        )
    signature = inspect.signature(registry.dataset_loader(name))
    options = loader_options(config)
    try:
        signature.bind("train", config.data.data_dir, **options)
    except TypeError as error:
        valid = [
            parameter.name
            for parameter in signature.parameters.values()
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY
        ]
        raise ConfigError(
            f"config.data.{name} does not fit the {name!r} loader ({error}); its options are "
            f"{valid}."
        ) from None


def load_split(config: ml_collections.ConfigDict, split: str) -> Any:
    """The ``tf.data.Dataset`` of ``split`` of ``config.data`` (via the shared registry)."""
    from experiments.data import get_dataset  # local: imports TensorFlow

    return get_dataset(config.data.name, split, config.data.data_dir, **loader_options(config))


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


def eval_batches(
    config: ml_collections.ConfigDict, dataset: Any, **options: Any
) -> Iterator[dict[str, np.ndarray]]:
    """The evaluation batches of ``dataset`` at the network's size (``config.eval``'s batch
    size, ``config.eval.max_examples`` examples at most; no augmentation).

    ``options`` go to :func:`experiments.data.input_pipeline.make_eval_dataset`
    (e.g. ``resize_targets=False`` to score at the ground truth's resolution).
    """
    from experiments.data import input_pipeline  # local: imports TensorFlow

    max_examples = config.eval.get("max_examples", None)
    if max_examples:
        dataset = dataset.take(int(max_examples))  # the source, not a batch of padded targets
    return input_pipeline.eval_iterator(
        dataset,
        batch_size=int(config.eval.batch_size),
        height=int(config.image_height),
        width=int(config.image_width),
        **options,
    )


class DatasetTask(abc.ABC):
    """The data side of a task that reads a source of the shared registry.

    A task says which features of ``config.data``'s split it reads
    (:meth:`load_split`); its training and evaluation batches follow from that
    (:func:`train_batches`, :func:`eval_batches`), with these class settings.

    Attributes:
      train_keys: the features training keeps (before caching and augmentation;
        None: all that :meth:`load_split` gives).
      cache_train: keep the decoded training examples in memory
        (``config.data.cache``, when set, decides instead).
      resize_eval_targets: resize the evaluation targets to the network's size
        (False: keep them at their native size, to score there).
    """

    train_keys: tuple[str, ...] | None = None
    cache_train: bool = False
    resize_eval_targets: bool = True

    @abc.abstractmethod
    def load_split(self, config: ml_collections.ConfigDict, split: str) -> Any:
        """The ``tf.data.Dataset`` of ``split`` of ``config.data``, with the task's features."""

    def train_batches(
        self,
        config: ml_collections.ConfigDict,
        *,
        start_step: int,
        process_index: int,
        process_count: int,
    ) -> Iterator[dict[str, np.ndarray]]:
        """This process's training batches from ``start_step`` (see :func:`train_batches`)."""
        return train_batches(
            config,
            self.load_split(config, config.data.train_split),
            start_step=start_step,
            process_index=process_index,
            process_count=process_count,
            keys=self.train_keys,
            cache=self.cache_train,
        )

    def eval_batches(
        self, config: ml_collections.ConfigDict, split: str
    ) -> Iterator[dict[str, np.ndarray]]:
        """The evaluation batches of ``split`` (see :func:`eval_batches`)."""
        options = {} if self.resize_eval_targets else {"resize_targets": False}
        return eval_batches(config, self.load_split(config, split), **options)
