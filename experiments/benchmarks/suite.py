"""Every benchmark at a small size, in one command, collected into one Markdown table.

    python -m experiments.benchmarks.suite                 # small sizes (minutes on a CPU)
    python -m experiments.benchmarks.suite --tiny          # smoke sizes, no meaningful timing
    python -m experiments.benchmarks.suite --output bench.md
    # also against the paper's PyTorch code (needs torch, which is no dependency):
    PYTHONPATH=DIR_WITH_TORCH python -m experiments.benchmarks.suite --reference_dir=CLONE

Runs each benchmark module as its own process (``python -m
experiments.benchmarks.<name>`` with the sizes below) so that one's JAX state
does not affect another's timing, and turns every row of every table it
prints into one row of a single table: benchmark, the table's heading, the
row's label, and its cells as ``column: value``. The device (``jax.devices()``)
is named in the first line. ``torch_reference`` (our static depth step against
the paper's released PyTorch code) runs only with ``--reference_dir`` and where
``import torch`` works; otherwise a line under the table says it was skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: name → (small-size arguments, tiny smoke-test arguments).
RUNS: dict[str, tuple[list[str], list[str]]] = {
    "gradients": (
        ["--ks", "2", "8", "32", "--rounds", "3", "--steps", "5"],
        ["--ks", "2", "--rounds", "1", "--steps", "1", "--schemes", "mgda", "mgda_ub_copies"],
    ),
    "aggregators": (
        ["--losses=32", "--steps=20", "--repeats=3", "--dim=2000"],
        ["--losses=4", "--steps=2", "--repeats=1", "--dim=16"],
    ),
    "weighting_overhead": (
        ["--rounds=3", "--steps=5", "--sizes", "32", "1000"],
        [
            "--rounds=1",
            "--steps=1",
            "--batch=2",
            "--size=16",
            "--width=4",
            "--update-iters=2",
            "--sizes",
            "4",
            "--schemes",
            "cov",
        ],
    ),
    "depth_throughput": (
        ["--size=cpu", "--steps=2", "--rounds=2"],
        ["--size=test", "--schemes=hand_tuned,cov", "--steps=1", "--rounds=1"],
    ),
}
#: Run only with a clone of the reference code (``--reference_dir``) and torch importable.
TORCH_RUNS: dict[str, tuple[list[str], list[str]]] = {
    "torch_reference": (
        ["--sizes=128x256", "--rounds=3", "--steps=1"],
        ["--sizes=64x128", "--rounds=1", "--steps=1", "--xla_variants="],
    ),
}
TORCH_SKIPPED = (
    "torch_reference skipped: it needs `--reference_dir` (a clone of "
    "https://github.com/rickgroen/cov-weighting) and torch on PYTHONPATH."
)


def run(name: str, arguments: list[str]) -> str:
    """The benchmark's standard output (raises with its error output if it fails)."""
    result = subprocess.run(
        [sys.executable, "-m", f"experiments.benchmarks.{name}", *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"benchmark {name} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def rows_of(name: str, output: str) -> list[str]:
    """One Markdown row per table row of ``output``: benchmark | table | row | cells."""
    rows = []
    heading, header = name, None
    for line in output.splitlines():
        if not line.startswith("|"):
            if line.strip():
                heading = line.strip()
            header = None
            continue
        if set(line.replace("|", "").strip()) <= {"-", ":", " "}:
            continue  # the rule under a header
        if header is None:
            header = cells(line)
            continue
        values = cells(line)
        described = "; ".join(
            f"{column}: {value}" for column, value in zip(header[1:], values[1:], strict=False)
        )
        title = heading.replace("|", "/")
        rows.append(f"| {name} | {title} | {values[0]} | {described} |")
    return rows


def suite(
    tiny: bool = False, names: list[str] | None = None, reference_dir: Path | None = None
) -> str:
    """The Markdown table of every benchmark in ``names`` (all by default).

    The torch-needing ones (:data:`TORCH_RUNS`) run only given ``reference_dir``
    and with ``torch`` importable; else a line under the table says so.
    """
    import jax  # here, so that ``--help`` does not start JAX

    device = jax.devices()[0]
    lines = [
        f"Benchmarks on {device.platform} ({device.device_kind}), "
        f"{'tiny smoke sizes' if tiny else 'small sizes'}.",
        "",
        "| benchmark | table | row | cells |",
        "|---|---|---|---|",
    ]
    torch_ready = reference_dir is not None and importlib.util.find_spec("torch") is not None
    notes = []
    for name in names or [*RUNS, *TORCH_RUNS]:
        if name in TORCH_RUNS and not torch_ready:
            notes.append(TORCH_SKIPPED)
            continue
        small, smoke = {**RUNS, **TORCH_RUNS}[name]
        arguments = smoke if tiny else small
        if name in TORCH_RUNS:
            arguments = [*arguments, f"--reference_dir={reference_dir}"]
        lines += rows_of(name, run(name, arguments))
    return "\n".join(lines + [f"\n{note}" for note in notes]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="smoke-test sizes")
    parser.add_argument(
        "--only", nargs="+", choices=[*RUNS, *TORCH_RUNS], help="a subset of benchmarks"
    )
    parser.add_argument(
        "--reference_dir",
        type=Path,
        help="a clone of https://github.com/rickgroen/cov-weighting: also time torch_reference "
        "(needs torch on PYTHONPATH)",
    )
    parser.add_argument("--output", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    table = suite(args.tiny, args.only, args.reference_dir)
    print(table, end="")
    if args.output is not None:
        args.output.write_text(table)


if __name__ == "__main__":
    main()
