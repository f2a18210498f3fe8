"""Evaluate a multi-task network: mIoU, pixel accuracy, depth errors, normal angle errors.

    python -m experiments.multitask.evaluate \\
        --config=experiments/multitask/configs/cpu.py --workdir=/tmp/mt_cov
    # the untrained network (the reference every head must beat):
    python -m experiments.multitask.evaluate \\
        --config=experiments/multitask/configs/cpu.py --workdir=/tmp/mt_init --untrained

restores the latest checkpoint of ``--workdir`` (same config as training) and
evaluates on ``config.data.eval_split`` (``--split`` to override) at the
network's resolution (the input pipeline's evaluation mode: images resized
bilinearly, targets by nearest neighbour, no augmentation). Writes
``<workdir>/eval_<split>/summary.json`` with every metric of
:mod:`experiments.multitask.metrics`.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from flax import nnx
from jax import Array

from experiments.common import cli
from experiments.common import train as common_train
from experiments.multitask import metrics, train

SUMMARY_FILE = "summary.json"


@functools.partial(jax.jit, static_argnums=0)
def _predict(graphdef: nnx.GraphDef, state: nnx.State, images: Array) -> tuple[Array, ...]:
    # The graph definition is static, so every model of one architecture (all
    # the runs of a comparison) shares one compiled function.
    outputs = nnx.merge(graphdef, state)(images)
    labels = jnp.argmax(outputs.segmentation, axis=-1).astype(jnp.int32)
    return labels, outputs.depth, outputs.normals


def make_predict_fn(model: nnx.Module) -> Callable[[np.ndarray], tuple[Array, ...]]:
    """A jitted ``images -> (class ids, depth, normals)`` of ``model`` in evaluation mode."""
    graphdef, state = nnx.split(nnx.view(model, use_running_average=True))
    return lambda images: _predict(graphdef, state, images)


def evaluate(
    model: nnx.Module, config: ml_collections.ConfigDict, split: str | None = None
) -> dict[str, float]:
    """Every metric of :data:`metrics.HIGHER_IS_BETTER` of ``model`` on ``split``."""
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
    predict = make_predict_fn(model)
    accumulator = metrics.MultiTaskMetrics(
        int(config.model.num_classes), int(config.data.get("ignore_label", 255))
    )
    for batch in batches:
        labels, depth, normals = jax.device_get(predict(batch[train.IMAGE_KEY]))
        accumulator.add(batch, labels=labels, depth=depth, normals=normals)
    if accumulator.confusion.sum() == 0:
        raise ValueError(f"split {split!r} of {config.data.name!r} has no labelled pixel.")
    return accumulator.summary()


def evaluate_and_save(
    model: nnx.Module,
    config: ml_collections.ConfigDict,
    workdir: str,
    split: str | None = None,
) -> dict[str, float]:
    """Evaluate, write ``<workdir>/eval_<split>/summary.json`` and return the summary."""
    split = split or config.data.eval_split
    summary = evaluate(model, config, split)
    out_dir = os.path.join(workdir, f"eval_{split}")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, SUMMARY_FILE), "w") as handle:
        json.dump({"split": split, **summary}, handle, indent=2)
    return summary


def read_summary(workdir: str, split: str) -> dict[str, float] | None:
    """The saved metrics of a run on ``split``, or None if it was not evaluated."""
    path = os.path.join(workdir, f"eval_{split}", SUMMARY_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        summary = json.load(handle)
    return {key: value for key, value in summary.items() if key in metrics.HIGHER_IS_BETTER}


def untrained_model(config: ml_collections.ConfigDict) -> nnx.Module:
    """The network every run starts from (same seed as the trainer's initialisation)."""
    return train.create_model(config, nnx.Rngs(config.seed))


def restore_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, split: str | None = None
) -> dict[str, float]:
    """Evaluate the latest checkpoint of the run in ``workdir``."""
    config = train.resolve_single_task(config)
    trainer, state = common_train.restore_trainer(train.make_task(config), config, workdir)
    return evaluate_and_save(trainer.model_from_state(state), config, workdir, split)


def main(config: ml_collections.ConfigDict) -> None:
    workdir, split = flags.FLAGS.workdir, flags.FLAGS.split
    if workdir is None:
        raise app.UsageError("--workdir is required.")
    if flags.FLAGS.untrained:
        summary = evaluate_and_save(untrained_model(config), config, workdir, split)
    else:
        summary = restore_and_evaluate(config, workdir, split)
    print(" ".join(f"{key}={value:.4f}" for key, value in summary.items()))


if __name__ == "__main__":
    cli.define_flags(config_help="The run's config, with any eval.* fields changed. ")
    flags.DEFINE_string("workdir", None, "The run's directory (with checkpoints/; required).")
    flags.DEFINE_string("split", None, "Split (default config.data.eval_split).")
    flags.DEFINE_bool("untrained", False, "Evaluate the initial network instead.")
    cli.run(main)
