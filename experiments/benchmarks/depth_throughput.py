"""Throughput of the jitted depth train step: static vs CoV, uncertainty, GradNorm, MGDA-UB.

The reference PyTorch code's ratios for the same columns, measured on the same kind of
machine, are in the README's Performance section.

    python -m experiments.benchmarks.depth_throughput                 # CPU size
    python -m experiments.benchmarks.depth_throughput --size=ref_small --steps=1
    python -m experiments.benchmarks.depth_throughput --size=paper --steps=1 --rounds=1 \\
        --schemes=hand_tuned,cov,mgda_ub --chunk_size=4

Runs the full training step of the shared machinery (forward, weighting,
backward, Adam) on random stereo batches for each scheme, in one process on
the same inputs, and prints seconds per step, images per second and the
ratio to static weights (``hand_tuned``). Compilation is excluded (one warm-up
step). Sizes: ``cpu`` is ``configs/cpu.py`` (tiny ResNet-50MD, 64×128,
batch 8); ``paper`` is ``configs/paper.py`` (ResNet-50MD, 256×512, batch 8);
``ref_small`` is ResNet-50MD at 128×256, batch 2 (the reference code's measured row);
``test`` is ``configs/test.py`` (a smoke run, no meaningful timing).
``--schemes=hand_tuned,mgda_ub,mgda_ub:ungrouped`` also times a gradient scheme
with its 32 per-loss pull-backs in one batch instead of grouped by the layers
each loss reaches (:mod:`covjax._src.program`); ``mgda_ub:one_image`` with
its Gramian estimated from the batch's first image (the reference's convention).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags

from experiments.benchmarks.timing import interleaved_times
from experiments.common import sharding
from experiments.common.train import Trainer
from experiments.depth.configs import cpu, paper
from experiments.depth.configs import test as test_config
from experiments.depth.train import DepthTask

SIZES = ("cpu", "paper", "ref_small", "test")
#: ``scheme:ungrouped`` times a gradient scheme with all 32 losses in one batched
#: backward pass (``config.group_losses = False``) instead of grouped by scale.
UNGROUPED = "ungrouped"
#: ``scheme:one_image`` estimates the Gramian from the batch's first image only
#: (``config.gramian_examples = 1``, the reference MGDA-UB's convention).
ONE_IMAGE = "one_image"


def size_config(size: str) -> ml_collections.ConfigDict:
    if size == "cpu":
        return cpu.get_config()
    if size == "test":
        return test_config.get_config()
    config = paper.get_config()
    if size == "ref_small":
        config.image_height, config.image_width, config.batch_size = 128, 256, 2
    elif size != "paper":
        raise ValueError(f"Unknown size {size!r}; choose one of {SIZES}.")
    return config


def random_batch(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (config.batch_size, config.image_height, config.image_width, 3)
    return {
        "left": rng.uniform(size=shape).astype(np.float32),
        "right": rng.uniform(size=shape).astype(np.float32),
    }


def prepare(config: ml_collections.ConfigDict, scheme: str) -> tuple[Callable[[], Any], float]:
    """``(run one step, compile seconds)`` for ``scheme``'s train step on a fixed batch."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.scheme, _, variant = scheme.partition(":")
    if variant not in ("", UNGROUPED, ONE_IMAGE):
        raise ValueError(
            f"Unknown scheme variant {variant!r} in {scheme!r}; try :{UNGROUPED} or :{ONE_IMAGE}."
        )
    config.group_losses = variant != UNGROUPED
    if variant == ONE_IMAGE:
        config.gramian_examples = 1
    mesh = sharding.make_mesh()
    trainer = Trainer(DepthTask(), config, mesh)
    batch = sharding.shard_batch(random_batch(config), mesh)
    state = [trainer.init_state(batch)]

    def run() -> Any:
        state[0], metrics = trainer.train_step(state[0], batch)
        return metrics

    start = time.perf_counter()
    jax.block_until_ready(run())
    return run, time.perf_counter() - start


def benchmark(
    size: str,
    schemes: list[str],
    steps: int,
    rounds: int = 3,
    chunk_size: int | None = None,
    verbose: bool = False,
) -> str:
    """Seconds per step of each scheme: median of ``rounds`` interleaved rounds of ``steps``."""
    config = size_config(size)
    if chunk_size:
        config.gradient_chunk_size = chunk_size
    runners, compile_seconds = {}, {}
    for scheme in schemes:
        runners[scheme], compile_seconds[scheme] = prepare(config, scheme)
        if verbose:
            print(f"{scheme}: compiled in {compile_seconds[scheme]:.1f} s", flush=True)
    seconds_per_step = interleaved_times(runners, rounds, steps, warm_up=False)
    lines = [
        f"depth train step, {size}: {config.model.encoder} width {config.model.width}, "
        f"{config.image_height}×{config.image_width}, batch {config.batch_size}, "
        f"{jax.device_count()} × {jax.devices()[0].device_kind}, median of {rounds} "
        f"interleaved rounds × {steps} steps",
        "| scheme | compile s | s/step | images/s | ratio to static |",
        "|---|---|---|---|---|",
    ]
    baseline = seconds_per_step[schemes[0]]
    for scheme in schemes:
        seconds = seconds_per_step[scheme]
        lines.append(
            f"| {scheme} | {compile_seconds[scheme]:.1f} | {seconds:.4f} | "
            f"{config.batch_size / seconds:.1f} | {seconds / baseline:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    args = flags.FLAGS
    print(
        benchmark(args.size, args.schemes, args.steps, args.rounds, args.chunk_size, verbose=True)
    )


def define_flags() -> None:
    """The command-line flags (defined only when run as a program)."""
    flags.DEFINE_enum("size", "cpu", SIZES, "Network and input size.")
    flags.DEFINE_list(
        "schemes",
        ["hand_tuned", "cov", "uncertainty", "gradnorm", "mgda_ub"],
        "Schemes (the reference code's measured columns); the first is the baseline.",
    )
    flags.DEFINE_integer("steps", 5, "Timed steps per scheme and round.")
    flags.DEFINE_integer("rounds", 3, "Interleaved rounds (the median is reported).")
    flags.DEFINE_integer(
        "chunk_size", None, "Per-loss gradients per backward pass (bounds memory at paper size)."
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
