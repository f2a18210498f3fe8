"""Train a list of runs (schemes, baselines) at several seeds, evaluate them, write the report.

Every task's comparison (paper Tables 3–6, the multi-task Δm% table) is the
same loop: each :class:`Run` trains at each seed in
``<workdir>/runs/<run>/seed<seed>`` and is evaluated on
``config.data.eval_split``. A run already trained to ``config.num_train_steps``
and evaluated under the same ``config.eval`` settings is not redone, one
evaluated under other settings is evaluated again, an interrupted one resumes
from its checkpoints, and reusing a workdir with another experiment config is
refused. Optionally the untrained network of each seed is evaluated too (the
reference a trained head must beat, ``<workdir>/runs/untrained/seed<seed>``).

``<workdir>/results/`` then holds the task's report (``report.md``, laid out
by the task's ``report`` function) and the weights over training of each
run's first seed (``weights/<run>_weights_by_group.png``, and
``..._by_scale.png`` when the losses have scales: the paper's Fig. 1).
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
from absl import logging

from experiments.common import cli, evaluate, logging_utils, report
from experiments.common.schemes import available_schemes
from experiments.common.task import EvaluatedTask

REPORT_FILE = "report.md"
UNTRAINED = "untrained"


@dataclasses.dataclass(frozen=True)
class Run:
    """One row of a comparison.

    Attributes:
      name: the row's key and directory name.
      fields: the config fields this run sets (e.g. ``{"scheme": "cov"}``, or a
        single-loss baseline's ``{"single_loss": "ce"}``).
      learning_rate_factor: multiplies ``config.learning_rate``.
    """

    name: str
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    learning_rate_factor: float = 1.0


@dataclasses.dataclass
class Comparison:
    """What a comparison produced, for the task's report.

    Attributes:
      seeds: the seeds, in order.
      summaries: per run, one evaluation summary per seed (a seed whose run
        failed, or was not trained with ``evaluate_only``, has none).
      errors: per run that failed, the first error.
      untrained: the untrained network's summary per seed (empty if not asked).
      workdir: the comparison's directory.
      seconds: per run, the seconds spent training and evaluating it, over the seeds.
    """

    seeds: list[int]
    summaries: dict[str, list[dict[str, Any]]]
    errors: dict[str, str]
    untrained: list[dict[str, Any]]
    workdir: Path
    seconds: dict[str, float]


def run_dir(workdir: str | Path, run: str, seed: int) -> Path:
    return Path(workdir) / "runs" / run / f"seed{seed}"


def run_config(config: ml_collections.ConfigDict, run: Run, seed: int) -> ml_collections.ConfigDict:
    """A copy of ``config`` with the run's fields, learning rate and ``seed``."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.update(dict(run.fields))
    config.learning_rate = config.learning_rate * run.learning_rate_factor
    config.seed = seed
    return config


def check_runs(runs: Sequence[Run]) -> None:
    """Distinct names and known schemes, checked before any training."""
    names = [run.name for run in runs]
    if not names:
        raise ValueError("compare: no runs given.")
    if len(set(names)) != len(names):
        raise ValueError(f"compare: duplicate runs in {names}.")
    unknown = [
        run.fields["scheme"]
        for run in runs
        if "scheme" in run.fields and run.fields["scheme"] not in available_schemes()
    ]
    if unknown:  # before hours of training, not after the first run's
        raise ValueError(f"compare: unknown schemes {unknown}; known: {list(available_schemes())}.")


def _train_or_read(
    task: EvaluatedTask[Any],
    config: ml_collections.ConfigDict,
    directory: Path,
    *,
    evaluate_only: bool,
    show_progress: bool,
) -> dict[str, Any] | None:
    logging_utils.check_same_config(directory, task.resolve_config(config))
    split = config.data.eval_split
    summary = evaluate.read_summary(directory, split, config)
    if summary is not None:
        logging.info("%s: already trained and evaluated, skipping.", directory)
        return summary
    if evaluate_only:
        return None
    return evaluate.train_and_evaluate(task, config, directory, show_progress=show_progress)


def _untrained(
    task: EvaluatedTask[Any], config: ml_collections.ConfigDict, workdir: Path, seed: int
) -> dict[str, Any]:
    directory = run_dir(workdir, UNTRAINED, seed)
    split = config.data.eval_split
    # Cheap to evaluate again: reuse it only when the whole config is the same.
    recorded = (directory / logging_utils.CONFIG_FILE).exists()
    summary = evaluate.read_summary(directory, split, config, untrained=True)
    if recorded and summary and not logging_utils.config_differences(directory, config):
        return summary
    summary = evaluate.evaluate_untrained(task, config, directory)
    logging_utils.write_config(directory, config)
    return summary


def compare(
    make_task: Callable[[ml_collections.ConfigDict], EvaluatedTask[Any]],
    config: ml_collections.ConfigDict,
    runs: Sequence[Run],
    workdir: str | Path,
    report_markdown: Callable[[ml_collections.ConfigDict, Comparison], str],
    *,
    seeds: Sequence[int] | None = None,
    evaluate_untrained: bool = False,
    keep_going: bool = False,
    evaluate_only: bool = False,
    show_progress: bool = True,
) -> Path:
    """Train (unless done) and evaluate every run at every seed (default ``config.seed``),
    then write ``<workdir>/results/``; returns the report's path.

    Args:
      make_task: the task of a run's config.
      config: the experiment's config.
      runs: the rows, in order.
      workdir: where the runs and the results go.
      report_markdown: the task's table layout: ``(config, comparison) -> Markdown``
        (it may also write more files into ``<workdir>/results``).
      seeds: the seeds every run trains with.
      evaluate_untrained: also evaluate the untrained network of each seed.
      keep_going: a run that fails is recorded (``Comparison.errors``) and the
        others still run; otherwise the error propagates.
      evaluate_only: train nothing; report the runs already evaluated.
      show_progress: the progress bars.
    """
    check_runs(runs)
    seeds = cli.parse_seeds(seeds if seeds is not None else [config.seed])
    workdir = Path(workdir)
    comparison = Comparison(
        seeds, {run.name: [] for run in runs}, {}, [], workdir, {run.name: 0.0 for run in runs}
    )
    for seed in seeds:
        for run in runs:
            run_config_ = run_config(config, run, seed)
            directory = run_dir(workdir, run.name, seed)
            start = time.perf_counter()
            try:
                summary = _train_or_read(
                    make_task(run_config_),
                    run_config_,
                    directory,
                    evaluate_only=evaluate_only,
                    show_progress=show_progress,
                )
            except Exception as error:
                if not keep_going:
                    raise
                logging.error("Run %s failed:\n%s", directory, traceback.format_exc())
                comparison.errors.setdefault(run.name, f"{type(error).__name__}: {error}")
                continue
            finally:
                comparison.seconds[run.name] += time.perf_counter() - start
            if summary is not None:
                comparison.summaries[run.name].append(summary)
        if evaluate_untrained:
            seeded = run_config(config, Run(UNTRAINED), seed)
            comparison.untrained.append(_untrained(make_task(seeded), seeded, workdir, seed))
    results = workdir / "results"
    results.mkdir(parents=True, exist_ok=True)
    for run in runs:
        log_dir = run_dir(workdir, run.name, seeds[0])
        if (log_dir / logging_utils.METRICS_FILE).exists():
            report.plot_run_weights(log_dir, results / "weights", run.name, prefix=f"{run.name}_")
    path = results / REPORT_FILE
    path.write_text(report_markdown(config, comparison))
    return path
