"""Multi-process training launched as the README says equals one process.

The README's two launch blocks ("GPUs, TPUs and several hosts") are run as
written, with the tiny test config, a fresh data directory, a free port and a
temporary workdir substituted: two processes on 127.0.0.1 with explicit flags
train 2 steps (and checkpoint), then the SLURM block, through a stand-in
``srun`` (tests/fake_srun.py) that gives two local processes the SLURM
variables JAX's auto-detection reads, resumes them to step 4. One plain
process trains the same 4 steps; every leaf of the final states must agree.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
MARKER = "<!-- covered by tests/test_multihost.py -->"
TEST_CONFIG = "experiments/depth/configs/test.py"
# Per launch; a run takes well under a minute on 2 idle cores, the margin is for load.
LAUNCH_TIMEOUT_S = 420
# JAX's SLURM detection puts the coordinator on port SLURM_JOB_ID % 4096 + 61440.
SLURM_PORTS = range(65536 - 4096, 65536)


def readme_blocks() -> list[str]:
    """The bodies of the README's fenced blocks that carry this file's marker."""
    lines = (REPO / "README.md").read_text().splitlines()
    blocks = []
    for number, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        assert lines[number + 1].startswith("```"), f"README line {number + 2}: no block"
        end = lines.index("```", number + 2)
        blocks.append("\n".join(lines[number + 2 : end]))
    return blocks


def block_commands(block: str) -> list[list[str]]:
    """The block's commands (continuation lines joined, comments left out), as argv lists."""
    joined = block.replace("\\\n", " ")
    return [
        shlex.split(line)
        for line in joined.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def substitute(argv: list[str], replacements: dict[str, str]) -> list[str]:
    """``argv`` with each ``replacements`` key replaced in every token; each key must occur."""
    out = []
    for token in argv:
        for old, new in replacements.items():
            token = token.replace(old, new)
        out.append(token)
    for old in replacements:
        assert any(old in token for token in argv), f"{old!r} not in the README command {argv}"
    return out


def free_port(candidates: range | None = None) -> int:
    """A port nothing listens on now (from ``candidates``, else one the kernel picks)."""
    if candidates is None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]
    for port in random.Random().sample(list(candidates), 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found")


def run_together(commands: list[list[str]], env: dict[str, str], logs: Path) -> None:
    """Run ``commands`` at once; every one must succeed within LAUNCH_TIMEOUT_S.

    Each runs in its own session, so that on failure or timeout this stops
    exactly what it started (the stand-in ``srun`` and the tasks it started).
    """
    started: list[tuple[subprocess.Popen, Path]] = []
    try:
        for argv in commands:
            log = logs.with_name(f"{logs.name}.{len(started)}.log")
            with log.open("w") as out:
                process = subprocess.Popen(
                    argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            started.append((process, log))
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        for process, log in started:
            try:
                code = process.wait(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{process.args} ran past {LAUNCH_TIMEOUT_S} s:\n{tail(log)}")
            assert code == 0, f"{process.args} exited with {code}:\n{tail(log)}"
    finally:
        for process, _ in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def final_state(workdir: Path, step: int) -> dict[str, np.ndarray]:
    """Every leaf of the checkpointed training state at ``step``, as numpy, by path."""
    import jax
    import orbax.checkpoint as ocp

    path = workdir / "checkpoints" / str(step) / "default"
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
    return {jax.tree_util.keystr(key): np.asarray(leaf) for key, leaf in _leaves(state)}


def _leaves(state):
    import jax

    return jax.tree_util.tree_leaves_with_path(state)


def logged_losses(workdir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["total"] for row in rows}


@pytest.mark.slow
def test_readme_launches_on_two_processes_resume_and_equal_one_process(tmp_path: Path) -> None:
    explicit_block, slurm_block = readme_blocks()
    explicit = block_commands(explicit_block)
    (slurm,) = block_commands(slurm_block)
    assert len(explicit) == 2 and slurm[0] == "srun", (explicit, slurm)

    work, reference = tmp_path / "two", tmp_path / "one"
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SLURM_", "JAX_COORDINATOR", "TFDS_DATA_DIR"))
    }
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=1",  # one CPU device per process
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])]),
        # The resumed processes run the program the first two compiled.
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    common = {"python": sys.executable, "experiments/depth/configs/cpu.py": TEST_CONFIG}

    # Two processes, explicit flags, a fresh data_dir: 2 of test.py's 4 steps.
    explicit_paths = {**common, "/tmp/depth_2proc": str(work), "12355": str(port)}
    first = [[*substitute(argv, explicit_paths), "--config.num_train_steps=2"] for argv in explicit]
    # One process, the same 4 global batches, at the same time.
    one = [
        sys.executable, "-m", "experiments.depth.train", f"--config={TEST_CONFIG}",
        f"--workdir={reference}", f"--config.data.data_dir={reference / 'data'}",
    ]  # fmt: skip
    run_together([*first, one], env, tmp_path / "first")
    assert (work / "checkpoints" / "2").is_dir()
    assert logged_losses(work)[2] == pytest.approx(logged_losses(reference)[2], rel=1e-4)

    # The SLURM block resumes them to step 4 through the stand-in srun.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = HERE / "fake_srun.py"
    (bin_dir / "srun").write_text(f'#!/bin/sh\nexec "{sys.executable}" "{stub}" "$@"\n')
    (bin_dir / "srun").chmod(0o755)
    slurm_port = free_port(SLURM_PORTS)
    slurm_env = {
        **env,
        "PATH": os.pathsep.join([str(bin_dir), env.get("PATH", "")]),
        "SLURM_JOB_ID": str(slurm_port - SLURM_PORTS.start + 4096 * 7),
    }
    resume = substitute(
        slurm,
        {
            **common,
            "/shared/depth_cov": str(work),
            "/shared/depth_data": str(work / "data"),
        },
    )
    run_together([resume], slurm_env, tmp_path / "resume")
    # It resumed (logged steps 2 and 4 once each; a restart would log step 2 again).
    steps = [json.loads(line)["step"] for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4], tail(tmp_path / "resume.0.log")

    two_processes, one_process = final_state(work, 4), final_state(reference, 4)
    assert two_processes.keys() == one_process.keys()
    assert two_processes["['step']"] == one_process["['step']"] == 4

    # Tolerance: the processes sum each batch-mean gradient in another order
    # (two partial sums, then an all-reduce), a float32 change of a few ε
    # (1.2e-7) relative to the summed terms, more for components whose terms
    # cancel; Adam's normalised steps carry that relative error into the
    # parameters and moments, and the CoV statistics are ratios of float32
    # losses. Measured worst over 4 steps: 7.5e-6 of a leaf's largest entry
    # (Adam's first moment), 3e-6 for parameters, 2e-6 for the weights. 1e-4
    # leaves a 13x margin, while other batches or augmentations move a
    # parameter by about the learning rate (1e-3) per step, ~1e-2 of a leaf.
    # Kahan-compensated sums are compared as value + error (the error terms
    # alone are rounding residues).
    def compensated(state: dict[str, np.ndarray], key: str) -> np.ndarray:
        error = key.replace("['value']", "['error']")
        return state[key] + state[error] if error != key and error in state else state[key]

    for key in one_process:
        if key.endswith("['error']"):
            continue
        got, want = compensated(two_processes, key), compensated(one_process, key)
        scale = float(np.max(np.abs(want), initial=0.0))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale, err_msg=key)
    # Not vacuous: the last two steps moved the parameters far beyond that.
    before = final_state(reference, 2)
    moved = max(
        float(np.max(np.abs(one_process[key] - before[key]), initial=0.0))
        for key in one_process
        if key.startswith("['params']")
    )
    assert moved > 1e-4
