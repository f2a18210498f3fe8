"""The segmentation experiment's command line (Groenendijk et al. 2021, Sec. 4.2).

    # train one scheme, then evaluate it
    python -m experiments.segmentation.main train \\
        --config=experiments/segmentation/configs/cpu.py --workdir=/tmp/seg_cov \\
        --config.scheme=cov
    # a single-loss baseline (static one-hot weights)
    python -m experiments.segmentation.main train \\
        --config=experiments/segmentation/configs/cpu.py --workdir=/tmp/seg_ce \\
        --config.single_loss=ce
    # evaluate the run's latest checkpoint again
    python -m experiments.segmentation.main evaluate \\
        --config=experiments/segmentation/configs/cpu.py --workdir=/tmp/seg_cov
    # the paper's Table 6 (--evaluate_only rebuilds it from the runs already evaluated)
    python -m experiments.segmentation.main compare \\
        --config=experiments/segmentation/configs/cpu.py --workdir=/tmp/seg_compare \\
        --runs=ce_only,hand_tuned,cov [--seeds=0,1,2]

``train`` resumes from the checkpoints in ``--workdir``, logs to
``<workdir>/metrics.jsonl`` and TensorBoard, and writes the evaluation on
``config.data.eval_split`` to ``<workdir>/eval_<split>/`` (``summary.json``,
``confusion_matrix.npy|.csv`` and the per-class IoUs). ``compare`` trains each
row at each seed in ``<workdir>/runs/<row>/seed<seed>`` and writes
``<workdir>/results/`` (:mod:`experiments.segmentation.tables`).
"""

from __future__ import annotations

import ml_collections
from absl import flags

from experiments.common import cli, evaluate
from experiments.segmentation import tables
from experiments.segmentation.train import make_task

cli.define_flags()
flags.DEFINE_string("workdir", None, "The run's (or the comparison's) directory (required).")
flags.DEFINE_string("split", None, "evaluate: the split (default: config.data.eval_split).")
flags.DEFINE_string(
    "runs", ",".join(tables.DEFAULT_RUNS), f"compare: the rows, of {list(tables.RUNS)}."
)
flags.DEFINE_bool("evaluate_only", False, "compare: only rebuild the table from existing runs.")
cli.define_seeds_flag()


def _print(summary: dict) -> None:
    print(" ".join(f"{key}={summary[key]:.4f}" for key in ("pixel_accuracy", "mean_iou")))


def train(config: ml_collections.ConfigDict) -> None:
    _print(evaluate.train_and_evaluate(make_task(config), config, cli.require_workdir()))


def evaluate_run(config: ml_collections.ConfigDict) -> None:
    workdir = cli.require_workdir()
    _print(evaluate.restore_and_evaluate(make_task(config), config, workdir, flags.FLAGS.split))


def compare(config: ml_collections.ConfigDict) -> None:
    path = tables.compare(
        config,
        cli.require_workdir(),
        tables.parse_runs(flags.FLAGS.runs),
        evaluate_only=flags.FLAGS.evaluate_only,
        seeds=cli.seeds_from_flags(config),
    )
    print(path.read_text())


if __name__ == "__main__":
    cli.run_commands({"train": train, "evaluate": evaluate_run, "compare": compare})
