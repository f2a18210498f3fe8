"""The segmentation comparison's table: the paper's Table 6, pACC and mIoU side by side.

:func:`compare` trains each row (single-loss CE / AUX / SE, equal,
hand-tuned, uncertainty, GradNorm, multi-objective, CoV, in the paper's
order) at each seed through the shared :func:`experiments.common.compare.compare`,
then ``<workdir>/results/report.md`` holds our pACC and mIoU and, in
separate labelled columns, the paper's PASCAL Context numbers (Groenendijk et
al. 2021, Table 6; ours come from whatever data the config names, e.g. the
synthetic scenes, so the two are not directly comparable). Every row is
evaluated on the main (EncHead) logits, as in the paper: the AUX-only and
SE-only networks never train that head, hence their near-zero scores there
too. With several seeds, each cell is the mean ± standard deviation over them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from experiments.common import compare as common_compare
from experiments.common import report
from experiments.segmentation.train import make_task


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of Table 6: the run and the paper's numbers.

    Attributes:
      label: the row's name in the table.
      scheme: name in :data:`experiments.common.schemes.SCHEMES` (ignored for single-loss runs).
      single_loss: "ce", "se" or "aux" for the single-loss rows, else None.
      learning_rate_factor: multiplies ``config.learning_rate`` (CoV at several rates).
      paper: the paper's (pACC, mIoU) on PASCAL Context, or None.
    """

    label: str
    scheme: str = "hand_tuned"
    single_loss: str | None = None
    learning_rate_factor: float = 1.0
    paper: tuple[float, float] | None = None


#: The rows of the paper's Table 6, in its order.
RUNS: dict[str, Row] = {
    "ce_only": Row("CE only", single_loss="ce", paper=(0.769, 0.440)),
    "aux_only": Row("AUX only", single_loss="aux", paper=(0.012, 0.004)),
    "se_only": Row("SE only", single_loss="se", paper=(0.010, 0.001)),
    "equal": Row("Equal", scheme="equal", paper=(0.759, 0.419)),
    "hand_tuned": Row("Hand-tuned", scheme="hand_tuned", paper=(0.768, 0.437)),
    "uncertainty": Row("Uncertainty", scheme="uncertainty", paper=(0.781, 0.448)),
    "gradnorm": Row("GradNorm", scheme="gradnorm", paper=(0.750, 0.404)),
    "mgda_ub": Row("Multi-objective (MGDA-UB)", scheme="mgda_ub", paper=(0.012, 0.003)),
    "cov": Row("CoV-Weighting", scheme="cov", paper=(0.770, 0.441)),
    "cov_high_lr": Row(
        "CoV-Weighting (higher lr)",
        scheme="cov",
        learning_rate_factor=10.0,
        paper=(0.779, 0.455),
    ),
}
#: The paper's third CoV rate (0.768 / 0.436) has no row: its learning rate is not given.
DEFAULT_RUNS = (
    "ce_only",
    "aux_only",
    "se_only",
    "equal",
    "hand_tuned",
    "uncertainty",
    "gradnorm",
    "mgda_ub",
    "cov",
)


def parse_runs(names: str | Sequence[str]) -> list[str]:
    """Validate a comma-separated list (or sequence) of run names."""
    if isinstance(names, str):
        names = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in names if name not in RUNS]
    if unknown:
        raise ValueError(f"unknown runs {unknown}; choose from {sorted(RUNS)}.")
    if not names:
        raise ValueError("no runs given.")
    return list(names)


def table_rows(
    summaries: Mapping[str, Sequence[Mapping[str, float]]], learning_rate: float
) -> list[dict[str, Any]]:
    """Table 6 rows (ours and the paper's) for the runs in ``summaries`` (one summary per
    evaluated seed; several give mean ± std, none a blank)."""
    rows = []
    for name, per_seed in summaries.items():
        run = RUNS[name]
        ours = {"pacc": None, "miou": None}
        if per_seed:
            columns = {"pixel_accuracy": "pacc", "mean_iou": "miou"}
            (averaged,) = report.rows_over_seeds({name: per_seed}, list(columns), "run")
            ours = {short: averaged[long] for long, short in columns.items()}
        rows.append(
            {
                "method": run.label,
                "lr": f"{learning_rate * run.learning_rate_factor:g}",
                **ours,
                "paper_pacc": run.paper[0] if run.paper else None,
                "paper_miou": run.paper[1] if run.paper else None,
            }
        )
    return rows


def markdown_table6(
    summaries: Mapping[str, Sequence[Mapping[str, float]]],
    config: ml_collections.ConfigDict,
    seeds: Sequence[int] = (0,),
) -> str:
    """The Markdown report: our numbers next to the paper's, with the setting spelled out."""
    table = report.markdown_table(
        table_rows(summaries, float(config.learning_rate)),
        ["method", "lr", "pacc", "miou", "paper_pacc", "paper_miou"],
        headers=["Method", "lr", "pACC (ours)", "mIoU (ours)", "pACC (paper)", "mIoU (paper)"],
        digits=3,
        bold_best={"pacc": "max", "miou": "max"},
    )
    model = config.model
    return (
        "# Segmentation: EncNet under each loss weighting (paper Table 6 layout)\n\n"
        f"Ours: {config.data.name} data, split `{config.data.eval_split}`, "
        f"{config.image_height}×{config.image_width} inputs; EncNet with a dilated "
        f"{model.backbone} (width {model.width}); {config.optimizer} for "
        f"{config.num_train_steps} steps of batch {config.batch_size}, seeds "
        f"{', '.join(map(str, seeds))}"
        f"{' (mean ± std over them)' if len(seeds) > 1 else ''}. Background class: "
        f"{config.data.get('background_class', None)}.\n"
        "Paper: PASCAL Context (59 classes), ImageNet-pretrained ResNet-50, SGD lr 1e-4 "
        "for 40 epochs (the higher-lr CoV row used a larger rate); not comparable "
        "with ours in absolute terms. Every row is scored on the main head's logits "
        "(so AUX-only and SE-only, which never train it, score near zero, as in the "
        "paper).\n\n" + table
    )


def run(name: str) -> common_compare.Run:
    """The shared comparison's run of row ``name``."""
    row = RUNS[name]
    return common_compare.Run(
        name,
        {"scheme": row.scheme, "single_loss": row.single_loss},
        learning_rate_factor=row.learning_rate_factor,
    )


def report_markdown(
    config: ml_collections.ConfigDict, comparison: common_compare.Comparison
) -> str:
    return markdown_table6(comparison.summaries, config, comparison.seeds)


def compare(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    runs: Sequence[str] = DEFAULT_RUNS,
    *,
    evaluate_only: bool = False,
    show_progress: bool = True,
    seeds: Sequence[int] | None = None,
) -> Path:
    """Train (unless already done) and evaluate every row at every seed (default
    ``config.seed``); write ``<workdir>/results/``. Returns the report's path.
    ``evaluate_only`` rebuilds the table from the runs already evaluated."""
    return common_compare.compare(
        make_task,
        config,
        [run(name) for name in parse_runs(runs)],
        workdir,
        report_markdown,
        seeds=seeds,
        evaluate_only=evaluate_only,
        show_progress=show_progress,
    )
