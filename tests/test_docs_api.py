"""The API reference of the docs site lists every public symbol, with each scheme's equations.

The reference is built here alone (``COVJAX_DOCS_API_ONLY``: no guides, no
notebooks) with the site's own configuration, warnings as errors, so a
docstring that Sphinx cannot render fails here as it fails ``make docs``.
"""

from __future__ import annotations

import html
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sphinx.util.inventory import InventoryFile

import covjax

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docs_api")
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-E", "-W", "--keep-going", "-q"]
    result = subprocess.run(
        [*command, str(REPO / "docs"), str(out)],
        env={**os.environ, "COVJAX_DOCS_API_ONLY": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return out


def page_text(html_text: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", html_text))


def equation_lines(docstring: str) -> list[str]:
    """The first line of each literal (``::``) block of a docstring: where the equations are."""
    lines = inspect.cleandoc(docstring).splitlines()
    return [
        next(line.strip() for line in lines[number + 1 :] if line.strip())
        for number, line in enumerate(lines)
        if line.rstrip().endswith("::")
    ]


def links(docstring: str) -> list[str]:
    return [url.rstrip(".,;:)") for url in re.findall(r"https?://\S+", docstring)]


def test_every_public_symbol_is_in_the_reference(built: Path) -> None:
    with (built / "objects.inv").open("rb") as stream:
        inventory = InventoryFile.load(stream, "", lambda base, uri: uri)
    documented = {name for entries in inventory.values() for name in entries}
    missing = [f"covjax.{name}" for name in covjax.__all__ if f"covjax.{name}" not in documented]
    assert not missing, f"not in the API reference: {missing}"


def test_each_scheme_page_renders_its_equations_and_references(built: Path) -> None:
    schemes = [
        getattr(covjax, name)
        for name in covjax.__all__
        if inspect.isfunction(getattr(covjax, name))
        and getattr(covjax, name).__annotations__.get("return") == "Weighting"
    ]
    assert len(schemes) >= 20
    equations = references = 0
    for scheme in schemes:
        module = sys.modules[scheme.__module__]
        page = built / "api" / f"{module.__name__.rsplit('.', 1)[-1]}.html"
        page_html = page.read_text()
        preformatted = page_text("".join(re.findall(r"<pre>.*?</pre>", page_html, flags=re.S)))
        for docstring in (module.__doc__ or "", scheme.__doc__ or ""):
            for line in equation_lines(docstring):
                assert line in preformatted, (page.name, line)
                equations += 1
            for url in links(docstring):
                assert f'href="{html.escape(url)}"' in page_html, (page.name, url)
            if "References:" in docstring:
                assert "References" in page_text(page_html), (page.name, scheme.__name__)
                references += 1
    # Most schemes state their update as equations and every scheme with a paper cites it.
    assert equations >= 10 and references >= 20, (equations, references)
