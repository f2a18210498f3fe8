"""The experiments' command lines: declared config fields, clear errors, eval changes, Ctrl-C."""

from __future__ import annotations

import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import toy_task
import yaml

from experiments.common import cli, data, logging_utils, report, schemes
from experiments.common import train as common_train
from experiments.common.config import DATA_SOURCE_OPTIONS, ConfigError
from experiments.data import registry
from experiments.depth import metrics as depth_metrics
from experiments.depth import tables as depth_tables
from experiments.depth import train as depth_train
from experiments.depth.configs import cpu as depth_cpu
from experiments.depth.configs import test as depth_test
from experiments.multitask import metrics as multitask_metrics
from experiments.multitask import tables as multitask_tables
from experiments.segmentation import tables as segmentation_tables

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(
    str(path) for path in REPO.glob("experiments/*/configs/*.py") if path.stem != "__init__"
)


@pytest.mark.parametrize("source", sorted(DATA_SOURCE_OPTIONS))
def test_declared_data_options_are_the_loaders_keywords(source: str) -> None:
    parameters = inspect.signature(registry.dataset_loader(source)).parameters.values()
    keywords = {
        parameter.name: parameter.default
        for parameter in parameters
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }
    declared = {option: default for option, (_, default) in DATA_SOURCE_OPTIONS[source].items()}
    assert declared == keywords


def test_documented_dotted_flags_set_the_fields() -> None:
    """The real command line (--show_config prints the config the run would use)."""
    overrides = [
        f"--config={REPO}/experiments/depth/configs/paper.py",
        "--config.data.kitti.split_file=/data/splits/eigen_{split}_files.txt",
        "--config.scheme=cov_decay",
        "--config.scheme_kwargs.cov_decay.decay=0.95",
        "--config.scheme_kwargs.static.weights=(0.5, 2.0)",
        "--config.scheme_gradient_target.pcgrad=representation",
        "--config.eval.crop=None",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "experiments.depth.main", *overrides, "--show_config"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    shown = ml_collections.ConfigDict(yaml.load(result.stdout, Loader=yaml.UnsafeLoader))
    assert shown.data.kitti.split_file == "/data/splits/eigen_{split}_files.txt"
    assert data.loader_options(shown)["split_file"] == shown.data.kitti.split_file
    assert "height" not in data.loader_options(shown)  # the synthetic section stays out
    assert shown.scheme_kwargs.cov_decay.decay == 0.95
    assert tuple(shown.scheme_kwargs.static.weights) == (0.5, 2.0)
    assert shown.scheme_gradient_target.pcgrad == "representation"
    assert depth_train.eval_crop(shown) is None
    listed = subprocess.run(
        [sys.executable, "-m", "experiments.depth.main", "--list_schemes"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert "cov_decay: CoV-Weighting, EW statistics" in listed.stdout
    assert "    decay (float) = 0.99" in listed.stdout


def test_a_misspelt_field_names_the_fields_that_exist() -> None:
    argv = [
        "prog",
        f"--config={REPO}/experiments/depth/configs/cpu.py",
        "--config.num_train_steps=3",
        "--config.scheme_kwargs.cov.decy=0.9",
    ]
    message = cli.unknown_field_message(argv)
    assert message is not None
    assert "config.scheme_kwargs.cov has no field 'decy'" in message
    assert "Did you mean 'decay'?" in message and "warmup_steps" in message
    argv[-1] = "--config.data.kittti.split_file=x"
    assert "config.data has no field 'kittti'. Did you mean 'kitti'?" in (
        cli.unknown_field_message(argv) or ""
    )


@pytest.mark.parametrize("path", CONFIGS)
def test_every_config_declares_every_schemes_defaults(path: str) -> None:
    config = cli.load_config_file(path)
    context = schemes.SchemeContext(
        task=toy_task.ToyTask(),
        optimizer=common_train.make_optimizer(config),
        steps_per_epoch=64,  # test.py's 2 steps are too few for multi-loss rebalancing
        parameter_count=lambda target: 8,  # MoCo, M-ConFIG, ExcessMTL: P-vectors per loss
    )
    for name in schemes.available_schemes():
        kwargs = config.scheme_kwargs[name].to_dict()
        if name == "static":
            kwargs["weights"] = (1.0,) * len(toy_task.ToyTask().names)
        scheme = schemes.build_scheme(name, context, kwargs)
        assert scheme.name == name
    cov_decay = {p.name: p.default for p in schemes.hyperparameters("cov_decay")}
    assert cov_decay["decay"] == 0.99  # the entry's fixed value, not the constructor's


def test_data_config_is_checked_before_anything_is_built() -> None:
    config = depth_cpu.get_config()
    config.data.name = "kitti"  # the cpu config's synthetic sizes no longer reach the loader
    data.check_data_config(config)
    config.data.name = "kitty"
    with pytest.raises(ConfigError, match=r"Unknown config.data.name 'kitty'.*'kitti'"):
        data.check_data_config(config)
    config.data.name = "kitti"
    config.data.kitti.height = 64  # an option the KITTI loader does not take
    with pytest.raises(ConfigError, match=r"config.data.kitti does not fit .*'split_file'"):
        data.check_data_config(config)
    config = depth_test.get_config()
    config.eval.crop = "gard"
    with pytest.raises(ConfigError, match=r"eval.crop must be one of \('garg', 'eigen', 'none'\)"):
        common_train.check_config(depth_train.DepthTask(), config)


def test_eval_settings_and_unused_options_do_not_make_another_run(tmp_path: Path) -> None:
    config = depth_test.get_config()
    logging_utils.write_config(tmp_path, config)
    config.eval.crop = "garg"
    config.eval.max_examples = 2
    config.scheme_kwargs.dwa.temperature = 5.0  # the run uses cov
    config.data.kitti.split_file = "x"  # the run uses synthetic
    assert logging_utils.config_differences(tmp_path, config) == []
    config.scheme_kwargs.cov.warmup_steps = 5
    config.data.synthetic.num_train = 3
    assert [line.split(":")[0] for line in logging_utils.config_differences(tmp_path, config)] == [
        "data.synthetic.num_train",
        "scheme_kwargs.cov.warmup_steps",
    ]


def test_values_over_seeds_and_win_rates_within_the_spread() -> None:
    summary = report.over_seeds([0.2, 0.3, 0.4])
    assert summary.mean == pytest.approx(0.3) and summary.std == pytest.approx(0.1)
    assert report.format_value(summary, 2) == "0.30 ± 0.10"
    assert report.win_rate_cell([0.5]) == 0.5
    assert report.win_rate_cell([0.55, 0.45, 0.6]) == "0.5333 ± 0.0764 (within spread)"
    assert report.win_rate_cell([0.7, 0.8, 0.75]) == report.over_seeds([0.7, 0.8, 0.75])
    rows = report.rows_over_seeds(
        {"a": [{"m": 1.0}, {"m": 3.0}], "b": [{"m": 0.5}, {"m": 0.7}]}, ["m"], "name"
    )
    table = report.markdown_table(rows, ["name", "m"], digits=1, bold_best={"m": "min"})
    assert "| a | 2.0 ± 1.4 |" in table and "| b | **0.6 ± 0.1** |" in table
    np.testing.assert_allclose(rows[0]["m"].std, np.std([1.0, 3.0], ddof=1))


def test_compare_tables_over_seeds() -> None:
    """The three compare reports with two seeds: mean ± std, Δm% per seed, win-rate spread."""
    config = depth_test.get_config()
    errors = np.tile([0.2, 1.0, 4.0, 0.3, 0.7, 0.9, 0.95], (4, 1))
    better = errors * [0.9, 0.9, 0.9, 0.9, 1.1, 1.05, 1.01]
    summaries = {
        "equal": [dict(zip(depth_metrics.METRIC_NAMES, errors[0], strict=True))] * 2,
        "cov": [dict(zip(depth_metrics.METRIC_NAMES, row, strict=True)) for row in better[:2]],
    }
    untrained = [{**summaries["equal"][0], "num_images": 4}] * 2
    per_image = {"equal": [errors, errors], "cov": [better, errors]}
    text = depth_tables.results_markdown(config, summaries, untrained, per_image, seeds=(0, 1))
    assert "seeds 0, 1 (mean ± standard deviation over the seeds)" in text
    assert "| equal | 0.2000 ± 0.0000 |" in text
    # cov wins every image at seed 0 and ties at seed 1: 0.5 ± 0.71 straddles a tie.
    assert "| cov | 0.5000 ± 0.7071 (within spread) | – |" in text

    per_seed = [
        {"pixel_accuracy": 0.8, "mean_iou": 0.5},
        {"pixel_accuracy": 0.9, "mean_iou": 0.7},
    ]
    (row,) = segmentation_tables.table_rows({"cov": per_seed}, 1e-3)
    assert row["miou"] == report.over_seeds([0.5, 0.7])
    assert segmentation_tables.table_rows({"cov": []}, 1e-3)[0]["miou"] is None

    names = list(multitask_metrics.HIGHER_IS_BETTER)
    seed_rows = [
        [{"run": "equal", **dict.fromkeys(names, 1.0), "delta_m_equal": 0.0, "learned": "3/3"}],
        [{"run": "equal", **dict.fromkeys(names, 3.0), "delta_m_equal": 0.0, "learned": "2/3"}],
    ]
    (combined,) = multitask_tables._rows_over_seeds(seed_rows)
    assert combined["mean_iou"] == report.over_seeds([1.0, 3.0])
    assert combined["learned"] == "3/3, 2/3"


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path: Path) -> None:
    """A real training process sent SIGINT mid-run: checkpoint at the current step, one line."""
    workdir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "experiments.depth.main",
        "train",
        f"--config={REPO}/experiments/depth/configs/test.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={tmp_path / 'data'}",
        "--config.num_train_steps=100000",
        "--config.checkpoint_every_steps=100000",
        "--config.log_every_steps=1",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 600
        log = workdir / logging_utils.METRICS_FILE
        while not (log.exists() and len(log.read_text().splitlines()) >= 2):
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "training did not start within 600 s"
            time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == cli.INTERRUPTED_EXIT_STATUS, stderr[-3000:]
    assert "Traceback" not in stderr
    saved = sorted(
        int(path.name) for path in (workdir / "checkpoints").iterdir() if path.name.isdigit()
    )
    assert len(saved) == 1 and 2 <= saved[0] < 100000
    last_logged = json.loads(log.read_text().splitlines()[-1])["step"]
    assert saved[0] == last_logged  # the step the loop had finished, nothing lost
    assert (
        f"Interrupted: depth/cov saved at step {saved[0]} of 100000 in {workdir / 'checkpoints'}; "
        "run the same command to resume." in stdout
    )
    # Python INFO logs (Orbax's, absl format "I1207 12:00:00.0 123 file.py:35] ...") go to
    # log.txt, not to the terminal (TensorFlow's C++ start-up lines are not Python logs).
    python_info = re.search(r"^I\d{4} [\d:.]+ +\d+ \w+\.py:\d+\]", stderr, flags=re.M)
    assert python_info is None, stderr[-3000:]
    assert "Finished saving checkpoint" in (workdir / cli.LOG_FILE).read_text()
