"""Tests of the depth experiment's train / evaluate / compare commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experiments.common import compare as common_compare
from experiments.common import evaluate
from experiments.depth import metrics, tables
from experiments.depth.configs import cpu, paper
from experiments.depth.configs import test as test_config


def test_paper_config_is_the_papers_setting() -> None:
    config = paper.get_config()
    assert (config.model.encoder, config.model.width) == ("resnet50", 1.0)
    assert (config.image_height, config.image_width) == (256, 512)
    assert (config.batch_size, config.optimizer, config.learning_rate) == (8, "adam", 1e-4)
    assert config.num_train_steps == 30 * config.steps_per_epoch
    assert config.steps_per_epoch == 22_600 // 8
    cpu_config = cpu.get_config()
    assert (cpu_config.image_height, cpu_config.image_width) == (64, 128)
    assert cpu_config.num_train_steps <= 1000


def test_win_rate_table_layout() -> None:
    per_image = {
        "a": np.tile([0.1, 0.5, 3.0, 0.2, 0.9, 0.95, 0.99], (4, 1)),
        "b": np.tile([0.2, 0.6, 4.0, 0.3, 0.8, 0.90, 0.98], (4, 1)),
    }
    table = tables.win_rate_table(per_image).strip().splitlines()
    assert table[0] == "| A \\ B | a | b |"
    assert table[2] == "| a | – | 1.0000 |"
    assert table[3] == "| b | 0.0000 | – |"


@pytest.mark.slow
def test_compare_trains_evaluates_and_reports_two_schemes(tmp_path: Path) -> None:
    config = test_config.get_config()
    config.data.data_dir = str(tmp_path / "tfds")
    schemes = ["equal", "cov"]
    markdown = tables.compare(config, schemes, tmp_path / "work").read_text()

    results = tmp_path / "work" / "results"
    for scheme in schemes:
        run = common_compare.run_dir(tmp_path / "work", scheme, config.seed)
        summary = json.loads(
            (evaluate.eval_dir(run, "validation") / evaluate.SUMMARY_FILE).read_text()
        )
        assert summary["step"] == config.num_train_steps
        assert summary["num_images"] == config.data.synthetic.num_validation
        per_image = metrics.load_per_image(evaluate.eval_dir(run, "validation"))
        assert per_image.shape == (config.data.synthetic.num_validation, 7)
        assert np.all(np.isfinite(per_image))
        np.testing.assert_allclose(
            [summary[name] for name in metrics.METRIC_NAMES], per_image.mean(axis=0), rtol=1e-6
        )
        for kind in ("group", "scale"):
            png = results / "weights" / f"{scheme}_weights_by_{kind}.png"
            assert png.read_bytes()[:4] == b"\x89PNG"
        # All 32 weights are logged by name.
        first = (run / "metrics.jsonl").read_text().splitlines()[0]
        assert sum(key.startswith("weight/") for key in json.loads(first)) == 32
        assert f"| {scheme} |" in markdown
    assert "| (untrained network) |" in markdown
    assert "| paper: cov | 0.0912 | 0.5108 |" in markdown
    assert "Win rates" in markdown and "| A \\ B | equal | cov |" in markdown
    assert "reference only" in markdown

    # A second call finds both runs finished and only rewrites the report.
    stamp = (
        (
            evaluate.eval_dir(
                common_compare.run_dir(tmp_path / "work", "cov", config.seed), "validation"
            )
            / evaluate.SUMMARY_FILE
        )
        .stat()
        .st_mtime_ns
    )
    tables.compare(config, schemes, tmp_path / "work")
    assert (
        evaluate.eval_dir(
            common_compare.run_dir(tmp_path / "work", "cov", config.seed), "validation"
        )
        / evaluate.SUMMARY_FILE
    ).stat().st_mtime_ns == stamp

    # Other evaluation settings: the trained runs are evaluated again, not retrained.
    config.eval.post_process = False
    tables.compare(config, schemes, tmp_path / "work")
    summary_path = (
        evaluate.eval_dir(
            common_compare.run_dir(tmp_path / "work", "cov", config.seed), "validation"
        )
        / evaluate.SUMMARY_FILE
    )
    assert summary_path.stat().st_mtime_ns != stamp
    assert json.loads(summary_path.read_text())["eval"]["post_process"] is False

    # Changing the experiment under the same workdir is refused, not silently mixed.
    config.model.width = config.model.width * 2
    with pytest.raises(ValueError, match=r"different config .*model\.width"):
        tables.compare(config, schemes, tmp_path / "work")
