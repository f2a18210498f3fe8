"""The paper's Table 6: EncNet trained under every weighting, pACC and mIoU side by side.

    python -m experiments.segmentation.compare \\
        --config=experiments/segmentation/configs/cpu.py --workdir=/tmp/seg_compare \\
        --runs=ce_only,hand_tuned,cov [--seeds=0,1,2]

trains each run, at each seed (default ``config.seed``), into
``<workdir>/<run>/seed<seed>/`` (a run that already has its
evaluation summary under the same ``eval`` settings is not redone, one
evaluated under other settings is evaluated again, and an interrupted one
resumes from its checkpoints), then writes ``<workdir>/table6.md``: one row per run in the
paper's order (single-loss CE / AUX / SE, equal, hand-tuned, uncertainty,
GradNorm, multi-objective, CoV) with our pACC and mIoU and, in separate
labelled columns, the paper's PASCAL Context numbers (Groenendijk et al. 2021,
Table 6; ours come from whatever data the config names, e.g. the synthetic
scenes, so the two are not directly comparable). Every row is evaluated on the
main (EncHead) logits, as in the paper: the AUX-only and SE-only networks never
train that head, hence their near-zero scores there too. With several seeds,
each cell is the mean ± standard deviation over them. Weight plots of every
run go to ``<workdir>/<run>/seed<seed>/plots/weights.png``.

``--evaluate_only`` rebuilds the table from the existing runs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
from absl import app, flags

from experiments.common import (
    cli,
    logging_utils,
    report,
)
from experiments.segmentation import evaluate, train


@dataclasses.dataclass(frozen=True)
class Run:
    """One row of Table 6.

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
RUNS: dict[str, Run] = {
    "ce_only": Run("CE only", single_loss="ce", paper=(0.769, 0.440)),
    "aux_only": Run("AUX only", single_loss="aux", paper=(0.012, 0.004)),
    "se_only": Run("SE only", single_loss="se", paper=(0.010, 0.001)),
    "equal": Run("Equal", scheme="equal", paper=(0.759, 0.419)),
    "hand_tuned": Run("Hand-tuned", scheme="hand_tuned", paper=(0.768, 0.437)),
    "uncertainty": Run("Uncertainty", scheme="uncertainty", paper=(0.781, 0.448)),
    "gradnorm": Run("GradNorm", scheme="gradnorm", paper=(0.750, 0.404)),
    "mgda_ub": Run("Multi-objective (MGDA-UB)", scheme="mgda_ub", paper=(0.012, 0.003)),
    "cov": Run("CoV-Weighting", scheme="cov", paper=(0.770, 0.441)),
    "cov_high_lr": Run(
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


def run_config(
    config: ml_collections.ConfigDict, run: Run, seed: int | None = None
) -> ml_collections.ConfigDict:
    """``config`` with the run's scheme, single loss and learning rate (and ``seed``)."""
    config = ml_collections.ConfigDict(config.to_dict())
    if seed is not None:
        config.seed = seed
    config.scheme = run.scheme
    config.single_loss = run.single_loss
    config.learning_rate = config.learning_rate * run.learning_rate_factor
    return train.resolve_single_loss(config)


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


def plot_weights(workdir: str | Path, title: str) -> Path | None:
    """Weights over training of one run (one line per loss), or None if it has no log."""
    try:
        rows = logging_utils.read_metrics(workdir)
    except FileNotFoundError:
        return None
    steps, series = logging_utils.weight_series(rows)
    if not steps:
        return None
    return report.plot_weights(
        steps, series, Path(workdir) / "plots" / "weights.png", title=f"{title}: loss weights"
    )


def compare(
    config: ml_collections.ConfigDict,
    workdir: str,
    runs: Sequence[str] = DEFAULT_RUNS,
    *,
    evaluate_only: bool = False,
    show_progress: bool = True,
    seeds: Sequence[int] | None = None,
) -> str:
    """Train (unless already done) and evaluate every run at every seed (default
    ``config.seed``); write and return table6.md."""
    runs = parse_runs(runs)
    seeds = cli.parse_seeds(seeds if seeds is not None else [config.seed])
    summaries: dict[str, list[Mapping[str, float]]] = {}
    for name in runs:
        summaries[name] = []
        for seed in seeds:
            run_dir = os.path.join(workdir, name, f"seed{seed}")
            seeded = run_config(config, RUNS[name], seed)
            summary = evaluate.read_summary(run_dir, config.data.eval_split, seeded)
            if summary is None and not evaluate_only:
                summary = train.train_and_evaluate(seeded, run_dir, show_progress=show_progress)
            if summary is not None:
                summaries[name].append(summary)
            if os.path.isdir(run_dir):
                plot_weights(run_dir, RUNS[name].label)
    text = markdown_table6(summaries, config, seeds)
    os.makedirs(workdir, exist_ok=True)
    Path(workdir, "table6.md").write_text(text)
    return text


def main(config: ml_collections.ConfigDict) -> None:
    workdir = flags.FLAGS.workdir
    if workdir is None:
        raise app.UsageError("--workdir is required.")
    print(
        compare(
            config,
            workdir,
            parse_runs(flags.FLAGS.runs),
            evaluate_only=flags.FLAGS.evaluate_only,
            seeds=cli.seeds_from_flags(config),
        )
    )


if __name__ == "__main__":
    cli.define_flags()
    flags.DEFINE_string("workdir", None, "Directory with one sub-directory per run (required).")
    flags.DEFINE_string("runs", ",".join(DEFAULT_RUNS), f"Comma-separated runs of {list(RUNS)}.")
    flags.DEFINE_bool("evaluate_only", False, "Only rebuild the table from existing runs.")
    cli.define_seeds_flag()
    cli.run(main)
