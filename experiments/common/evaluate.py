"""Evaluate any task's network: one loop, the task supplying its prediction and its metric.

A task (:class:`~experiments.common.task.EvaluatedTask`) gives the batches of a
split (``eval_batches``), a pure prediction function (``predictor``, jitted
here once per network, so every run of a comparison shares the compiled
code) and a fresh metric (``metric``) that scores each batch on the host.
Everything else is shared: the network in evaluation mode (batch norm on its
running statistics, dropout off), the loop, and the files:
``<workdir>/eval_<split>[_untrained]/summary.json`` holds the metric's
summary and the run it belongs to (split, step, scheme, the ``config.eval``
settings), next to whatever the metric saves itself (per-image rows, a
confusion matrix).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
from flax import nnx
from jax import Array

from experiments.common import sharding
from experiments.common import train as common_train
from experiments.common.task import EvaluatedTask, Metric

SUMMARY_FILE = "summary.json"
#: The batch key of the network's input images.
IMAGE_KEY = "left"


@functools.lru_cache(maxsize=8)
def compiled_predictor(
    graphdef: nnx.GraphDef, predict: Callable[[Any, Array], Any]
) -> Callable[[nnx.State, Array], Any]:
    """``(state, images) -> predict(model in evaluation mode, images)``, jitted; one
    compiled function per network and prediction, shared by every run that uses them."""

    @jax.jit
    def run(state: nnx.State, images: Array) -> Any:
        model = nnx.merge(graphdef, state, copy=True)
        model.eval()  # batch norm on its running statistics, dropout off
        return predict(model, images)

    return run


def accumulate(
    task: EvaluatedTask[Any],
    model: nnx.Module,
    config: ml_collections.ConfigDict,
    split: str | None = None,
) -> Metric:
    """The task's metric of ``model`` over ``split`` (default ``config.data.eval_split``)."""
    split = split or config.data.eval_split
    graphdef, state = nnx.split(model)
    predict = compiled_predictor(graphdef, task.predictor(config))
    metric = task.metric(config)
    for batch in task.eval_batches(config, split):
        metric.add(batch, jax.device_get(predict(state, batch[IMAGE_KEY])))
    return metric


def eval_dir(workdir: str | Path, split: str, untrained: bool = False) -> Path:
    """Where the evaluation of a run on ``split`` is saved."""
    return Path(workdir) / (f"eval_{split}" + ("_untrained" if untrained else ""))


def evaluate_and_save(
    task: EvaluatedTask[Any],
    model: nnx.Module,
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    split: str | None = None,
    *,
    step: int,
    untrained: bool = False,
) -> dict[str, Any]:
    """Evaluate, write :func:`eval_dir`'s ``summary.json`` and the metric's files; return
    the summary (the metric's values and the run they belong to)."""
    split = split or config.data.eval_split
    metric = accumulate(task, model, config, split)
    out_dir = eval_dir(workdir, split, untrained)
    out_dir.mkdir(parents=True, exist_ok=True)
    metric.save(out_dir)
    summary = {
        **metric.summary(),
        "split": split,
        "step": step,
        "scheme": config.scheme,
        "untrained": untrained,
        "eval": config.eval.to_dict(),
    }
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def read_summary(
    workdir: str | Path,
    split: str,
    config: ml_collections.ConfigDict | None = None,
    *,
    untrained: bool = False,
) -> dict[str, Any] | None:
    """The saved summary of a run on ``split``, or None if there is none or, given
    ``config``, it is stale: of an earlier step than ``config.num_train_steps`` or
    under other ``config.eval`` settings (then the run is to be evaluated again)."""
    path = eval_dir(workdir, split, untrained) / SUMMARY_FILE
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    if config is not None:
        if not untrained and summary.get("step") != config.num_train_steps:
            return None
        if summary.get("eval") != config.eval.to_dict():
            return None
    return summary


def train_and_evaluate(
    task: EvaluatedTask[Any],
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train ``config`` into ``workdir`` (resuming if possible), then evaluate the final
    state in memory (restoring it would rebuild the input pipeline and recompile the
    initialisation, about a minute per run on a CPU)."""
    config = task.resolve_config(config)
    trainer, state = common_train.train(task, config, workdir, show_progress=show_progress)
    model = trainer.model_from_state(state)
    return evaluate_and_save(task, model, config, workdir, step=int(state.step))


def restore_and_evaluate(
    task: EvaluatedTask[Any],
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    split: str | None = None,
) -> dict[str, Any]:
    """Evaluate the latest checkpoint of the run in ``workdir``."""
    config = task.resolve_config(config)
    trainer, state = common_train.restore_trainer(task, config, workdir)
    model = trainer.model_from_state(state)
    return evaluate_and_save(task, model, config, workdir, split, step=int(state.step))


def evaluate_untrained(
    task: EvaluatedTask[Any],
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    split: str | None = None,
) -> dict[str, Any]:
    """Evaluate the network every run of ``config.seed`` starts from (the trainer's
    initialisation): the reference point a trained head must beat."""
    task.check_config(config)
    trainer = common_train.Trainer(task, config, sharding.make_mesh(1))
    params, rest = trainer.initial_variables()
    model = trainer.model(params, rest)
    return evaluate_and_save(task, model, config, workdir, split, step=0, untrained=True)
