"""The segmentation task on the shared trainer: representation, shared layer, end to end."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from precision import network_rtol

import covjax
from covjax._src import gradients
from experiments.common import evaluate
from experiments.common import train as common_train
from experiments.common.schemes import Scheme
from experiments.segmentation import losses, tables, train
from experiments.segmentation.configs import test as test_config


@functools.cache
def task_and_model() -> tuple[train.SegmentationTask, nnx.Module]:
    config = test_config.get_config()
    task = train.make_task(config)
    rngs = nnx.Rngs(params=jax.random.key(0, impl="rbg"), dropout=jax.random.key(1, impl="rbg"))
    model = task.create_model(config, rngs)
    model.eval()  # deterministic: compare two evaluations of the same network
    return task, model


def batch() -> dict[str, jax.Array]:
    images = jax.random.uniform(jax.random.key(0), (2, 32, 64, 3))
    labels = jax.random.randint(jax.random.key(1), (2, 32, 64), 0, 7)
    return {"left": images, "semantic": labels.at[0, :4].set(255)}


def test_losses_factor_through_the_representation() -> None:
    task, model = task_and_model()
    data = batch()

    @jax.jit
    def both(m, b):
        z, carry = task.representation(m, b)
        return task.losses(m, b), task.losses_from_representation(m, z, carry, b)

    expected, got = both(model, data)
    assert set(expected) == set(losses.LOSS_NAMES)
    for name in losses.LOSS_NAMES:
        # Another fusion of the same float32 network: reordering, derived from the net.
        np.testing.assert_allclose(
            got[name], expected[name], rtol=network_rtol(nnx.state(model, nnx.Param))
        )


def test_shared_layer_is_a_stage3_kernel_all_losses_depend_on() -> None:
    task, model = task_and_model()
    path = task.shared_layer()
    assert path == ("backbone", "layer3", "0", "conv2", "kernel")  # basic blocks, 1 per stage
    params = nnx.state(model, nnx.Param)
    scheme = Scheme("gradnorm", covjax.equal_weighting(), gradient_target="layer")
    selected, names = gradients.select_leaves(params, common_train.gradient_subset(scheme, task))
    assert [name for name, keep in zip(names, selected, strict=True) if keep] == [
        "backbone/layer3/0/conv2/kernel"
    ]
    # Each of CE, SE and AUX has a non-zero gradient at that kernel.
    graphdef, param_state, rest = nnx.split(model, nnx.Param, ...)

    def loss_vector(p):
        values = task.losses(nnx.merge(graphdef, p, rest), batch())
        return jnp.stack([values[name] for name in losses.LOSS_NAMES])

    jacobian = jax.jit(jax.jacrev(loss_vector))(param_state)
    kernel = jacobian["backbone"]["layer3"][0]["conv2"]["kernel"][...]
    assert np.all(np.linalg.norm(np.asarray(kernel).reshape(3, -1), axis=1) > 0)


def test_single_loss_becomes_a_one_hot_static_scheme() -> None:
    config = test_config.get_config()
    config.single_loss = "aux"
    resolved = train.make_task(config).resolve_config(config)
    assert resolved.scheme == "hand_tuned"
    assert resolved.scheme_kwargs.hand_tuned.weights.to_dict() == {
        "ce": 0.0,
        "se": 0.0,
        "aux": 1.0,
    }
    assert config.scheme == "cov"  # the caller's config is not modified
    with pytest.raises(ValueError, match="unknown runs"):
        tables.parse_runs("cov,dice_only")


@pytest.mark.slow
def test_train_evaluate_compare_end_to_end(tmp_path: Path) -> None:
    config = test_config.get_config()
    config.data.data_dir = str(tmp_path / "tfds")
    report = tables.compare(config, tmp_path / "work", ["cov"], show_progress=False)
    text = report.read_text()
    run_dir = tmp_path / "work" / "runs" / "cov" / f"seed{config.seed}"
    summary = evaluate.read_summary(run_dir, "validation")
    assert summary is not None and 0.0 <= summary["mean_iou"] <= 1.0
    matrix = np.load(run_dir / "eval_validation" / "confusion_matrix.npy")
    assert matrix.shape == (7, 7) and matrix.sum() == 4 * 32 * 64  # every pixel is labelled
    assert (tmp_path / "work" / "results" / "weights" / "cov_weights_by_group.png").exists()
    assert "CoV-Weighting" in text and "0.441" in text  # ours next to the paper's
    assert f"{summary['mean_iou']:.3f}" in text
    # Evaluating the checkpoint again reproduces the numbers of the training run.
    again = evaluate.restore_and_evaluate(train.make_task(config), config, run_dir)
    assert again["mean_iou"] == pytest.approx(summary["mean_iou"])
    assert again["pixel_accuracy"] == pytest.approx(summary["pixel_accuracy"])
