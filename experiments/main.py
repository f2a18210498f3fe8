"""The main job (``make demo``): the paper's depth comparison, offline, on a CPU.

    python -m experiments.main [--schemes=equal,cov] [--seeds=0,1,2]
        [--config.num_train_steps=2000] [--config.model.width=0.5]
        [--config.data.name=kitti --config.data.data_dir=... --config.data.kitti.split_file=...]
        [--workdir=results/demo] [--results=results] [--show_config] [--list_schemes]

Generates the synthetic stereo scenes (once; cached under the workdir),
trains the CPU-sized monodepth network with the paper's schemes (equal,
hand-tuned, uncertainty, GradNorm, MGDA-UB, CoV-Weighting) plus Loss Scale
Balancing, evaluates each with the Eigen metrics, and writes ``results/``:
the Markdown tables (paper Tables 3/4 layout and the Table 5 win rates) and the
weights-over-training plots (Figure 1 analogue). The table is printed at the
end. Every flag of the depth experiment's config can be overridden, so the
same command scales up to a bigger network, more steps, a real dataset
directory or a GPU (JAX uses whatever accelerator is present).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import ml_collections
from absl import flags

from experiments.common import cli
from experiments.depth import tables

PAPER_SCHEMES = ("equal", "hand_tuned", "uncertainty", "gradnorm", "mgda_ub", "cov", "lsb")

cli.define_flags("experiments/depth/configs/demo.py", config_help="Default: the demo's. ")
flags.DEFINE_list("schemes", list(PAPER_SCHEMES), "Weighting schemes to compare, in order.")
cli.define_seeds_flag()
flags.DEFINE_string("workdir", "results/demo", "Where runs, data, checkpoints and log.txt go.")
flags.DEFINE_string("results", "results", "Where the tables and plots are copied.")


def main(config: ml_collections.ConfigDict) -> None:
    workdir = Path(flags.FLAGS.workdir)
    if config.data.name == "synthetic" and config.data.data_dir is None:
        config.data.data_dir = str(workdir / "data")
    schemes = flags.FLAGS.schemes
    print(
        f"covjax demo: depth, {config.data.name} data, MonoDepth {config.model.encoder} width "
        f"{config.model.width}, {config.image_height}x{config.image_width}, "
        f"{config.num_train_steps} steps per scheme; schemes: {', '.join(schemes)}",
        flush=True,
    )
    start = time.perf_counter()
    markdown = tables.compare(config, schemes, workdir, cli.seeds_from_flags(config))
    results = Path(flags.FLAGS.results)
    shutil.copytree(markdown.parent, results, dirs_exist_ok=True)
    print(markdown.read_text())
    minutes = (time.perf_counter() - start) / 60
    print(f"Done in {minutes:.1f} min. Tables and plots: {results.resolve()}", flush=True)


if __name__ == "__main__":
    cli.run(main)
