"""The depth comparison's tables: paper Tables 3–5 (Groenendijk et al. 2021).

:func:`compare` trains and evaluates schemes at seeds through the shared
:func:`experiments.common.compare.compare`; ``<workdir>/results/report.md``
then holds the paper's Table 3/4 layout (ARD, SRD, RMSE, RMSE log, δ1–δ3 per
scheme; with several seeds, mean ± standard deviation over them) with the
paper's own numbers below ours, clearly labelled, and the win-rate table
(paper Table 5: the fraction of images on which the row's scheme beats the
column's on a majority of the 7 metrics; with several seeds, mean ± std of
the per-seed rates, marked "within spread" when a tie, 0.5, lies within one
standard deviation); ``results/weights/`` the weights over training per loss
group and per scale (the analogue of the paper's Fig. 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from experiments.common import compare as common_compare
from experiments.common import evaluate, report
from experiments.depth import metrics
from experiments.depth.train import DepthTask

METRIC_HEADERS = ("ARD", "SRD", "RMSE", "RMSE log", "δ<1.25", "δ<1.25²", "δ<1.25³")
#: Lower is better for the errors, higher for the accuracies.
BEST = {
    name: ("max" if direction > 0 else "min")
    for name, direction in zip(metrics.METRIC_NAMES, metrics.METRIC_DIRECTION, strict=True)
}

#: The paper's numbers (Groenendijk et al. 2021), tested on KITTI Eigen (Tables 3 and 4).
PAPER_TABLE_4_KITTI = {
    "equal": (0.0923, 0.5477, 3.9856, 0.1464, 0.8971, 0.9763, 0.9936),
    "hand_tuned": (0.0944, 0.5609, 3.8678, 0.1469, 0.8950, 0.9731, 0.9926),
    "uncertainty": (1.0712, 18.5936, 11.7052, 0.7417, 0.3226, 0.4760, 0.5989),
    "gradnorm": (0.1152, 1.1530, 4.7621, 0.1759, 0.8669, 0.9642, 0.9887),
    "mgda_ub": (6.3400, 442.7141, 65.5198, 1.9283, 0.0097, 0.0265, 0.0507),
    "cov": (0.0912, 0.5108, 3.8717, 0.1425, 0.9023, 0.9775, 0.9942),
}
PAPER_TABLE_3_CITYSCAPES = {
    "equal": (0.2106, 1.7460, 6.6303, 0.3838, 0.6887, 0.8580, 0.9231),
    "hand_tuned": (0.1955, 1.6028, 6.3803, 0.3507, 0.7182, 0.8734, 0.9336),
    "cov": (0.1988, 1.6673, 6.6989, 0.3118, 0.6988, 0.8723, 0.9426),
}
PAPER_WIN_RATES = {("cov", "equal"): 0.5537, ("cov", "hand_tuned"): 0.5583}


def win_rate_table(per_image: Mapping[str, np.ndarray | Sequence[np.ndarray]]) -> str:
    """Markdown matrix: entry (A, B) = fraction of images where A beats B (paper Table 5).

    ``per_image[name]`` is one (N, 7) array, or one per seed: then each entry is
    the mean ± std of the per-seed rates (:func:`experiments.common.report.win_rate_cell`).
    """
    by_seed = {
        name: [arrays] if isinstance(arrays, np.ndarray) else list(arrays)
        for name, arrays in per_image.items()
    }
    names = list(by_seed)
    rows = []
    for a in names:
        row: dict[str, Any] = {"scheme": a}
        for b in names:
            if a != b:
                rates = [
                    metrics.win_rate(ours, theirs)
                    for ours, theirs in zip(by_seed[a], by_seed[b], strict=True)
                ]
                row[b] = report.win_rate_cell(rates)
        rows.append(row)
    return report.markdown_table(rows, ["scheme", *names], headers=["A \\ B", *names])


def results_markdown(
    config: ml_collections.ConfigDict,
    summaries: Mapping[str, Sequence[Mapping[str, Any]]],
    untrained: Sequence[Mapping[str, Any]],
    per_image: Mapping[str, Sequence[np.ndarray]],
    seeds: Sequence[int] = (0,),
) -> str:
    """The whole results page (tables only; the plots are separate files).

    ``summaries[scheme]``, ``untrained`` and ``per_image[scheme]`` hold one
    entry per seed of ``seeds``.
    """
    columns = ["scheme", *metrics.METRIC_NAMES]
    headers = ["Scheme", *METRIC_HEADERS]
    ours = report.rows_over_seeds(
        {**summaries, "(untrained network)": untrained}, metrics.METRIC_NAMES, "scheme"
    )
    spread = " (mean ± standard deviation over the seeds)" if len(seeds) > 1 else ""
    lines = [
        "# Depth: weighting schemes compared\n",
        f"Ours: {config.data.name} data ({config.data.eval_split} split, "
        f"{untrained[0]['num_images']} images), MonoDepth {config.model.encoder} width "
        f"{config.model.width}, {config.image_height}×{config.image_width}, batch "
        f"{config.batch_size}, {config.optimizer} lr {config.learning_rate}, "
        f"{config.num_train_steps} steps, seeds {', '.join(map(str, seeds))}{spread}, "
        f"post-processing {'on' if config.eval.post_process else 'off'}. "
        "Best of our rows in bold.\n",
        report.markdown_table(ours, columns, headers=headers, bold_best=BEST),
    ]
    for title, paper in (
        (
            "Paper, Table 4 (trained and tested on KITTI, Eigen split) — reference only, "
            "not our runs",
            PAPER_TABLE_4_KITTI,
        ),
        (
            "Paper, Table 3 (trained on Cityscapes, tested on KITTI Eigen) — reference only, "
            "not our runs",
            PAPER_TABLE_3_CITYSCAPES,
        ),
    ):
        rows = [
            {"scheme": f"paper: {name}", **dict(zip(metrics.METRIC_NAMES, values, strict=True))}
            for name, values in paper.items()
        ]
        lines += [f"\n## {title}\n", report.markdown_table(rows, columns, headers=headers)]
    lines += [
        "\n## Win rates (paper Table 5 analogue)\n",
        "Fraction of test images on which the row's scheme beats the column's on a "
        "majority of the 7 metrics"
        + (
            '; mean ± std over the seeds, "within spread" where a tie (0.5) lies within '
            "one standard deviation.\n"
            if len(seeds) > 1
            else ".\n"
        ),
        win_rate_table(per_image),
    ]
    paper_rates = ", ".join(f"{a} over {b}: {rate:.4f}" for (a, b), rate in PAPER_WIN_RATES.items())
    lines.append(f"\nPaper (KITTI, reference only): {paper_rates}.\n")
    return "\n".join(lines) + "\n"


def report_markdown(
    config: ml_collections.ConfigDict, comparison: common_compare.Comparison
) -> str:
    """The comparison's page: our table, the paper's, and the win rates."""
    split = config.data.eval_split
    per_image = {
        scheme: [
            metrics.load_per_image(
                evaluate.eval_dir(common_compare.run_dir(comparison.workdir, scheme, seed), split)
            )
            for seed in comparison.seeds
        ]
        for scheme in comparison.summaries
    }
    return results_markdown(
        config, comparison.summaries, comparison.untrained, per_image, comparison.seeds
    )


def compare(
    config: ml_collections.ConfigDict,
    schemes: Sequence[str],
    workdir: str | Path,
    seeds: Sequence[int] | None = None,
    *,
    show_progress: bool = True,
) -> Path:
    """Train and evaluate every scheme at every seed (default ``config.seed``) and the
    untrained network of each seed; write ``<workdir>/results/``. Returns the report's path."""
    runs = [common_compare.Run(scheme, {"scheme": scheme}) for scheme in schemes]
    return common_compare.compare(
        lambda _: DepthTask(), config, runs, workdir, report_markdown,
        seeds=seeds, evaluate_untrained=True, show_progress=show_progress,
    )  # fmt: skip
