"""Every guide of the docs site runs as written: its Python blocks, in order, in one namespace.

A guide builds up its example block by block (a later block uses what an
earlier one defined), so the blocks of one guide share a namespace, as a
reader pasting them into one session would.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from markdown_blocks import python_blocks

GUIDES = sorted((Path(__file__).resolve().parents[1] / "docs" / "guides").glob("*.md"))
EXPECTED = {
    "nnx",
    "linen",
    "optax",
    "non_finite",
    "gradient_schemes",
    "vmap_sweeps",
    "orbax",
    "multi_host",
}


def test_every_guide_is_there_and_has_code() -> None:
    assert {guide.stem for guide in GUIDES} >= EXPECTED
    for guide in GUIDES:
        assert python_blocks(guide), f"{guide.name} has no Python block"


@pytest.mark.parametrize("guide", GUIDES, ids=lambda guide: guide.stem)
def test_guide_runs(guide: Path, capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, object] = {"__name__": f"guide_{guide.stem}"}
    for index, block in enumerate(python_blocks(guide)):
        exec(compile(block, f"{guide.name} block {index}", "exec"), namespace)
    assert capsys.readouterr().out, f"{guide.name} printed nothing"
