"""Smoke tests: the benchmark scripts run end to end and print their tables (no timings).

Every benchmark the README or the docs document runs here with tiny sizes, through its own
command-line parsing; ``test_every_documented_benchmark_has_a_smoke_test`` keeps the
list complete.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import covjax
from experiments.benchmarks import gradients, libmtl_reference, suite, torch_reference

REPO = Path(__file__).resolve().parents[1]
#: The benchmarks run by a subprocess below, with tiny sizes.
TINY_RUNS = {
    "weighting_overhead": [
        "--clock=cpu",
        "--rounds=1",
        "--steps=1",
        "--batch=2",
        "--size=16",
        "--width=4",
        "--update-iters=2",
        "--sizes",
        "4",
        "8",
        "--schemes",
        "cov",
        "famo",
    ],
    # One scheme fed the Gramian and one fed the Jacobian: the script's two paths (every
    # aggregator's jitted update is tested in its own test file).
    "aggregators": [
        "--losses=4",
        "--steps=2",
        "--repeats=1",
        "--dim=16",
        "--schemes",
        "upgrad",
        "graddrop",
    ],
    "depth_throughput": [
        "--size=test",
        "--schemes=hand_tuned,cov",
        "--steps=1",
        "--rounds=1",
    ],
}


def python(arguments: list[str], timeout: int) -> subprocess.CompletedProcess[str]:
    """This interpreter run with ``arguments`` in the repository root, output captured
    (compiled as the whole session is: tests/fast_compile.py)."""
    return subprocess.run(
        [sys.executable, *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_every_documented_benchmark_has_a_smoke_test() -> None:
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    documented = set(re.findall(r"python -m experiments\.benchmarks\.(\w+)", text))
    assert documented, "no benchmark documented"
    optional = {"libmtl_reference", "torch_reference"}  # need PyTorch: skip-path tests below
    assert documented <= {"gradients", "suite", *optional, *TINY_RUNS}, documented


def test_torch_reference_without_torch_says_how_to_run() -> None:
    """PyTorch is no dependency: without it the benchmark explains how to run it, status 0."""
    hide_torch = (
        "import runpy, sys; sys.modules['torch'] = None; "  # `import torch` raises ImportError
        "sys.argv = ['torch_reference', '--reference_dir=/nonexistent']; "
        "runpy.run_module('experiments.benchmarks.torch_reference', run_name='__main__')"
    )
    result = python(["-c", hide_torch], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == torch_reference.HOW_TO_RUN + "\n"
    assert "PYTHONPATH=DIR python -m experiments.benchmarks.torch_reference" in result.stdout


def test_suite_skips_the_torch_benchmark_without_a_reference_clone() -> None:
    table = suite.suite(tiny=True, names=["torch_reference"])
    assert suite.TORCH_SKIPPED in table
    assert not [line for line in table.splitlines()[4:] if line.startswith("| ")]


def test_torch_reference_sizes() -> None:
    assert torch_reference.parse_size("128x256") == (128, 256)
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        torch_reference.parse_size("128-256")
    with pytest.raises(ValueError, match="multiples of 64"):
        torch_reference.parse_size("100x200")


@pytest.mark.parametrize("name", sorted(TINY_RUNS))
def test_benchmark_runs_and_prints_its_table(name: str) -> None:
    result = python(["-m", f"experiments.benchmarks.{name}", *TINY_RUNS[name]], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    table_rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(table_rows) >= 3, result.stdout  # a header, its rule and at least one row


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
    assert len(floor_row) == 8
    assert "(2 × 16384)" in floor_row[2]  # K rows of batch 32 × 512 representation entries


def test_libmtl_reference_without_libmtl_says_how_to_run_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """PyTorch and LibMTL are optional: without a LibMTL checkout the benchmark exits 0."""
    assert libmtl_reference.main(["--libmtl", str(tmp_path)]) == 0  # an empty folder
    out = capsys.readouterr().out
    assert out.startswith("Skipped: ")
    assert "python -m experiments.benchmarks.libmtl_reference --libmtl" in out


def test_libmtl_reference_names_covjax_configurations_of_the_gradients_benchmark() -> None:
    for reference in libmtl_reference.REFERENCES.values():
        assert reference.gradients_only or reference.ours in gradients.STEP_CONFIGURATIONS


def test_per_loss_gradients_floor_forms_every_row() -> None:
    k, size = 3, 8
    x, labels = gradients.make_batch(k, size)
    total = gradients.per_loss_gradients_runner(k, x, labels)()
    params = gradients.init_params(k)
    losses = gradients.loss_fn(params, x, labels)
    rows = [
        jax.grad(lambda p, i=i: gradients.loss_fn(p, x, labels)[i])(params)["trunk"]
        for i in range(k)
    ]
    terms = [jnp.ravel(leaf) for row in rows for leaf in jax.tree.leaves(row)]
    expected = jnp.sum(losses) + sum(jnp.sum(term) for term in terms)
    # Two float32 summation orders over ~0.66 M terms per row: bounded by a few
    # eps32 times the sum of the terms' magnitudes (the sum itself may cancel).
    magnitude = jnp.sum(losses) + sum(jnp.sum(jnp.abs(term)) for term in terms)
    assert abs(float(total - expected)) <= 1e-5 * float(magnitude)


def test_graddrop_on_the_representation_step_runs() -> None:
    x, labels = gradients.make_batch(2, 8)
    run = gradients.step_runner("graddrop_representation", 2, x, labels)
    assert np.isfinite([float(run()) for _ in range(2)]).all()


def test_two_batch_step_weighs_with_the_cross_gramian_of_its_two_batches() -> None:
    """SDMGrad's row: the step's batch is two batches, C = J(first) J(second)ᵀ weighs both."""
    k, size = 3, 8
    batches = [gradients.make_batch(k, size, seed=seed) for seed in (1, 2)]
    params = gradients.init_params(k)
    jacobians = [
        covjax.per_loss_jacobian(gradients.loss_fn, params, *batch, wrt="trunk")[1]
        for batch in batches
    ]
    x = jnp.concatenate([batch[0] for batch in batches])
    labels = jnp.concatenate([batch[1] for batch in batches])
    losses = gradients.loss_fn(params, x, labels)
    scheme = covjax.sdmgrad()
    weights, _ = scheme.update(
        losses, scheme.init(losses), gramian=covjax.cross_gramian(*jacobians)
    )
    total = gradients.step_runner("sdmgrad_two_batches", k, *batches[0])()
    # float32 sums of a few hundred terms, factorized vs materialised: ~1e-6 relative.
    np.testing.assert_allclose(total, jnp.sum(weights * losses), rtol=1e-5)


def test_suite_collects_the_benchmarks_into_one_table(tmp_path: Path) -> None:
    """One benchmark through the suite (each runs alone above; every table is assembled alike)."""
    output = tmp_path / "suite.md"
    only = ["weighting_overhead"]
    command = ["-m", "experiments.benchmarks.suite", "--tiny", "--only", *only]
    result = python([*command, "--output", str(output)], timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = output.read_text().splitlines()
    assert lines[2] == "| benchmark | table | row | cells |"
    rows = [line for line in lines[4:] if line.startswith("| ")]
    benchmarks = {row.split("|")[1].strip() for row in rows}
    assert benchmarks == set(only)
    assert all(len(row.split("|")) == 6 for row in rows)  # one table: four cells per row
