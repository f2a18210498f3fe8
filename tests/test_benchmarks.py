"""Smoke tests: the benchmark scripts run end to end and print their tables (no timings)."""

from __future__ import annotations

import sys

import pytest

from experiments.benchmarks import gradients


def test_gradients_benchmark_prints_every_table(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["gradients", "--ks", "2", "--rounds", "1", "--steps", "1"]
    argv += ["--schemes", "mgda", "mgda_ub_copies"]
    monkeypatch.setattr(sys, "argv", argv)
    gradients.main()
    out = capsys.readouterr().out
    for heading in (
        "1. K×K Gramian",
        "2. Full train step",
        "3. min_norm_solver",
        "4. MGDA-UB's floor",
    ):
        assert heading in out
    assert "| MGDA (all shared) | " in out
    assert "| MGDA-UB (per-task copies of the representation) | " in out
    floor_row = out.strip().splitlines()[-1].split("|")[1:-1]
    assert len(floor_row) == 6
    assert "(2 × 16384)" in floor_row[2]  # K rows of batch 32 × 512 representation entries
