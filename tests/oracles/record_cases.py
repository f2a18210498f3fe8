"""Writes the recorded reference cases in ``tests/oracles/recorded/`` from the float64 oracles.

Run from the repository root: ``python tests/oracles/record_cases.py``. The
tests read the files (inputs and expected outputs) and also re-run the oracle
on the recorded inputs, so a recording that no longer matches its oracle fails.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from oracles import aggregators, peers

RECORDED = pathlib.Path(__file__).resolve().parent / "recorded"


def nash_mtl_jacobians() -> dict[str, np.ndarray]:
    """Gradients on very different scales (‖G‖_F from ~1e-2 to ~1e4), one case with conflicts."""
    rng = np.random.default_rng(2024)
    cases = {}
    for name, k, p, scale in (("k3_small", 3, 7, 0.05), ("k5_large", 5, 9, 20.0)):
        cases[name] = rng.normal(size=(k, p)) * rng.uniform(0.3, 3.0, size=(k, 1)) * scale
    conflicting = rng.normal(size=(6, 10)) * rng.uniform(0.5, 2.0, size=(6, 1))
    conflicting[1] = -0.5 * conflicting[0] + 0.8 * rng.normal(size=10)
    cases["k6_conflicting"] = 3.0 * conflicting
    return cases


def peer_gramians() -> dict[str, np.ndarray]:
    """Gramians on which the peers' solvers stop early (and a few on which they do not).

    K = 8 to 32, shared directions, alternating conflicts, more losses than
    dimensions (0 in or near the hull): MGDA-UB and all-parameter MGDA at scale.
    """
    rng = np.random.default_rng(7)
    cases = {}
    for name, k, p, kind in (
        ("k8_conflicting", 8, 20, "conflicting"),
        ("k16_conflicting", 16, 40, "conflicting"),
        ("k32_common", 32, 64, "common"),
        ("k32_random", 32, 64, "random"),
        ("k32_conflicting", 32, 64, "conflicting"),
        ("k32_low_rank", 32, 16, "random"),
        ("k8_low_rank", 8, 4, "random"),
    ):
        J = rng.normal(size=(k, p)) * rng.uniform(0.3, 3.0, size=(k, 1))
        if kind == "common":
            J += 2.0 * rng.normal(size=(1, p))
        if kind == "conflicting":
            J[1::2] = -0.7 * J[0::2] + 0.4 * rng.normal(size=J[1::2].shape)
        cases[name] = J @ J.T
    return cases


def record_peers() -> None:
    """What LibMTL's MGDA and CAGrad solvers return on ``peer_gramians`` (c = 0.4)."""
    records = []
    for name, gramian in peer_gramians().items():
        mgda = peers.mgda_min_norm(gramian)
        cagrad = peers.cagrad_slsqp(gramian, CAGRAD_C)
        records.append(
            {
                "name": name,
                "gramian": gramian.tolist(),
                "mgda_weights": mgda.tolist(),
                "cagrad_c": CAGRAD_C,
                "cagrad_dual_weights": cagrad.tolist(),
            }
        )
    path = RECORDED / "peer_solvers.json"
    path.write_text(json.dumps(records) + "\n")
    print(f"wrote {path}")


CAGRAD_C = 0.4


def main() -> None:
    RECORDED.mkdir(exist_ok=True)
    record_peers()
    records = []
    for name, J in nash_mtl_jacobians().items():
        alpha = aggregators.nash_mtl_authors(J)
        records.append({"name": name, "jacobian": J.tolist(), "alpha": alpha.tolist()})
    path = RECORDED / "nash_mtl_authors.json"
    path.write_text(json.dumps(records, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
