"""One process of tests/test_multihost.py's check of ``prepare_once`` (two on 127.0.0.1).

    python tests/prepare_worker.py PORT PROCESS_ID MODE DATA_DIR

joins a two-process JAX run and prepares a stand-in dataset in ``DATA_DIR``
through :func:`experiments.data.preparation.prepare_once`. Process 0's
preparation takes PREPARE_S seconds, then, by ``MODE``: ``ok`` writes the
data, ``raise`` raises ``OSError("disk full")``, ``die`` ends the process at
once (as a crash or an out-of-memory kill would), ``slow`` writes the data
while process 1 waits only ``PREPARE_S / 4``. Every process that calls the
preparation leaves a ``prepared_by_<id>`` file; a process that returns prints
a JSON line: when it returned and whether it found the data there.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from experiments.common.sharding import initialize_distributed
from experiments.data.preparation import prepare_once

PREPARE_S = 3.0


class Builder:
    """The part of a TFDS builder ``prepare_once`` uses."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = str(data_dir)
        self.done = data_dir / "done"

    def is_prepared(self) -> bool:
        return self.done.exists()


def main() -> None:
    port, process_id, mode, data_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    data_dir = Path(data_dir)
    initialize_distributed(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)

    def prepare(builder: Builder) -> None:
        (data_dir / f"prepared_by_{process_id}").touch()
        time.sleep(PREPARE_S)
        if mode == "raise":
            raise OSError("disk full")
        if mode == "die":
            os._exit(3)
        builder.done.write_text(str(time.time()))

    timeout_s = PREPARE_S / 4 if mode == "slow" else 60.0
    builder = prepare_once(lambda: Builder(data_dir), prepare, timeout_s=timeout_s)
    print(json.dumps({"returned_at": time.time(), "prepared": builder.is_prepared()}), flush=True)


if __name__ == "__main__":
    main()
