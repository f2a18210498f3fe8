"""A stand-in for SLURM's ``srun`` that starts a job step's tasks on this machine.

    python tests/fake_srun.py --nodes=N --ntasks-per-node=M COMMAND...

starts N·M copies of COMMAND with the variables SLURM gives each task and that
JAX's SLURM detection reads (``jax/_src/clusters/slurm_cluster.py``):
``SLURM_JOB_ID`` (the coordinator port follows from it; taken from the
environment, default 1), ``SLURM_STEP_NODELIST`` (``localhost``: every "node" is
this machine), ``SLURM_NTASKS``, ``SLURM_PROCID``, ``SLURM_LOCALID`` and
``SLURM_STEP_NUM_NODES``. Like ``srun``, it returns when every task has ended,
with the first failing task's exit status, and stops the remaining tasks once
one fails (they would wait for it) or when it is itself terminated.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--ntasks-per-node", type=int, default=1)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if not args.command:
        parser.error("no command to run")
    num_tasks = args.nodes * args.ntasks_per_node
    tasks: list[subprocess.Popen] = []

    def stop_tasks(*_: object) -> None:
        for task in tasks:
            if task.poll() is None:
                task.kill()
        for task in tasks:
            task.wait()

    def on_terminate(*_: object) -> None:
        stop_tasks()
        sys.exit(143)

    signal.signal(signal.SIGTERM, on_terminate)
    for rank in range(num_tasks):
        env = dict(os.environ)
        env.update(
            SLURM_JOB_ID=os.environ.get("SLURM_JOB_ID", "1"),
            SLURM_STEP_NODELIST="localhost",
            SLURM_STEP_NUM_NODES=str(args.nodes),
            SLURM_NTASKS=str(num_tasks),
            SLURM_PROCID=str(rank),
            SLURM_LOCALID=str(rank % args.ntasks_per_node),
        )
        tasks.append(subprocess.Popen(args.command, env=env))
    try:
        while True:
            codes = [task.poll() for task in tasks]
            failed = [code for code in codes if code not in (None, 0)]
            if failed:
                stop_tasks()
                return failed[0]
            if all(code == 0 for code in codes):
                return 0
            time.sleep(0.2)
    finally:
        stop_tasks()


if __name__ == "__main__":
    sys.exit(main())
