"""The depth experiment's command line (Groenendijk et al. 2021, Sec. 4.1).

    # train one scheme
    python -m experiments.depth.main train \\
        --config=experiments/depth/configs/cpu.py --workdir=/tmp/depth_cov --config.scheme=cov
    # evaluate the run's latest checkpoint (again, e.g. with other eval.* fields), or the
    # untrained network
    python -m experiments.depth.main evaluate \\
        --config=experiments/depth/configs/cpu.py --workdir=/tmp/depth_cov [--untrained]
    # train, evaluate and tabulate several schemes at several seeds (paper Tables 3–5, Fig. 1)
    python -m experiments.depth.main compare --config=experiments/depth/configs/cpu.py \\
        --schemes=equal,hand_tuned,uncertainty,gradnorm,mgda_ub,cov,cov_decay,lsb \\
        --seeds=0,1,2 --workdir=/tmp/depth_compare

``train`` resumes from the checkpoints in ``--workdir`` and logs to
``<workdir>/metrics.jsonl`` and ``<workdir>/tensorboard`` (it runs on every
process of a multi-host launch; evaluation is a separate command). ``evaluate``
writes ``<workdir>/eval_<split>/`` (``summary.json``: the means;
``per_image.csv``: one row per image, for win rates). ``compare`` trains each scheme at each seed in
``<workdir>/runs/<scheme>/seed<seed>`` and writes ``<workdir>/results/``
(:mod:`experiments.depth.tables`).
"""

from __future__ import annotations

import json

import ml_collections
from absl import flags

from experiments.common import cli, evaluate
from experiments.common import train as common_train
from experiments.depth import tables
from experiments.depth.train import DepthTask

cli.define_flags()
flags.DEFINE_string("workdir", None, "The run's (or the comparison's) directory (required).")
flags.DEFINE_string("split", None, "evaluate: the split (default: config.data.eval_split).")
flags.DEFINE_bool("untrained", False, "evaluate: the network at initialisation.")
flags.DEFINE_list("schemes", ["equal", "hand_tuned", "cov"], "compare: the schemes, in order.")
cli.define_seeds_flag()


def train(config: ml_collections.ConfigDict) -> None:
    common_train.train(DepthTask(), config, cli.require_workdir())


def evaluate_run(config: ml_collections.ConfigDict) -> None:
    workdir, split = cli.require_workdir(), flags.FLAGS.split
    if flags.FLAGS.untrained:
        summary = evaluate.evaluate_untrained(DepthTask(), config, workdir, split)
    else:
        summary = evaluate.restore_and_evaluate(DepthTask(), config, workdir, split)
    print(json.dumps(summary, indent=2))


def compare(config: ml_collections.ConfigDict) -> None:
    path = tables.compare(
        config, flags.FLAGS.schemes, cli.require_workdir(), cli.seeds_from_flags(config)
    )
    print(path.read_text())


if __name__ == "__main__":
    cli.run_commands({"train": train, "evaluate": evaluate_run, "compare": compare})
