"""Evaluate a trained EncNet: pixel accuracy, mean IoU and the confusion matrix.

    python -m experiments.segmentation.evaluate \\
        --config=experiments/segmentation/configs/cpu.py --workdir=/tmp/seg_cov

restores the latest checkpoint of ``--workdir`` (the same config as training)
and evaluates on ``config.data.eval_split`` (``--split`` to override) at the
network's resolution: images are resized bilinearly, labels by nearest
neighbour (the input pipeline's evaluation mode, no augmentation). The
background rule of :mod:`experiments.segmentation.metrics` applies
(``config.data.background_class``). Writes ``<workdir>/eval_<split>/``:
``summary.json``, ``confusion_matrix.npy|.csv`` and per-class IoUs.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from absl import app, flags
from flax import nnx
from jax import Array

from experiments.common import cli
from experiments.common import train as common_train
from experiments.segmentation import metrics, train


def class_names(config: ml_collections.ConfigDict) -> list[str]:
    """Names of the classes of ``config.data.name`` (ids as strings if unknown)."""
    num_classes = int(config.model.num_classes)
    names: tuple[str, ...] = ()
    if config.data.name == "synthetic":
        from experiments.data import synthetic

        names = synthetic.CLASS_NAMES
    elif config.data.name == "pascal_context":
        from experiments.data import pascal_context

        names = pascal_context.CLASS_NAMES
        if num_classes == len(names) + 1:  # the 60-class layout keeps the background as 0
            names = ("background", *names)
    return list(names) if len(names) == num_classes else [str(c) for c in range(num_classes)]


def make_confusion_fn(
    model: nnx.Module, num_classes: int, ignore_label: int
) -> Callable[[Array, Array], Array]:
    """A jitted ``(images, labels) -> (C, C) confusion matrix`` of ``model`` in eval mode."""
    model = nnx.view(model, deterministic=True, use_running_average=True)
    graphdef, state = nnx.split(model)

    @jax.jit
    def confusion(state: nnx.State, images: Array, labels: Array) -> Array:
        outputs = nnx.merge(graphdef, state)(images)
        predictions = metrics.predictions_from_logits(outputs.logits)
        return metrics.confusion_matrix(labels, predictions, num_classes, ignore_label)

    return functools.partial(confusion, state)


def evaluate(
    model: nnx.Module, config: ml_collections.ConfigDict, split: str | None = None
) -> np.ndarray:
    """The (C, C) int64 confusion matrix of ``model`` on ``split`` of ``config.data``."""
    from experiments.data import input_pipeline

    split = split or config.data.eval_split
    dataset = train.load_split(config, split)
    max_examples = config.eval.get("max_examples", None)
    if max_examples:
        dataset = dataset.take(int(max_examples))
    batches = input_pipeline.eval_iterator(
        dataset,
        batch_size=int(config.eval.batch_size),
        height=int(config.image_height),
        width=int(config.image_width),
    )
    num_classes = int(config.model.num_classes)
    confusion_fn = make_confusion_fn(model, num_classes, int(config.data.get("ignore_label", 255)))
    accumulator = metrics.ConfusionMatrix(num_classes)
    for batch in batches:
        accumulator.add(confusion_fn(batch[train.IMAGE_KEY], batch[train.LABEL_KEY]))
    if accumulator.matrix.sum() == 0:
        raise ValueError(f"split {split!r} of {config.data.name!r} has no labelled pixel.")
    return accumulator.matrix


def evaluate_and_save(
    model: nnx.Module,
    config: ml_collections.ConfigDict,
    workdir: str,
    split: str | None = None,
) -> dict[str, float]:
    """Evaluate, write ``<workdir>/eval_<split>/`` and return the summary."""
    split = split or config.data.eval_split
    matrix = evaluate(model, config, split)
    background = config.data.get("background_class", None)
    summary = {
        "pixel_accuracy": metrics.pixel_accuracy(matrix, background),
        "mean_iou": metrics.mean_iou(matrix, background),
    }
    out_dir = os.path.join(workdir, f"eval_{split}")
    metrics.save_confusion_matrix(out_dir, matrix, class_names(config), background)
    with open(os.path.join(out_dir, "summary.json"), "w") as handle:
        recorded = {"split": split, "background_class": background, "eval": config.eval.to_dict()}
        json.dump({**recorded, **summary}, handle, indent=2)
    return summary


def read_summary(
    workdir: str, split: str, config: ml_collections.ConfigDict | None = None
) -> dict[str, float] | None:
    """The saved summary of a run, or None if it was not evaluated on ``split`` (or, given
    ``config``, not under its ``eval`` settings: then it is to be evaluated again)."""
    path = os.path.join(workdir, f"eval_{split}", "summary.json")
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        summary = json.load(handle)
    if config is not None and summary.get("eval") != config.eval.to_dict():
        return None
    return summary


def restore_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, split: str | None = None
) -> dict[str, float]:
    """Evaluate the latest checkpoint of the run in ``workdir``."""
    config = train.resolve_single_loss(config)
    trainer, state = common_train.restore_trainer(train.make_task(config), config, workdir)
    return evaluate_and_save(trainer.model_from_state(state), config, workdir, split)


def main(config: ml_collections.ConfigDict) -> None:
    workdir = flags.FLAGS.workdir
    if workdir is None:
        raise app.UsageError("--workdir is required.")
    summary = restore_and_evaluate(config, workdir, flags.FLAGS.split)
    print(" ".join(f"{key}={value:.4f}" for key, value in summary.items()))


if __name__ == "__main__":
    # Flags only when run as a script (train.py and compare.py define their own).
    cli.define_flags(config_help="The run's config, with any eval.* fields changed. ")
    flags.DEFINE_string("workdir", None, "The run's directory (with checkpoints/; required).")
    flags.DEFINE_string("split", None, "Split to evaluate (default config.data.eval_split).")
    cli.run(main)
