"""Train and evaluate several weighting schemes on the multi-task experiment; tabulate Δm%.

    python -m experiments.multitask.compare \\
        --config=experiments/multitask/configs/cpu.py --workdir=/tmp/mt_compare \\
        --schemes=equal,uncertainty,gradnorm,mgda_ub,dwa,lsb,lsb_no_difficulty,cov,famo,\\
pcgrad,cagrad,nash_mtl \\
        --single_task

For every scheme (a name of :mod:`experiments.common.schemes`) it trains the
config into ``<workdir>/runs/<scheme>`` (resuming finished or partial runs),
evaluates it, and writes

* ``<workdir>/report.md``: a Markdown table of every metric, Δm% against
  equal weighting and (with ``--single_task``) against the three single-task
  runs, the untrained network's metrics, and which heads beat it;
* ``<workdir>/results.json``: the same numbers;
* ``<workdir>/plots/<scheme>_weights.png``: each loss's weight over training.

Δm% (lower is better) averages the signed relative changes of all nine
metrics (:func:`experiments.multitask.metrics.delta_m`). The single-task
baseline takes each task's metrics from the run that trained that task alone.
A scheme that fails (e.g. diverges to an error) is reported as such and the
others still run.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
from absl import app, flags, logging

from experiments.common import (
    cli,
    logging_utils,
    report,
)
from experiments.common.schemes import SCHEMES
from experiments.multitask import evaluate, metrics, models, train

#: A head "learned" when its primary metric beats the untrained network's.
PRIMARY_METRICS: dict[str, str] = {
    "segmentation": "mean_iou",
    "depth": "abs_error",
    "normals": "mean_angle",
}
#: Table columns: (key, header).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("run", "run"),
    ("mean_iou", "mIoU ↑"),
    ("pixel_accuracy", "pix acc ↑"),
    ("abs_error", "abs err ↓"),
    ("rel_error", "rel err ↓"),
    ("mean_angle", "mean ° ↓"),
    ("median_angle", "median ° ↓"),
    ("within_11.25", "<11.25° ↑"),
    ("within_22.5", "<22.5° ↑"),
    ("within_30", "<30° ↑"),
    ("delta_m_equal", "Δm% vs equal ↓"),
    ("delta_m_single", "Δm% vs single ↓"),
    ("learned", "heads beating init"),
    ("seconds", "train+eval s"),
)
EQUAL = "equal"


def run_config(config: ml_collections.ConfigDict, **overrides: Any) -> ml_collections.ConfigDict:
    """A copy of ``config`` with ``overrides`` applied."""
    copy = ml_collections.ConfigDict(config.to_dict())
    copy.update(overrides)
    return copy


def heads_learned(summary: dict[str, float], untrained: dict[str, float]) -> str:
    """``"k/3"``: the heads whose primary metric beats the untrained network's."""
    better = 0
    for metric in PRIMARY_METRICS.values():
        sign = 1.0 if metrics.HIGHER_IS_BETTER[metric] else -1.0
        better += int(sign * (summary[metric] - untrained[metric]) > 0)
    return f"{better}/{len(PRIMARY_METRICS)}"


def single_task_baseline(single: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each task's metrics taken from the run that trained that task alone."""
    return {
        metric: single[task][metric]
        for task, names in metrics.TASK_METRICS.items()
        for metric in names
    }


def _train_one(
    config: ml_collections.ConfigDict, run_dir: Path, show_progress: bool
) -> tuple[dict[str, float] | None, float, str | None]:
    start = time.perf_counter()
    try:
        summary = train.train_and_evaluate(config, str(run_dir), show_progress=show_progress)
    except Exception as error:  # a failing scheme is reported; the others still run
        logging.error("Run %s failed:\n%s", run_dir, traceback.format_exc())
        return None, time.perf_counter() - start, f"{type(error).__name__}: {error}"
    return summary, time.perf_counter() - start, None


def compare(
    config: ml_collections.ConfigDict,
    schemes: Sequence[str],
    workdir: str | Path,
    *,
    single_task: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train every scheme (and optionally the single-task baselines); write the report.

    Returns ``{"rows": [...], "report": path}`` where each row holds the run's
    metrics, Δm% values and timing (or its error).
    """
    if not schemes:
        raise ValueError("compare: no schemes given.")
    if EQUAL not in schemes:
        raise ValueError(
            f"compare: the schemes must include {EQUAL!r}, the baseline of Δm%; got {schemes}."
        )
    unknown = [scheme for scheme in schemes if scheme not in SCHEMES]
    if unknown:  # before hours of training, not after
        raise ValueError(f"compare: unknown schemes {unknown}; known: {sorted(SCHEMES)}.")
    workdir = Path(workdir)
    runs = workdir / "runs"
    untrained = evaluate.evaluate_and_save(
        evaluate.untrained_model(config), config, str(runs / "untrained")
    )
    rows: list[dict[str, Any]] = []
    single: dict[str, dict[str, float]] = {}
    if single_task:
        for task in models.TASKS:
            summary, seconds, error = _train_one(
                run_config(config, single_task=task), runs / f"single_{task}", show_progress
            )
            if summary is None:
                raise RuntimeError(f"compare: the single-task {task} run failed: {error}")
            single[task] = summary
            rows.append({"run": f"single-task {task}", **summary, "seconds": round(seconds)})
    results: dict[str, dict[str, float]] = {}
    for scheme in schemes:
        summary, seconds, error = _train_one(
            run_config(config, scheme=scheme, single_task=None), runs / scheme, show_progress
        )
        row: dict[str, Any] = {"run": scheme, "seconds": round(seconds)}
        if summary is None:
            row["error"] = error
        else:
            results[scheme] = summary
            row.update(summary)
            row["learned"] = heads_learned(summary, untrained)
        rows.append(row)
    baselines: dict[str, dict[str, float]] = {}
    if EQUAL in results:
        baselines["delta_m_equal"] = results[EQUAL]
    if single:
        baselines["delta_m_single"] = single_task_baseline(single)
    for row in rows:
        if "error" in row:
            continue
        for column, baseline in baselines.items():
            row[column] = metrics.delta_m(row, baseline)
    untrained_row = {"run": "untrained network", **untrained}
    plots = _plot_weights(workdir, [s for s in schemes if s in results], runs)
    path = _write_report(workdir, config, [untrained_row, *rows], plots, single_task)
    (workdir / "results.json").write_text(
        json.dumps({"untrained": untrained, "rows": rows}, indent=2, default=str)
    )
    return {"rows": rows, "untrained": untrained, "report": path}


def _plot_weights(workdir: Path, schemes: Sequence[str], runs: Path) -> dict[str, Path]:
    plots = {}
    for scheme in schemes:
        steps, series = logging_utils.weight_series(logging_utils.read_metrics(runs / scheme))
        if steps:
            plots[scheme] = report.plot_weights(
                steps,
                series,
                workdir / "plots" / f"{scheme}_weights.png",
                title=f"multi-task / {scheme}: loss weights",
            )
    return plots


def _write_report(
    workdir: Path,
    config: ml_collections.ConfigDict,
    rows: list[dict[str, Any]],
    plots: dict[str, Path],
    single_task: bool,
) -> Path:
    columns = [key for key, _ in COLUMNS if single_task or key != "delta_m_single"]
    headers = [header for key, header in COLUMNS if key in columns]
    bold = {key: "max" if up else "min" for key, up in metrics.HIGHER_IS_BETTER.items()}
    bold.update({"delta_m_equal": "min", "delta_m_single": "min"})
    lines = [
        "# Multi-task pixelwise experiment: segmentation + depth + normals\n",
        f"Data: `{config.data.name}` ({config.data.eval_split} split), "
        f"{config.image_height}×{config.image_width}, backbone {config.model.backbone} "
        f"× {config.model.width}, {config.num_train_steps} steps of batch "
        f"{config.batch_size}, {config.optimizer} lr {config.learning_rate}, seed {config.seed}.\n",
        "Δm% = mean over the 9 metrics of ±(M − M_base)/M_base × 100, signed so that "
        "lower is better. Bold: best of each column.\n",
        report.markdown_table(rows, columns, headers=headers, bold_best=bold),
    ]
    failed = [row for row in rows if "error" in row]
    if failed:
        lines.append("## Failed runs\n")
        lines.append("".join(f"- `{row['run']}`: {row['error']}\n" for row in failed))
    if plots:
        lines.append("## Weights over training\n")
        lines.append(
            "".join(
                f"- {scheme}: ![]({path.relative_to(workdir)})\n" for scheme, path in plots.items()
            )
        )
    path = workdir / "report.md"
    path.write_text("\n".join(lines))
    return path


def main(config: ml_collections.ConfigDict) -> None:
    workdir = flags.FLAGS.workdir
    if workdir is None:
        raise app.UsageError("--workdir is required.")
    result = compare(config, flags.FLAGS.schemes, workdir, single_task=flags.FLAGS.single_task)
    print(Path(result["report"]).read_text())


if __name__ == "__main__":
    cli.define_flags()
    flags.DEFINE_string("workdir", None, "Directory for the runs and the report (required).")
    flags.DEFINE_list("schemes", [EQUAL], "Weighting schemes to compare.")
    flags.DEFINE_bool("single_task", False, "Also train the three single-task runs.")
    cli.run(main)
