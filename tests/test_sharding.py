"""Data parallelism: 8 CPU devices give the same weights and parameters as one.

The checks run in subprocesses (the device count is fixed at JAX's start-up) and in
float64 (sharding is an identity; in float32 they would compare the CPU's summation
orders); the weights are stored in float32 whatever the maths.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
from precision import EPS32, IDENTITY_RTOL64

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
    assert report["devices"] == 8 and report["dtype"] == "float64"
    # Equal float64 weights round to the same float32 (one ulp apart at most, weights ≤ 1).
    assert report["weights"] <= EPS32, report
    # State and parameters relative to their largest entry (compensation terms included).
    assert report["state"] <= IDENTITY_RTOL64, report
    assert report["params"] <= IDENTITY_RTOL64, report
    # The weights moved away from uniform, so the comparison is not vacuous.
    assert max(report["last_weights"]) - min(report["last_weights"]) > 1e-3


@pytest.mark.slow
def test_sharded_gradient_step_matches_single_device() -> None:
    report = run_with_devices("sharded_gradients_check.py")
    assert report["devices"] == 8
    for scheme in ("mgda", "mgda_materialised", "gradnorm", "mgda_ub_grouped"):
        assert report[scheme]["dtype"] == "float64", report
        # The 8 shards sum the Gramian in another order, ~1e-16 relative in float64; the
        # solve amplifies it by cond(G) and the weights (≤ 1) are stored in float32.
        assert report[scheme]["weights"] <= EPS32, report
        assert report[scheme]["params"] <= IDENTITY_RTOL64, report
        assert report[scheme]["weight_spread"] > 1e-3, report  # not trivially uniform
