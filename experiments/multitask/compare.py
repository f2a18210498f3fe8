"""Train and evaluate several weighting schemes on the multi-task experiment; tabulate Δm%.

    python -m experiments.multitask.compare \\
        --config=experiments/multitask/configs/cpu.py --workdir=/tmp/mt_compare \\
        --schemes=equal,uncertainty,gradnorm,mgda_ub,dwa,lsb,lsb_no_difficulty,cov,famo,\\
pcgrad,cagrad,nash_mtl \\
        --single_task

For every scheme (a name of :mod:`experiments.common.schemes`) it trains the
config into ``<workdir>/runs/<scheme>/seed<seed>`` for each ``--seeds`` (default
``config.seed``; resuming finished or partial runs),
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
    seeds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Train every scheme (and optionally the single-task baselines) at every seed
    (default ``config.seed``); write the report.

    Returns ``{"rows": [...], "untrained": {...}, "report": path}`` where each
    row holds the run's metrics, Δm% values and timing (or its error); with
    several seeds the values are :class:`experiments.common.report.MeanStd`
    (Δm% is computed per seed, then averaged) and ``untrained`` is the first
    seed's.
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
    seeds = cli.parse_seeds(seeds if seeds is not None else [config.seed])
    workdir = Path(workdir)
    per_seed = [
        _compare_one_seed(
            run_config(config, seed=seed), schemes, workdir, single_task, show_progress
        )
        for seed in seeds
    ]
    untrained = report.rows_over_seeds(
        {"untrained network": [result["untrained"] for result in per_seed]},
        list(metrics.HIGHER_IS_BETTER),
        "run",
    )[0]
    rows = _rows_over_seeds([result["rows"] for result in per_seed])
    trained = [s for s in schemes if s in per_seed[0]["results"]]
    plots = _plot_weights(workdir, trained, workdir / "runs", seeds[0])
    path = _write_report(workdir, config, [untrained, *rows], plots, single_task, seeds)
    (workdir / "results.json").write_text(
        json.dumps(
            {
                "seeds": seeds,
                "untrained": per_seed[0]["untrained"] if len(seeds) == 1 else untrained,
                "rows": rows,
                "per_seed": per_seed,
            },
            indent=2,
            default=str,
        )
    )
    return {"rows": rows, "untrained": per_seed[0]["untrained"], "report": path}


def _compare_one_seed(
    config: ml_collections.ConfigDict,
    schemes: Sequence[str],
    workdir: Path,
    single_task: bool,
    show_progress: bool,
) -> dict[str, Any]:
    """The runs of one seed (``config.seed``): rows with metrics, Δm% and timing."""
    seed_dir = f"seed{config.seed}"
    runs = workdir / "runs"
    untrained = evaluate.evaluate_and_save(
        evaluate.untrained_model(config), config, str(runs / "untrained" / seed_dir)
    )
    rows: list[dict[str, Any]] = []
    single: dict[str, dict[str, float]] = {}
    if single_task:
        for task in models.TASKS:
            summary, seconds, error = _train_one(
                run_config(config, single_task=task),
                runs / f"single_{task}" / seed_dir,
                show_progress,
            )
            if summary is None:
                raise RuntimeError(f"compare: the single-task {task} run failed: {error}")
            single[task] = summary
            rows.append({"run": f"single-task {task}", **summary, "seconds": round(seconds)})
    results: dict[str, dict[str, float]] = {}
    for scheme in schemes:
        summary, seconds, error = _train_one(
            run_config(config, scheme=scheme, single_task=None),
            runs / scheme / seed_dir,
            show_progress,
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
    return {"rows": rows, "untrained": untrained, "results": results}


def _rows_over_seeds(rows_per_seed: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each run's row over the seeds: metrics and Δm% as mean ± std, heads learned per
    seed, total seconds; a run that failed at any seed keeps its (first) error."""
    if len(rows_per_seed) == 1:
        return list(rows_per_seed[0])
    numbers = [*metrics.HIGHER_IS_BETTER, "delta_m_equal", "delta_m_single"]
    combined = []
    for position, first in enumerate(rows_per_seed[0]):
        same_run = [rows[position] for rows in rows_per_seed]
        errors = [row["error"] for row in same_run if "error" in row]
        row: dict[str, Any] = {
            "run": first["run"],
            "seconds": sum(r.get("seconds", 0) for r in same_run),
        }
        if errors:
            row["error"] = errors[0]
        else:
            present = [name for name in numbers if name in first]
            (averaged,) = report.rows_over_seeds({first["run"]: same_run}, present, "run")
            row.update(averaged)
            if "learned" in first:
                row["learned"] = ", ".join(r["learned"] for r in same_run)
        combined.append(row)
    return combined


def _plot_weights(workdir: Path, schemes: Sequence[str], runs: Path, seed: int) -> dict[str, Path]:
    plots = {}
    for scheme in schemes:
        log = logging_utils.read_metrics(runs / scheme / f"seed{seed}")
        steps, series = logging_utils.weight_series(log)
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
    seeds: Sequence[int],
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
        f"{config.batch_size}, {config.optimizer} lr {config.learning_rate}, seeds "
        f"{', '.join(map(str, seeds))}"
        f"{' (mean ± std over them; Δm% per seed, then averaged)' if len(seeds) > 1 else ''}.\n",
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
    result = compare(
        config,
        flags.FLAGS.schemes,
        workdir,
        single_task=flags.FLAGS.single_task,
        seeds=cli.seeds_from_flags(config),
    )
    print(Path(result["report"]).read_text())


if __name__ == "__main__":
    cli.define_flags()
    flags.DEFINE_string("workdir", None, "Directory for the runs and the report (required).")
    flags.DEFINE_list("schemes", [EQUAL], "Weighting schemes to compare.")
    flags.DEFINE_bool("single_task", False, "Also train the three single-task runs.")
    cli.define_seeds_flag()
    cli.run(main)
