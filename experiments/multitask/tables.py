"""The multi-task comparison's table: every metric, Δm% and the heads that learned.

:func:`compare` trains every scheme (a name of :mod:`experiments.common.schemes`)
and, with ``single_task``, the three single-task baselines at every seed
through the shared :func:`experiments.common.compare.compare`, and writes

* ``<workdir>/results/report.md``: a Markdown table of every metric, Δm%
  against equal weighting and (with ``single_task``) against the three
  single-task runs, the untrained network's metrics, and which heads beat it;
* ``<workdir>/results/results.json``: the same numbers;
* ``<workdir>/results/weights/<scheme>_weights_by_group.png``: each loss's
  weight over training.

Δm% (lower is better) averages the signed relative changes of all nine
metrics (:func:`experiments.multitask.metrics.delta_m`). The single-task
baseline takes each task's metrics from the run that trained that task alone.
A scheme that fails (e.g. diverges to an error) is reported as such and the
others still run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from experiments.common import compare as common_compare
from experiments.common import report
from experiments.multitask import metrics, models
from experiments.multitask.train import make_task

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


def _markdown(
    config: ml_collections.ConfigDict,
    rows: list[dict[str, Any]],
    single_task: bool,
    seeds: Sequence[int],
) -> str:
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
    return "\n".join(lines)


def _metrics(summary: dict[str, Any]) -> dict[str, float]:
    return {key: summary[key] for key in metrics.HIGHER_IS_BETTER}


def single_run(task: str) -> str:
    """The comparison's run name of the single-task baseline of ``task``."""
    return f"single_{task}"


def _seed_rows(
    comparison: common_compare.Comparison, schemes: Sequence[str], single_task: bool, index: int
) -> list[dict[str, Any]]:
    """The rows of the ``index``-th seed: metrics, Δm% and timing (or the run's error)."""
    untrained = _metrics(comparison.untrained[index])
    rows: list[dict[str, Any]] = []
    single: dict[str, dict[str, float]] = {}
    seconds = {name: round(total) for name, total in comparison.seconds.items()}
    if single_task:
        for task in models.TASKS:
            name = single_run(task)
            if name in comparison.errors:
                raise RuntimeError(
                    f"compare: the single-task {task} run failed: {comparison.errors[name]}"
                )
            single[task] = _metrics(comparison.summaries[name][index])
            rows.append({"run": f"single-task {task}", **single[task], "seconds": seconds[name]})
    results: dict[str, dict[str, float]] = {}
    for scheme in schemes:
        row: dict[str, Any] = {"run": scheme, "seconds": seconds[scheme]}
        if scheme in comparison.errors:
            row["error"] = comparison.errors[scheme]
        else:
            results[scheme] = _metrics(comparison.summaries[scheme][index])
            row.update(results[scheme])
            row["learned"] = heads_learned(results[scheme], untrained)
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
    return rows


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
    runs = [
        common_compare.Run(single_run(task), {"single_task": task})
        for task in (models.TASKS if single_task else ())
    ] + [common_compare.Run(scheme, {"scheme": scheme, "single_task": None}) for scheme in schemes]
    outcome: dict[str, Any] = {}

    def report_markdown(
        config: ml_collections.ConfigDict, comparison: common_compare.Comparison
    ) -> str:
        per_seed = [
            _seed_rows(comparison, schemes, single_task, index)
            for index in range(len(comparison.seeds))
        ]
        first_untrained = _metrics(comparison.untrained[0])
        (untrained,) = report.rows_over_seeds(
            {"untrained network": [_metrics(summary) for summary in comparison.untrained]},
            list(metrics.HIGHER_IS_BETTER),
            "run",
        )
        rows = _rows_over_seeds(per_seed)
        several = len(comparison.seeds) > 1
        (comparison.workdir / "results" / "results.json").write_text(
            json.dumps(
                {
                    "seeds": comparison.seeds,
                    "untrained": untrained if several else first_untrained,
                    "rows": rows,
                    "per_seed": per_seed,
                },
                indent=2,
                default=str,
            )
        )
        outcome.update(rows=rows, untrained=first_untrained)
        return _markdown(config, [untrained, *rows], single_task, comparison.seeds)

    outcome["report"] = common_compare.compare(
        make_task,
        config,
        runs,
        workdir,
        report_markdown,
        seeds=seeds,
        evaluate_untrained=True,
        keep_going=True,
        show_progress=show_progress,
    )
    return outcome
