"""Tests of the depth experiment's train / evaluate / compare commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experiments.common import compare as common_compare
from experiments.common import evaluate
from experiments.depth import tables
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
def test_compare_trains_once_and_evaluates_again_only_when_asked(tmp_path: Path) -> None:
    """What a second ``compare`` of the same workdir does. (What a comparison writes —
    summaries, per-image metrics, plots, the report with the paper's rows and the win
    rates — is checked on the documented main job's output, tests/test_readme_commands.py.)"""
    config = test_config.get_config()
    config.data.data_dir = str(tmp_path / "tfds")
    schemes = ["cov"]
    workdir = tmp_path / "work"
    tables.compare(config, schemes, workdir)
    summary_path = (
        evaluate.eval_dir(common_compare.run_dir(workdir, "cov", config.seed), "validation")
        / evaluate.SUMMARY_FILE
    )
    summary = json.loads(summary_path.read_text())
    assert summary["step"] == config.num_train_steps

    # A second call finds the run finished and only rewrites the report.
    stamp = summary_path.stat().st_mtime_ns
    tables.compare(config, schemes, workdir)
    assert summary_path.stat().st_mtime_ns == stamp

    # Other evaluation settings: the trained run is evaluated again, not retrained.
    config.eval.post_process = False
    tables.compare(config, schemes, workdir)
    assert summary_path.stat().st_mtime_ns != stamp
    again = json.loads(summary_path.read_text())
    assert again["eval"]["post_process"] is False and again["step"] == config.num_train_steps

    # Changing the experiment under the same workdir is refused, not silently mixed.
    config.model.width = config.model.width * 2
    with pytest.raises(ValueError, match=r"different config .*model\.width"):
        tables.compare(config, schemes, workdir)
