"""Multi-process runs: launched as the multi-host guide says, they equal one process.

The two launch blocks of docs/guides/multi_host.md are run as
written, with the tiny test config, a fresh data directory, a free port and a
temporary workdir substituted: two processes on 127.0.0.1 with explicit flags
train 2 steps (and checkpoint), then the SLURM block, through a stand-in
``srun`` (tests/fake_srun.py) that gives two local processes the SLURM
variables JAX's auto-detection reads, resumes them to step 4, while one plain
process resumes a copy of their checkpoint. One process trains the same 4
steps uninterrupted; every leaf of the final states must agree. A second test
runs ``prepare_once`` (process 0 prepares a dataset, the others wait) on pairs
of processes whose process 0 succeeds, raises, dies or is too slow.

Every process runs in a session of its own under a timeout; the tests stop
only those sessions, and a failure shows the tail of every process's log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from experiments.common import cli

REPO = Path(__file__).resolve().parents[1]
MULTI_HOST_GUIDE = REPO / "docs" / "guides" / "multi_host.md"
HERE = Path(__file__).resolve().parent
MARKER = "<!-- covered by tests/test_multihost.py -->"
TEST_CONFIG = "experiments/depth/configs/test.py"
# Per launch; a run takes well under a minute on 2 idle cores, the margin is for load.
LAUNCH_TIMEOUT_S = 420
# Once a process of a run fails, how long the others get to stop by themselves.
FAILURE_GRACE_S = 30
# JAX's SLURM detection puts the coordinator on port SLURM_JOB_ID % 4096 + 61440.
SLURM_PORTS = range(65536 - 4096, 65536)


def readme_blocks() -> list[str]:
    """The bodies of the multi-host guide's fenced blocks that carry this file's marker."""
    lines = MULTI_HOST_GUIDE.read_text().splitlines()
    blocks = []
    for number, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        where = f"{MULTI_HOST_GUIDE.name} line {number + 2}"
        assert lines[number + 1].startswith("```"), f"{where}: no block"
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
        assert any(old in token for token in argv), f"{old!r} not in the guide's command {argv}"
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


@dataclasses.dataclass
class Launched:
    process: subprocess.Popen
    log: Path


@contextlib.contextmanager
def launched(
    commands: list[list[str]], env: dict[str, str], logs: Path
) -> Iterator[list[Launched]]:
    """Start ``commands`` at once (output to ``<logs>.<i>.log``); on leaving, stop what still runs.

    Each command runs in a session of its own, so this stops exactly what it
    started (a stand-in ``srun`` with the tasks it started), and nothing else.
    """
    started: list[Launched] = []
    try:
        for argv in commands:
            log = logs.with_name(f"{logs.name}.{len(started)}.log")
            with log.open("w") as out:
                process = subprocess.Popen(
                    argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            started.append(Launched(process, log))
        yield started
    finally:
        for launch in started:
            if launch.process.poll() is None:  # not yet reaped: its group is still ours
                os.killpg(launch.process.pid, signal.SIGKILL)
                launch.process.wait()


def wait_all(
    started: list[Launched], timeout_s: float, *, failure_grace_s: float | None = None
) -> list[int | None]:
    """The exit codes of ``started`` (None for any still running when it stops waiting).

    Fails the test, with every log's tail, when they still run after
    ``timeout_s``. With ``failure_grace_s``, stops waiting that long after one
    fails (in one run, the others would wait for it).
    """
    deadline = time.monotonic() + timeout_s
    while None in (codes := [launch.process.poll() for launch in started]):
        if failure_grace_s is not None and any(codes):
            deadline = min(deadline, time.monotonic() + failure_grace_s)
            failure_grace_s = None
        if time.monotonic() > deadline:
            if any(codes):
                break
            pytest.fail(f"Still running after {timeout_s} s.\n{tails(started)}")
        time.sleep(0.2)
    return codes


def run_together(commands: list[list[str]], env: dict[str, str], logs: Path) -> None:
    """Run ``commands`` at once; every one must succeed within LAUNCH_TIMEOUT_S."""
    with launched(commands, env, logs) as started:
        codes = wait_all(started, LAUNCH_TIMEOUT_S, failure_grace_s=FAILURE_GRACE_S)
        if codes != [0] * len(codes):
            pytest.fail(f"Exit codes {codes}.\n{tails(started)}")


def tails(started: list[Launched], lines: int = 40) -> str:
    """The last ``lines`` lines of each launched command's log, headed by the command."""
    return "\n".join(
        f"--- {shlex.join(launch.process.args)} (exit {launch.process.poll()}):\n"
        f"{tail(launch.log, lines)}"
        for launch in started
    )


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
    leaves = jax.tree_util.tree_leaves_with_path(state)
    return {jax.tree_util.keystr(key): np.asarray(leaf) for key, leaf in leaves}


def logged_losses(workdir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["total"] for row in rows}


def logged_steps(workdir: Path) -> list[int]:
    return [
        json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()
    ]


def process_env() -> dict[str, str]:
    """This environment for CPU processes: one device each, no cluster variables, the
    session's compilation cache."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(
            ("SLURM_", "OMPI_", "KUBERNETES_", "JAX_COORDINATOR", "TFDS_DATA_DIR")
        )
    }
    env.update(
        JAX_PLATFORMS="cpu",
        # One CPU device per process; the session's flags (tests/fast_compile.py)
        # kept, so every run compared is compiled alike.
        XLA_FLAGS=f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=1".strip(),
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])]),
    )
    # The session's compilation cache is inherited (tests/conftest.py): the
    # one-process runs reuse what the reference and the other tests compiled (a
    # multi-process program's cache key changes from run to run).
    return env


def compensated(state: dict[str, np.ndarray], key: str) -> np.ndarray:
    """A leaf; a Kahan-compensated sum's value as value + error (the error alone is a residue)."""
    error = key.replace("['value']", "['error']")
    return state[key] + state[error] if error != key and error in state else state[key]


#: Tolerance, relative to each leaf's largest entry. The runs differ only in
#: the order of float32 sums: two processes each sum the gradient over their
#: rows and the all-reduce adds the two partial sums, where one process sums
#: all rows at once. That moves a gradient component by a few ε₃₂ (1.2e-7) of
#: the summed magnitudes over its own size: 1e-6 to 1e-5 where the thousands
#: of per-pixel terms cancel. Adam divides each component by its own running
#: scale, so parameters and moments inherit that relative error, and the CoV
#: statistics are ratios of float32 losses with errors of the same order.
#: Measured, worst leaf: 7.5e-6 (Adam's first moment). 1e-4 leaves a 13x
#: margin and stays far below what a step on other data changes: over the
#: test's last two steps every parameter leaf moves by 2.5e-3 or more of its
#: largest entry (checked below, so the comparison cannot pass vacuously).
RELATIVE_TOLERANCE = 1e-4


def assert_same_state(got: dict[str, np.ndarray], want: dict[str, np.ndarray], label: str) -> None:
    """Each leaf of ``got`` within RELATIVE_TOLERANCE of ``want``'s, scaled by its largest entry."""
    assert got.keys() == want.keys(), label
    for key in want:
        if key.endswith("['error']"):
            continue
        scale = float(np.max(np.abs(compensated(want, key)), initial=0.0))
        np.testing.assert_allclose(
            compensated(got, key),
            compensated(want, key),
            rtol=0,
            atol=RELATIVE_TOLERANCE * scale,
            err_msg=f"{label}: {key}",
        )


@pytest.mark.slow
def test_readme_launches_on_two_processes_resume_and_equal_one_process(tmp_path: Path) -> None:
    """The guide's launches train as one process does, also when resumed with another count.

    Two processes (the guide's explicit block) train 2 of the test config's
    4 steps from a fresh data directory and checkpoint; the guide's SLURM
    block (through tests/fake_srun.py) resumes them to step 4, and one plain
    process resumes a copy of the same checkpoint to step 4; both must end
    where one process training all 4 steps on the same global batches ends.
    """
    explicit_block, slurm_block = readme_blocks()
    explicit = block_commands(explicit_block)
    (slurm,) = block_commands(slurm_block)
    assert len(explicit) == 2 and slurm[0] == "srun", (explicit, slurm)

    two, one, two_then_one = tmp_path / "two", tmp_path / "one", tmp_path / "two_then_one"
    env = process_env()
    common = {"python": sys.executable, "experiments/depth/configs/cpu.py": TEST_CONFIG}

    def one_process(workdir: Path, data_dir: Path) -> list[str]:
        return [
            sys.executable, "-m", "experiments.depth.main", "train", f"--config={TEST_CONFIG}",
            f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
        ]  # fmt: skip

    # Two processes, explicit flags, a fresh data_dir (process 0 generates the
    # data, process 1 waits): 2 of the 4 steps. One process trains all 4 at
    # the same time.
    port = free_port()
    explicit_paths = {**common, "/tmp/depth_2proc": str(two), "12355": str(port)}
    first = [[*substitute(argv, explicit_paths), "--config.num_train_steps=2"] for argv in explicit]
    run_together([*first, one_process(one, one / "data")], env, tmp_path / "first")
    assert sorted(path.name for path in (two / "checkpoints").iterdir()) == ["2"]
    # Process 0's coordinator listened on the loopback address alone (JAX logs it at INFO,
    # which the quiet command line sends to the workdir's log file).
    started_on = f"Starting JAX distributed service on 127.0.0.1:{port}"
    logs = (tmp_path / "first.0.log").read_text() + (two / cli.LOG_FILE).read_text()
    assert started_on in logs
    assert logged_losses(two)[2] == pytest.approx(logged_losses(one)[2], rel=RELATIVE_TOLERANCE)
    shutil.copytree(two, two_then_one, ignore=shutil.ignore_patterns("data"))

    # The SLURM block resumes the two processes through the stand-in srun;
    # one process resumes the copy (with another data_dir, already prepared).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "fake_srun.py"}" "$@"\n'
    )
    (bin_dir / "srun").chmod(0o755)
    slurm_port = free_port(SLURM_PORTS)
    slurm_env = {
        **env,
        "PATH": os.pathsep.join([str(bin_dir), env.get("PATH", "")]),
        "SLURM_JOB_ID": str(slurm_port - SLURM_PORTS.start + 4096 * 7),
    }
    slurm_paths = {**common, "/shared/depth_cov": str(two), "/shared/depth_data": str(two / "data")}
    with launched([substitute(slurm, slurm_paths)], slurm_env, tmp_path / "resume_two") as by_srun:
        run_together([one_process(two_then_one, one / "data")], env, tmp_path / "resume_one")
        assert wait_all(by_srun, LAUNCH_TIMEOUT_S) == [0], tails(by_srun)
    # Both resumed: steps 2 and 4 logged once each (a restart would log 2 again).
    assert logged_steps(two) == logged_steps(two_then_one) == [2, 4]

    reference = final_state(one, 4)
    assert reference["['step']"] == 4
    assert_same_state(final_state(two, 4), reference, "2 processes, resumed with 2")
    assert_same_state(final_state(two_then_one, 4), reference, "2 processes, resumed with 1")

    # Not vacuous: over the last two steps every parameter leaf moved by far
    # more than the tolerance (a run that skipped or repeated them would fail).
    before = final_state(one, 2)
    for key in reference:
        if key.startswith("['params']"):
            moved = np.max(np.abs(reference[key] - before[key])) / np.max(np.abs(reference[key]))
            assert moved > 10 * RELATIVE_TOLERANCE, (key, moved)


def test_process_0_prepares_the_data_while_the_other_waits_or_fails(tmp_path: Path) -> None:
    """``prepare_once`` on two processes: process 1 waits, or fails soon if process 0 does.

    Four pairs of tests/prepare_worker.py run at once, in which process 0's
    3 s preparation succeeds, raises, dies, or outlasts process 1's wait.
    """
    modes = ("ok", "raise", "die", "slow")
    ports = {mode: str(free_port()) for mode in modes}
    runs = [(mode, rank) for mode in modes for rank in (0, 1)]
    for mode in modes:
        (tmp_path / mode).mkdir()
    commands = [
        [sys.executable, str(HERE / "prepare_worker.py"), ports[mode], str(rank), mode,
         str(tmp_path / mode)]
        for mode, rank in runs
    ]  # fmt: skip
    with launched(commands, process_env(), tmp_path / "prepare") as started:
        codes = dict(zip(runs, wait_all(started, LAUNCH_TIMEOUT_S), strict=True))
        logs = {
            run: launch.log.read_text(errors="replace")
            for run, launch in zip(runs, started, strict=True)
        }
        report = tails(started)
    # Only process 0 ever prepares.
    for mode in modes:
        assert not (tmp_path / mode / "prepared_by_1").exists(), report
        assert (tmp_path / mode / "prepared_by_0").exists(), report

    # ok: process 1 returns once the data is there, and finds it.
    assert codes["ok", 0] == codes["ok", 1] == 0, report
    returned = json.loads(logs["ok", 1].splitlines()[-1])
    assert returned["prepared"], report
    assert returned["returned_at"] >= float((tmp_path / "ok" / "done").read_text()), report

    # raise: process 1 fails with process 0's error.
    assert codes["raise", 0] != 0 and codes["raise", 1] != 0, report
    assert "Process 0 could not prepare" in logs["raise", 1], report
    assert "OSError: disk full" in logs["raise", 1], report

    # die: process 1 fails at once (the coordinator went with process 0), not
    # at the end of its 60 s wait.
    assert codes["die", 0] == 3 and codes["die", 1] != 0, report
    # (This says so, unless JAX's own message, which ends the process from
    # another thread, comes first.)
    assert any(
        message in logs["die", 1]
        for message in ("process 0 stopped or could not be reached", "another task died")
    ), report
    assert "DEADLINE_EXCEEDED" not in logs["die", 1], report

    # slow: process 1 gives up after its timeout, with a message saying so.
    assert codes["slow", 1] != 0, report
    assert "took longer than 0.75 s" in logs["slow", 1], report
    assert "DEADLINE_EXCEEDED" in logs["slow", 1], report
