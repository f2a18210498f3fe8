"""Evaluate a depth run: Eigen metrics of post-processed disparities (Godard et al. 2017).

    python -m experiments.depth.evaluate \\
        --config=experiments/depth/configs/cpu.py --workdir=/tmp/depth_cov [--untrained]

For each image of ``config.data.eval_split`` the network predicts the left
disparity of the image and of its mirror, blended with Godard's ramp masks
(``config.eval.post_process``); the disparity is resized to its own ground
truth's native size (test sets may mix image sizes, as KITTI's Eigen split
does) and turned into depth with that image's focal length, baseline and
principal-point offset (``doffs``); ABS_REL, SQ_REL, RMSE, RMSE log and
δ < 1.25^k are computed on the valid ground truth, per image, and averaged.
On the synthetic data the ground truth is the rendered depth. With
``--untrained`` the same is done for the network at initialisation (a
reference point for the trained runs).

Writes ``<workdir>/eval/<split>[_untrained]/metrics.json`` (means, number of
images, which checkpoint) and ``per_image.csv`` (one row per image, for win
rates).
"""

from __future__ import annotations

import csv
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from flax import nnx

from experiments.common import cli, sharding
from experiments.common import train as common_train
from experiments.depth import metrics
from experiments.depth.train import DepthTask, eval_crop, load_split

PER_IMAGE_FILE = "per_image.csv"
SUMMARY_FILE = "metrics.json"


@functools.lru_cache(maxsize=8)
def make_predictor(
    graphdef: nnx.GraphDef, post_process: bool
) -> Callable[[nnx.State, nnx.State, jax.Array], jax.Array]:
    """``(params, rest, images (B,H,W,3)) -> (B,H,W)`` left disparities, jitted
    (one compiled function per network, shared by every run that evaluates it)."""

    @jax.jit
    def predict(params: nnx.State, rest: nnx.State, images: jax.Array) -> jax.Array:
        model = nnx.merge(graphdef, params, rest, copy=True)
        model.eval()  # batch norm (if any) uses its running statistics
        disparity = model(images)[0][..., 0]
        if not post_process:
            return disparity
        mirrored = model(jnp.flip(images, axis=2))[0][..., 0]
        return metrics.post_process_disparity(disparity, mirrored)

    return predict


def evaluate_state(
    config: ml_collections.ConfigDict,
    graphdef: nnx.GraphDef,
    params: nnx.State,
    rest: nnx.State,
    split: str,
) -> np.ndarray:
    """Per-image metrics (N, 7), columns :data:`metrics.METRIC_NAMES`.

    Images are resized to the network's size and predicted in batches; each
    prediction is scored against its own ground truth at that ground truth's
    native size, with its own focal length, baseline and principal-point
    offset (``doffs``, 0 where the source has none), so a split of mixed image
    sizes (KITTI's Eigen test set) is evaluated like monodepth's
    ``evaluate_kitti.py`` does.
    """
    from experiments.data import input_pipeline  # local: imports TensorFlow

    source = load_split(config, split)
    if config.eval.max_examples:
        source = source.take(config.eval.max_examples)
    dataset = input_pipeline.make_eval_dataset(
        source,
        batch_size=config.eval.batch_size,
        height=config.image_height,
        width=config.image_width,
        resize_targets=False,  # score at the ground truth's resolution
    )
    predict = make_predictor(graphdef, config.eval.post_process)
    rows = []
    for batch in input_pipeline.as_numpy_iterator(dataset):
        if "depth" not in batch:
            raise ValueError(
                f"Split {split!r} of {config.data.name!r} has no depth ground truth to score."
            )
        disparities = np.asarray(predict(params, rest, jnp.asarray(batch["left"])))
        try:
            rows.append(
                metrics.evaluate_disparities(
                    input_pipeline.native_targets(batch, "depth"),
                    disparities,
                    batch["focal"],
                    batch["baseline"],
                    doffs=batch.get("doffs", 0.0),
                    min_depth=config.eval.min_depth,
                    max_depth=config.eval.max_depth,
                    crop=eval_crop(config),
                )
            )
        except ValueError as error:
            first = sum(len(block) for block in rows)
            raise ValueError(
                f"Split {split!r} of {config.data.name!r}, batch from example {first}: {error} "
                "(a frame without ground truth? KITTI skips them with missing_depth='skip')"
            ) from None
    if not rows:
        raise ValueError(f"Split {split!r} of {config.data.name!r} is empty.")
    return np.concatenate(rows, axis=0)


def eval_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The settings an evaluation depends on besides the network, recorded with its results
    (``compare`` evaluates a run again when they change)."""
    return {"split": config.data.eval_split, **config.eval.to_dict()}


def save_results(out_dir: Path, per_image: np.ndarray, extra: dict[str, Any]) -> dict[str, Any]:
    """Write ``metrics.json`` (means) and ``per_image.csv``; return the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / PER_IMAGE_FILE).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", *metrics.METRIC_NAMES])
        for index, row in enumerate(per_image):
            writer.writerow([index, *(f"{value:.9g}" for value in row)])
    means = metrics.mean_errors(per_image)._asdict()
    summary = {**means, "num_images": len(per_image), **extra}
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def load_per_image(out_dir: str | Path) -> np.ndarray:
    """The (N, 7) per-image metrics saved by :func:`save_results`."""
    with (Path(out_dir) / PER_IMAGE_FILE).open() as handle:
        rows = list(csv.DictReader(handle))
    return np.asarray([[float(row[name]) for name in metrics.METRIC_NAMES] for row in rows])


def eval_dir(workdir: str | Path, split: str, untrained: bool = False) -> Path:
    return Path(workdir) / "eval" / (split + ("_untrained" if untrained else ""))


def evaluate_run(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    split: str | None = None,
    untrained: bool = False,
) -> dict[str, Any]:
    """Evaluate the latest checkpoint of ``workdir`` (or the untrained network)."""
    split = split or config.data.eval_split
    mesh = sharding.make_mesh(1)
    if untrained:
        trainer = common_train.Trainer(DepthTask(), config, mesh)
        (params, rest), step = trainer.initial_variables(), 0
    else:
        trainer, state = common_train.restore_trainer(DepthTask(), config, workdir, mesh)
        return evaluate_trained(config, workdir, trainer, state, split=split)
    per_image = evaluate_state(config, trainer.graphdef, params, rest, split)
    extra = {
        "split": split,
        "step": step,
        "scheme": config.scheme,
        "untrained": untrained,
        "eval": eval_settings(config),
    }
    return save_results(eval_dir(workdir, split, untrained), per_image, extra)


def evaluate_trained(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    trainer: common_train.Trainer,
    state: common_train.TrainState,
    *,
    split: str | None = None,
) -> dict[str, Any]:
    """Evaluate a trained state already in memory (no checkpoint restore)."""
    split = split or config.data.eval_split
    per_image = evaluate_state(config, trainer.graphdef, state.params, state.rest, split)
    extra = {
        "split": split,
        "step": int(state.step),
        "scheme": config.scheme,
        "untrained": False,
        "eval": eval_settings(config),
    }
    return save_results(eval_dir(workdir, split, False), per_image, extra)


def main(config: ml_collections.ConfigDict) -> None:
    if flags.FLAGS.workdir is None:
        raise app.UsageError("--workdir is required.")
    summary = evaluate_run(
        config,
        flags.FLAGS.workdir,
        split=flags.FLAGS.split,
        untrained=flags.FLAGS.untrained,
    )
    print(json.dumps(summary, indent=2))


def define_flags() -> None:
    """The command-line flags (defined only when run as a program, so modules import freely)."""
    cli.define_flags(config_help="The run's config, with any eval.* fields changed. ")
    flags.DEFINE_string("workdir", None, "The run's directory (with checkpoints; required).")
    flags.DEFINE_string("split", None, "Split to evaluate (default: config.data.eval_split).")
    flags.DEFINE_bool("untrained", False, "Evaluate the network at initialisation.")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
