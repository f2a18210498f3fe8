"""The multi-task experiment's command line (segmentation + depth + normals).

    # train one scheme, then evaluate it
    python -m experiments.multitask.main train \\
        --config=experiments/multitask/configs/cpu.py --workdir=/tmp/mt_cov --config.scheme=cov
    # a single-task baseline (static one-hot weights)
    python -m experiments.multitask.main train \\
        --config=experiments/multitask/configs/cpu.py --workdir=/tmp/mt_depth \\
        --config.single_task=depth
    # evaluate the run's latest checkpoint again, or the untrained network
    python -m experiments.multitask.main evaluate \\
        --config=experiments/multitask/configs/cpu.py --workdir=/tmp/mt_cov [--untrained]
    # several schemes (and the single-task runs) side by side, with Δm%
    python -m experiments.multitask.main compare \\
        --config=experiments/multitask/configs/cpu.py --workdir=/tmp/mt_compare \\
        --schemes=equal,uncertainty,gradnorm,mgda_ub,cov --single_task

``train`` resumes from the checkpoints in ``--workdir``, logs to
``<workdir>/metrics.jsonl`` and TensorBoard, and writes every metric on
``config.data.eval_split`` to ``<workdir>/eval_<split>/summary.json``.
``compare`` trains each run at each seed in ``<workdir>/runs/<run>/seed<seed>``
and writes ``<workdir>/results/`` (:mod:`experiments.multitask.tables`).
"""

from __future__ import annotations

from pathlib import Path

import ml_collections
from absl import flags

from experiments.common import cli, evaluate
from experiments.multitask import metrics, tables
from experiments.multitask.train import make_task

cli.define_flags()
flags.DEFINE_string("workdir", None, "The run's (or the comparison's) directory (required).")
flags.DEFINE_string("split", None, "evaluate: the split (default: config.data.eval_split).")
flags.DEFINE_bool("untrained", False, "evaluate: the network at initialisation.")
flags.DEFINE_list("schemes", [tables.EQUAL], "compare: the weighting schemes.")
flags.DEFINE_bool("single_task", False, "compare: also train the three single-task runs.")
cli.define_seeds_flag()


def _print(summary: dict) -> None:
    print(" ".join(f"{key}={summary[key]:.4f}" for key in metrics.HIGHER_IS_BETTER))


def train(config: ml_collections.ConfigDict) -> None:
    _print(evaluate.train_and_evaluate(make_task(config), config, cli.require_workdir()))


def evaluate_run(config: ml_collections.ConfigDict) -> None:
    workdir, split = cli.require_workdir(), flags.FLAGS.split
    if flags.FLAGS.untrained:
        _print(evaluate.evaluate_untrained(make_task(config), config, workdir, split))
    else:
        _print(evaluate.restore_and_evaluate(make_task(config), config, workdir, split))


def compare(config: ml_collections.ConfigDict) -> None:
    result = tables.compare(
        config,
        flags.FLAGS.schemes,
        cli.require_workdir(),
        single_task=flags.FLAGS.single_task,
        seeds=cli.seeds_from_flags(config),
    )
    print(Path(result["report"]).read_text())


if __name__ == "__main__":
    cli.run_commands({"train": train, "evaluate": evaluate_run, "compare": compare})
