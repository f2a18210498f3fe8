"""Data-parallel CoV-Weighting: 8 CPU devices give the same weights as one."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).parent


def run_with_devices(script: str, devices: int = 8) -> dict:
    env = dict(os.environ)
    # Keep the caller's XLA flags (e.g. --xla_cpu_max_isa of `make test-numerics`).
    flags = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    env["XLA_FLAGS"] = flags.strip()
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, str(HERE / script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_sharded_step_matches_single_device() -> None:
    report = run_with_devices("sharded_weighting_check.py")
    assert report["devices"] == 8
    assert report["weights"] < 1e-6
    assert report["state"] < 1e-5
    assert report["params"] < 1e-5
    # The weights moved away from uniform, so the comparison is not vacuous.
    assert max(report["last_weights"]) - min(report["last_weights"]) > 1e-3
