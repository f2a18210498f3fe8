"""The README's Python code blocks run as written."""

from __future__ import annotations

import pathlib

import pytest
from markdown_blocks import python_blocks

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = python_blocks(README)


def test_readme_has_code_blocks() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index: int, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {})
    if index == 0:
        printed = capsys.readouterr().out
        assert "mse" in printed and "l1" in printed
