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


@pytest.mark.parametrize(
    ("address", "bind"),
    [
        ("127.0.0.1:12355", "127.0.0.1:12355"),
        ("127.0.0.2:80", "127.0.0.2:80"),
        ("localhost:12355", "localhost:12355"),
        ("[::1]:12355", "[::1]:12355"),
        ("10.1.2.3:12355", None),  # reached from other machines: JAX's default ([::]:port)
        ("node001:12355", None),
    ],
)
def test_coordinator_binds_to_a_loopback_address_as_given(address: str, bind: str | None) -> None:
    from experiments.common.sharding import coordinator_bind_address

    assert coordinator_bind_address(address) == bind


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.1:port", ":"])
def test_coordinator_address_needs_a_port(address: str) -> None:
    from experiments.common.sharding import coordinator_bind_address

    with pytest.raises(ValueError, match="HOST:PORT"):
        coordinator_bind_address(address)


def test_distributed_outside_a_cluster_names_the_launch_flags() -> None:
    # A fresh interpreter: jax.distributed.initialize must run before JAX's backend starts,
    # which other tests in this process have already done.
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR", "KUBERNETES_"))
    }  # a plain machine: none of the variables of the clusters JAX detects
    script = (
        "import jax\n"
        "from experiments.common.sharding import initialize_distributed\n"
        "try:\n"
        "    initialize_distributed()\n"
        "except ValueError as error:\n"
        "    print('ValueError:', error)\n"
        "print('initialized:', jax.distributed.is_initialized())\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=HERE.parent, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "--config.coordinator_address=HOST:PORT" in completed.stdout, completed.stdout
    assert "initialized: False" in completed.stdout


def test_launch_fields_without_distributed_are_refused() -> None:
    from experiments.common.train import setup_runtime
    from experiments.depth.configs import test as test_config

    config = test_config.get_config()
    config.num_processes = 2
    config.process_id = 1
    with pytest.raises(ValueError, match=r"without --config\.distributed=True"):
        setup_runtime(config)


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
    # GradDrop's weights are 1; its direction (per-coordinate draws from one key, the
    # same on 1 or 8 shards) moved the trunk identically.
    drop = report["graddrop_representation"]
    assert drop["dtype"] == "float64" and drop["weights"] == 0.0, report
    assert drop["params"] <= IDENTITY_RTOL64, report
