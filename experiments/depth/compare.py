"""Train, evaluate and compare weighting schemes on the depth task (paper Tables 3–5, Fig. 1).

    python -m experiments.depth.compare --config=experiments/depth/configs/cpu.py \\
        --schemes=equal,hand_tuned,uncertainty,gradnorm,mgda_ub,cov,cov_decay,lsb \\
        --seeds=0,1,2 --workdir=/tmp/depth_compare

Each scheme trains with each seed (``config.seed``) in
``<workdir>/runs/<scheme>/seed<seed>`` (resuming an interrupted run; a run
already trained and evaluated to ``config.num_train_steps`` with the same
``eval`` settings is not redone, and one evaluated with other settings is
evaluated again), is evaluated on ``config.data.eval_split``, and the
untrained network of each seed is evaluated as a reference.
``<workdir>/results/`` then holds

* ``depth_results.md``: the paper's Table 3/4 layout (ARD, SRD, RMSE,
  RMSE log, δ1–δ3 per scheme; with several seeds, mean ± standard deviation
  over them) with the paper's own numbers below ours, clearly labelled, and
  the win-rate table (paper Table 5: the fraction of images on which the
  row's scheme beats the column's on a majority of the 7 metrics; with
  several seeds, mean ± std of the per-seed rates, marked "within spread"
  when a tie, 0.5, lies within one standard deviation);
* ``weights/<scheme>_weights_by_group.png`` and ``..._by_scale.png``: the weights over
  training per loss group and per scale (the analogue of the paper's Fig. 1).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from absl import app, flags, logging

from experiments.common import cli, logging_utils, report
from experiments.common.schemes import available_schemes
from experiments.depth import evaluate, metrics
from experiments.depth.train import train_and_evaluate

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


def run_dir(workdir: str | Path, scheme: str, seed: int) -> Path:
    return Path(workdir) / "runs" / scheme / f"seed{seed}"


def scheme_config(
    config: ml_collections.ConfigDict, scheme: str, seed: int
) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())
    config.scheme = scheme
    config.seed = seed
    return config


def _current_summary(summary_path: Path, config: ml_collections.ConfigDict) -> dict | None:
    """The saved evaluation, if it is of the last step and under the current eval settings."""
    if not summary_path.exists():
        return None
    summary = json.loads(summary_path.read_text())
    if summary.get("step") != config.num_train_steps and not summary.get("untrained"):
        return None
    if summary.get("eval") != evaluate.eval_settings(config):
        return None  # evaluated under other settings: evaluate again
    return summary


def run_scheme(
    config: ml_collections.ConfigDict, workdir: str | Path, scheme: str, seed: int
) -> dict[str, Any]:
    """Train (or resume) and evaluate one scheme at one seed; skipped when already done."""
    config = scheme_config(config, scheme, seed)
    directory = run_dir(workdir, scheme, seed)
    summary_path = evaluate.eval_dir(directory, config.data.eval_split) / evaluate.SUMMARY_FILE
    logging_utils.check_same_config(directory, config)
    summary = _current_summary(summary_path, config)
    if summary is not None:
        logging.info("%s seed %d: already trained and evaluated, skipping.", scheme, seed)
        return summary
    trainer, state = train_and_evaluate(config, str(directory))
    # Evaluate the state in memory: restoring it would rebuild the input pipeline
    # and recompile the initialisation, about a minute per run on a CPU.
    return evaluate.evaluate_trained(config, directory, trainer, state)


def untrained_summary(
    config: ml_collections.ConfigDict, workdir: str | Path, seed: int
) -> dict[str, Any]:
    config = scheme_config(config, config.scheme, seed)
    directory = Path(workdir) / "untrained" / f"seed{seed}"
    summary_path = evaluate.eval_dir(directory, config.data.eval_split, untrained=True)
    # The untrained network is cheap to evaluate again: redo it unless its config is the same.
    recorded = (directory / logging_utils.CONFIG_FILE).exists()
    summary = _current_summary(summary_path / evaluate.SUMMARY_FILE, config)
    if recorded and summary and not logging_utils.config_differences(directory, config):
        return summary
    summary = evaluate.evaluate_run(config, directory, untrained=True)
    logging_utils.write_config(directory, config)
    return summary


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


def compare(
    config: ml_collections.ConfigDict,
    schemes: Sequence[str],
    workdir: str | Path,
    seeds: Sequence[int] | None = None,
) -> Path:
    """Run every scheme at every seed (default: ``config.seed``), then write
    ``<workdir>/results/``; returns the Markdown path."""
    if not schemes:
        raise ValueError("--schemes is empty.")
    if len(set(schemes)) != len(schemes):
        raise ValueError(f"--schemes has duplicates: {list(schemes)}.")
    unknown = [scheme for scheme in schemes if scheme not in available_schemes()]
    if unknown:  # before any training, not after the first scheme's
        raise ValueError(f"unknown schemes {unknown}; known: {list(available_schemes())}.")
    seeds = cli.parse_seeds(seeds if seeds is not None else [config.seed])
    workdir = Path(workdir)
    summaries = {
        scheme: [run_scheme(config, workdir, scheme, seed) for seed in seeds] for scheme in schemes
    }
    untrained = [untrained_summary(config, workdir, seed) for seed in seeds]
    split = config.data.eval_split
    per_image = {
        scheme: [
            evaluate.load_per_image(evaluate.eval_dir(run_dir(workdir, scheme, seed), split))
            for seed in seeds
        ]
        for scheme in schemes
    }
    results = workdir / "results"
    results.mkdir(parents=True, exist_ok=True)
    for scheme in schemes:  # the weights of the first seed's run
        report.plot_run_weights(
            run_dir(workdir, scheme, seeds[0]),
            results / "weights",
            title=scheme,
            prefix=f"{scheme}_",
        )
    path = results / "depth_results.md"
    path.write_text(results_markdown(config, summaries, untrained, per_image, seeds))
    return path


def main(config: ml_collections.ConfigDict) -> None:
    if flags.FLAGS.workdir is None:
        raise app.UsageError("--workdir is required.")
    path = compare(config, flags.FLAGS.schemes, flags.FLAGS.workdir, cli.seeds_from_flags(config))
    print(path.read_text())


def define_flags() -> None:
    """The command-line flags (defined only when run as a program, so modules import freely)."""
    cli.define_flags()
    flags.DEFINE_list(
        "schemes", ["equal", "hand_tuned", "cov"], "Comma-separated scheme names to compare."
    )
    cli.define_seeds_flag()
    flags.DEFINE_string("workdir", None, "Directory for every run and the results (required).")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
