"""Multi-task experiment end to end: NYUv2 through the registry, and the comparison of 2 schemes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fake_datasets import make_fake_nyuv2
from flax import nnx

from experiments.common import evaluate, logging_utils
from experiments.multitask import metrics, tables, train
from experiments.multitask.configs import test as test_config


def nyuv2_config(data_dir: Path):
    config = test_config.get_config()
    config.model.num_classes = 13
    config.data.name = "nyuv2"
    config.data.data_dir = str(data_dir)
    config.data.eval_split = "val"
    config.data.cache = False
    config.model.depth_scale = 1.0
    return config


def test_nyuv2_through_the_registry(tmp_path: Path) -> None:
    make_fake_nyuv2(tmp_path, counts={"train": 4, "val": 3}, height=12, width=16)
    config = nyuv2_config(tmp_path)
    example = next(iter(train.make_task(config).load_split(config, "train")))
    assert set(example) == {"left", "semantic", "depth", "normals", "focal"}
    assert float(example["focal"]) == pytest.approx(518.8579 / 640 * 16)
    batch = next(
        train.make_task(config).train_batches(
            config, start_step=0, process_index=0, process_count=1
        )
    )
    assert batch["left"].shape == (4, 32, 64, 3) and batch["left"].dtype == np.float32
    assert batch["semantic"].shape == (4, 32, 64)
    labels = np.unique(batch["semantic"])
    assert np.all((labels < 13) | (labels == 255)) and 255 in labels
    norms = np.linalg.norm(batch["normals"], axis=-1)
    assert np.all((np.abs(norms - 1) < 1e-3) | (norms == 0))
    model = train.create_model(config, nnx.Rngs(config.seed))
    summary = evaluate.accumulate(train.make_task(config), model, config, "val").summary()
    assert set(summary) == set(metrics.HIGHER_IS_BETTER)
    assert all(np.isfinite(value) for value in summary.values())


def test_missing_targets_and_unknown_focal_are_named() -> None:
    import tensorflow as tf

    from experiments.data import register_dataset

    example = {
        "left": np.zeros((1, 8, 8, 3), np.uint8),
        "semantic": np.zeros((1, 8, 8), np.int32),
        "depth": np.ones((1, 8, 8), np.float32),
    }
    register_dataset(
        "multitask_test_no_normals",
        lambda split, data_dir: tf.data.Dataset.from_tensor_slices(example),
        overwrite=True,
    )
    with_normals = {**example, "normals": np.zeros((1, 8, 8, 3), np.float32)}
    register_dataset(
        "multitask_test_no_focal",
        lambda split, data_dir: tf.data.Dataset.from_tensor_slices(with_normals),
        overwrite=True,
    )
    config = test_config.get_config()
    config.data.name = "multitask_test_no_normals"
    with pytest.raises(ValueError, match=r"lacks \['normals'\]"):
        train.make_task(config).load_split(config, "train")
    config.data.name = "multitask_test_no_focal"
    with pytest.raises(ValueError, match="no 'focal'"):
        train.make_task(config).load_split(config, "train")


def test_compare_rejects_bad_scheme_lists(tmp_path: Path) -> None:
    config = test_config.get_config()
    with pytest.raises(ValueError, match="must include 'equal'"):
        tables.compare(config, ["cov"], tmp_path)
    with pytest.raises(ValueError, match=r"unknown schemes \['covv'\]"):
        tables.compare(config, ["equal", "covv"], tmp_path)


@pytest.mark.slow
def test_compare_trains_and_reports_two_schemes(tmp_path: Path) -> None:
    config = test_config.get_config()
    config.data.data_dir = str(tmp_path / "tfds")
    result = tables.compare(config, ["equal", "mgda_ub"], tmp_path / "compare", show_progress=False)
    rows = {row["run"]: row for row in result["rows"]}
    assert set(rows) == {"equal", "mgda_ub"}
    assert "error" not in rows["mgda_ub"], rows["mgda_ub"].get("error")
    assert rows["equal"]["delta_m_equal"] == 0.0
    assert np.isfinite(rows["mgda_ub"]["delta_m_equal"])
    expected = metrics.delta_m(rows["mgda_ub"], rows["equal"])
    assert rows["mgda_ub"]["delta_m_equal"] == pytest.approx(expected)
    text = Path(result["report"]).read_text()
    assert "| equal |" in text and "| mgda_ub |" in text and "untrained network" in text
    weights = tmp_path / "compare" / "results" / "weights" / "mgda_ub_weights_by_group.png"
    assert weights.stat().st_size > 0
    saved = json.loads((tmp_path / "compare" / "results" / "results.json").read_text())
    assert saved["untrained"] == pytest.approx(result["untrained"])
    # MGDA-UB's weights lie on the simplex at every logged step.
    log = logging_utils.read_metrics(tmp_path / "compare" / "runs" / "mgda_ub" / "seed0")
    for row in log:
        weights = [row[f"weight/{name}"] for name in ("segmentation", "depth", "normals")]
        assert min(weights) >= -1e-6 and sum(weights) == pytest.approx(1.0, abs=1e-5)
